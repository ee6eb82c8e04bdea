"""Gateway and picker benchmarks: picker cost per pick, and the cost of the gateway hop next to the Rust routers.

Run: ``make bench`` (or ``.venv/bin/python bench/gateway_bench.py [--out FILE] [--rounds 2] [--baseline DIR]
[--profile]``; ``--rounds 0`` measures the picker alone). The hop needs ``wrk`` (Debian/Ubuntu: ``apt-get
install wrk``; without it only the picker is measured); the Rust routers are measured when the ``routers``
extra is installed (``pip install -e '.[routers]'``), else skipped with a note. Results print as JSON
and as Markdown tables.

* picker: ``kit bench-picker`` in process, 4 to 256 endpoints, 1k to 128k-character prompts, timed in
  wall-clock and in CPU time (a busy machine stretches the former whenever it deschedules the process).
* the hop: four zero-latency upstreams (``bench/upstream.py``, one process) answer at once, so the
  router in front of them is what is measured. Per router, started fresh in each round:

  - added latency: ``wrk`` on one connection (one request at a time, non-streaming, ``max_tokens`` 1),
    straight to an upstream and through the router; added = router p50 − direct p50 of the same round;
  - first token added: streaming requests one at a time from a socket client that notes when the
    first SSE event arrives (the upstream writes it with its headers), through the router and direct;
  - rate: ``wrk`` with 64 connections (closed loop); requests/s, errors, and CPU seconds per request
    of the router (all its threads and children), the upstream and ``wrk`` itself (the load
    generator's share shows it was not the bottleneck).

* ``--baseline DIR``: the kit gateway of another checkout too (e.g. before a change), in every round.
* ``--profile``: py-spy samples of the kit gateway (default profile) under 64 connections, with short
  and 32k-character prompts: the share of its CPU, and µs per request, in each part of the code.

Everything shares the machine's cores: compare routers within a round, as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httptools
import psutil

from kit import paths
from kit.picker.bench import bench_picker
from kit.targets.processes import Proc, end_child, free_port, healthy, spawn, stop

LOG_DIR = Path(tempfile.mkdtemp(prefix="kit-gw-bench-"))
MODEL = "Qwen/Qwen3-0.6B"
UPSTREAMS = 4
PROMPT = "How long does the gateway take to pass this request on? " * 4  # 228 characters
KIT = {"kit default": "default-plugins", "kit round-robin": "round-robin"}
BASELINE = " (baseline)"
RUST = {"vllm-router round_robin": ("vllm-router", "round_robin"),
        "vllm-router cache_aware": ("vllm-router", "cache_aware"),
        "sglang-router round_robin": ("sglang-router", "round_robin"),
        "sglang-router cache_aware": ("sglang-router", "cache_aware")}


# ------------------------------------------------------------------------------------------- picker
def picker_table(requests: int = 2000) -> list[dict]:
    """Per endpoint count and prompt length: wall-clock and CPU-time percentiles of one pick (a shared
    machine stretches wall-clock times whenever it deschedules the process mid-pick)."""
    rows = []
    for n in (4, 16, 64, 256):
        for chars in (1000, 32000, 128000):
            wall = bench_picker(n, chars, requests)
            cpu = bench_picker(n, chars, requests, clock=time.thread_time)
            rows.append({**wall, "cpu_p50_us": cpu["p50_us"], "cpu_p99_us": cpu["p99_us"]})
            print(f"picker: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------- processes
@dataclass
class Router:
    name: str
    url: str
    pid: int
    handle: Proc | subprocess.Popen

    def cpu(self) -> float:
        """CPU seconds used so far by the router, its threads and its children."""
        try:
            p = psutil.Process(self.pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        if isinstance(self.handle, Proc):
            stop(self.handle)
            return
        end_child(self.handle, 10)


def _wait_healthy(proc: subprocess.Popen, url: str, what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while not healthy(url, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{what} did not start: see {log}")
        time.sleep(0.05)


def start_upstreams() -> tuple[subprocess.Popen, list[str]]:
    ports = [free_port() for _ in range(UPSTREAMS)]
    log = LOG_DIR / "upstream.log"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("upstream.py")), "--ports",
                             *map(str, ports)], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    for u in urls:
        _wait_healthy(proc, u, "the upstream", log)
    return proc, urls


def start_router(name: str, workers: list[str], baseline: str | None = None) -> Router:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    kit_name = name.removesuffix(BASELINE)
    if kit_name in KIT:
        env, cwd = os.environ.copy(), os.getcwd()
        if name.endswith(BASELINE):  # the kit gateway of another checkout (e.g. before a change): `python -m
            os.environ["PYTHONPATH"] = str(baseline)  # kit` imports kit from the working directory first
            os.chdir(str(baseline))
        try:
            p = spawn(["gateway", "--port", str(port), "--endpoints", ",".join(workers), "--model", MODEL,
                       "--config", paths.scheduler_profile(KIT[kit_name])], url, LOG_DIR / f"gw-{port}.log",
                      role="gateway")
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
        return Router(name, url, p.pid, p)
    exe, policy = RUST[name]
    binary = shutil.which(exe) or str(Path(sys.executable).with_name(exe))
    cmd = [binary, *(["launch"] if exe == "sglang-router" else []), "--host", "127.0.0.1", "--port", str(port),
           "--worker-urls", *workers, "--policy", policy, "--prometheus-host", "127.0.0.1",
           "--prometheus-port", str(free_port()), "--log-level", "warning" if exe == "vllm-router" else "warn"]
    log = LOG_DIR / f"{exe}-{port}.log"
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _wait_healthy(proc, url, name, log)
    return Router(name, url, proc.pid, proc)


def rust_available(names: list[str]) -> list[str]:
    out = []
    for name in names:
        exe = RUST[name][0]
        if shutil.which(exe) or Path(sys.executable).with_name(exe).exists():
            out.append(name)
        else:
            print(f"skipping {name}: {exe} is not installed (pip install -e '.[routers]')", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------------- wrk
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests":%%d,"duration_us":%%d,"errors":%%d,"non2xx":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99)))
end
"""


def wrk(url: str, connections: int, seconds: float, body: dict) -> dict:
    """Run wrk (one thread) against ``url``; its figures plus its own CPU seconds."""
    script = LOG_DIR / "post.lua"
    script.write_text(WRK_SCRIPT % json.dumps(body))
    proc = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    m = re.search(r"^WRK (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    res = json.loads(m.group(1))
    res["cpu_s"] = usage.ru_utime + usage.ru_stime
    return res


# ------------------------------------------------------------------------------------- first token
class _Reply:
    """httptools callbacks for one answer: when its first body byte and its end arrived."""

    def __init__(self) -> None:
        self.status = 0
        self.first: float | None = None
        self.done = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, _body: bytes) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def on_message_complete(self) -> None:
        self.done = True


def first_token(url: str, n: int) -> dict:
    """Streaming requests one at a time on one kept-alive connection: time to the first byte of the body
    (the first SSE event) and to the end of the answer (percentiles, µs)."""
    host, port = url.split("://", 1)[1].split(":")
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "stream": True}).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    firsts, totals = [], []
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(n + 50):  # the first 50 warm up
            reply = _Reply()
            reply.parser = parser = httptools.HttpResponseParser(reply)
            t0 = time.perf_counter()
            sock.sendall(request)
            while not reply.done:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"{url} closed the connection")
                parser.feed_data(chunk)
            if reply.status != 200 or reply.first is None:
                raise RuntimeError(f"{url} answered {reply.status} without a body")
            if i >= 50:
                firsts.append(reply.first - t0)
                totals.append(time.perf_counter() - t0)
    return {"first_p50_us": _us(statistics.median(firsts)), "first_p90_us": _us(_q(firsts, 0.9)),
            "total_p50_us": _us(statistics.median(totals))}


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _us(s: float) -> float:
    return round(1e6 * s, 1)


# ------------------------------------------------------------------------------------------ rounds
def measure(url: str, router: Router | None, upstream: subprocess.Popen, args: argparse.Namespace) -> dict:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1}
    path = url + "/v1/completions"
    wrk(path, 1, 1, body)  # warm connections and caches
    one = wrk(path, 1, args.seconds, body)
    ttft = first_token(url, args.streams)
    up = psutil.Process(upstream.pid)
    up0 = sum(up.cpu_times()[:2])
    cpu0, t0 = router.cpu() if router else 0.0, time.perf_counter()
    many = wrk(path, 64, args.seconds, body)
    wall = time.perf_counter() - t0
    router_cpu = (router.cpu() - cpu0) if router else 0.0
    up_cpu = sum(up.cpu_times()[:2]) - up0
    n = many["requests"]
    return {"p50_us": one["p50_us"], "p90_us": one["p90_us"], "p99_us": one["p99_us"], **ttft,
            "rate_64": round(n / (many["duration_us"] / 1e6), 1), "errors_64": many["errors"] + many["non2xx"],
            "router_cpu_us_per_req": round(1e6 * router_cpu / n, 1) if n else None,
            "router_cpu_share": round(router_cpu / wall, 3),
            "upstream_cpu_share": round(up_cpu / wall, 3), "wrk_cpu_share": round(many["cpu_s"] / wall, 3)}


def hop(args: argparse.Namespace) -> list[dict]:
    names = [*KIT, *rust_available(list(RUST))] if not args.routers else args.routers
    if args.baseline:
        names = [*(f"{n}{BASELINE}" for n in names if n in KIT), *names]
    rows = []
    upstream, workers = start_upstreams()
    try:
        for rnd in range(1, args.rounds + 1):
            direct = measure(workers[0], None, upstream, args)
            rows.append({"round": rnd, "router": "direct", **direct})
            print(f"hop: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
            for name in names:
                r = start_router(name, workers, args.baseline)
                try:
                    time.sleep(0.5)  # first metrics scrapes, worker health checks
                    m = measure(r.url, r, upstream, args)
                finally:
                    r.stop()
                m["added_p50_us"] = round(m["p50_us"] - direct["p50_us"], 1)
                m["added_first_p50_us"] = round(m["first_p50_us"] - direct["first_p50_us"], 1)
                rows.append({"round": rnd, "router": name, **m})
                print(f"hop: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    finally:
        upstream.terminate()
        upstream.wait()
    return rows


# ----------------------------------------------------------------------------------------- profile
# Where the gateway's CPU goes: py-spy samples, each counted for the part of the code it was in (its
# innermost frame; time in C and in system calls counts for the Python code that called it).
PARTS = (("kit/gateway/upstream.py", "upstream client (kit.gateway.upstream: send, parse answers)"),
         ("aiohttp/client", "aiohttp client"), ("aiohttp/connector", "aiohttp client"),
         ("kit/gateway/front.py", "gateway server (kit.gateway.front: HTTP parsing, routing, writing answers)"),
         ("httptools/", "gateway server (kit.gateway.front: HTTP parsing, routing, writing answers)"),
         ("kit/picker/", "picker (scheduling cycle, prefix hashing and index)"),
         ("kit/gateway/datastore.py", "datastore (metric scrapes, first-byte watch)"),
         ("kit/vllm_metrics.py", "datastore (metric scrapes, first-byte watch)"),
         ("kit/gateway/", "gateway handler (kit.gateway: checks, retries, headers)"),
         ("prometheus_client/", "metrics (prometheus_client)"), ("json/", "JSON parsing"), ("orjson", "JSON parsing"),
         ("kit/http.py", "aiohttp server (HTTP parsing, routing, middlewares, writing answers)"),
         ("aiohttp/", "aiohttp server (HTTP parsing, routing, middlewares, writing answers)"),
         ("multidict/", "aiohttp server (HTTP parsing, routing, middlewares, writing answers)"),
         ("yarl/", "aiohttp server (HTTP parsing, routing, middlewares, writing answers)"),
         ("asyncio/", "event loop (asyncio/uvloop: polling, callbacks, timers)"),
         ("uvloop/", "event loop (asyncio/uvloop: polling, callbacks, timers)"))


def _part(frame: str) -> str:
    where = frame.rpartition("(")[2]
    return next((name for key, name in PARTS if key in where), "other")


def profile(name: str, workers: list[str], seconds: float, prompt_chars: int, baseline: str | None) -> dict:
    """Sample a kit gateway with py-spy while wrk drives it with 64 connections."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    r = start_router(name, workers, baseline)
    out = LOG_DIR / f"profile-{r.pid}.txt"
    try:
        body = {"model": MODEL, "prompt": (PROMPT * (prompt_chars // len(PROMPT) + 1))[:prompt_chars],
                "max_tokens": 1}
        wrk(r.url + "/v1/completions", 64, 1, body)
        load: dict = {}
        cpu0 = r.cpu()
        driver = threading.Thread(target=lambda: load.update(wrk(r.url + "/v1/completions", 64, seconds + 2, body)))
        driver.start()
        time.sleep(1)
        subprocess.run([spy, "record", "-p", str(r.pid), "-r", "200", "-d", f"{seconds:g}",
                        "-f", "raw", "-o", str(out)], check=True, capture_output=True)
        driver.join()
        cpu_per_request = 1e6 * (r.cpu() - cpu0) / load["requests"]
    finally:
        r.stop()
    parts: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = _part(stack.split(";")[-1])
        parts[leaf] = parts.get(leaf, 0) + n
    return {"router": name, "prompt_chars": prompt_chars, "samples": total,
            "cpu_us_per_req": round(cpu_per_request, 1),
            "parts": {k: round(v / total, 3) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}}


# ------------------------------------------------------------------------------------------ report
def markdown(picker: list[dict], rows: list[dict]) -> str:
    out = ["| endpoints | prompt chars | p50 µs | p99 µs | CPU p50 µs | CPU p99 µs |", "|---|---|---|---|---|---|"]
    out += [f"| {r['endpoints']} | {r['prompt_chars']:,} | {r['p50_us']} | {r['p99_us']} | {r['cpu_p50_us']} | "
            f"{r['cpu_p99_us']} |" for r in picker]
    out += ["", "| round | router | p50 µs | added p50 µs | added first token µs | req/s at 64 | errors | "
                "router CPU µs/req | router CPU | upstream CPU | wrk CPU |", "|" + "---|" * 11]
    for r in rows:
        out.append(f"| {r['round']} | {r['router']} | {r['p50_us']} | {r.get('added_p50_us', '')} | "
                   f"{r.get('added_first_p50_us', '')} | {r['rate_64']:,.0f} | {r['errors_64']} | "
                   f"{r['router_cpu_us_per_req'] or ''} | {100 * r['router_cpu_share']:.0f}% | "
                   f"{100 * r['upstream_cpu_share']:.0f}% | {100 * r['wrk_cpu_share']:.0f}% |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of every router (2: repeat once)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--streams", type=int, default=1000, help="streamed requests per first-token measurement")
    ap.add_argument("--routers", nargs="+", choices=[*KIT, *RUST], help="routers to measure (default: all)")
    ap.add_argument("--skip-picker", action="store_true", help="measure the hop only")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also measure the kit gateway of the checkout in DIR (e.g. `git worktree add DIR main`)")
    ap.add_argument("--profile", action="store_true",
                    help="also sample the kit gateway with py-spy under load: where its CPU goes")
    args = ap.parse_args()
    print(f"gateway_bench: logs in {LOG_DIR}", file=sys.stderr)
    picker = [] if args.skip_picker else picker_table()
    if not shutil.which("wrk"):
        print("gateway_bench: skipping the hop: it needs wrk on PATH (Debian/Ubuntu: apt-get install wrk)",
              file=sys.stderr)
        args.rounds, args.profile = 0, False
    rows = hop(args)
    result: dict = {"picker": picker, "hop": rows}
    if args.profile:
        upstream, workers = start_upstreams()
        try:
            names = [f"kit default{BASELINE}", "kit default"] if args.baseline else ["kit default"]
            result["profile"] = [profile(n, workers, args.seconds, chars, args.baseline)
                                 for chars in (len(PROMPT), 32000) for n in names]
        finally:
            upstream.terminate()
            upstream.wait()
    text = json.dumps(result, indent=2)
    print(text)
    print(markdown(picker, rows))
    for p in result.get("profile", []):
        print(f"\nWhere the CPU of {p['router']} goes ({p['prompt_chars']:,}-character prompts, {p['samples']} "
              f"samples, {p['cpu_us_per_req']:.0f} µs per request while sampled):\n")
        print("| part | share | µs per request |\n|---|---|---|")
        print("\n".join(f"| {k} | {100 * v:.0f}% | {v * p['cpu_us_per_req']:.0f} |" for k, v in p["parts"].items()))
    if args.out:
        Path(args.out).write_text(text)
        print(f"gateway_bench: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
