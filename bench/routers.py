"""The kit's scheduler profiles side by side with vllm-router and sglang-router, on fresh simulator fleets.

Run: ``make bench-routers`` (installs the ``routers`` extra: vllm-router and sglang-router from PyPI), or
``.venv/bin/python bench/routers.py [--workloads ...] [--rates ...] [--repeat 2] [--out DIR]``.

For every (workload, rate, router) point a fresh fleet of ``kit sim`` servers starts with the local
environment's simulator settings (``environments/local.yaml``), the router starts in front of it, and
the same seeded request stream (Poisson arrivals, streaming completions) is sent through it. Figures per
point: TTFT p50/p90/p99, inter-token latency, requests/s, output tokens/s, errors, and the pool's
prefix-cache hit rate from the servers' own counters, next to the *ideal* hit rate for that stream (an
unbounded cache that has seen every earlier request). The load generator reports its own CPU share
and how late it sent requests, so a point where it was the bottleneck is flagged. With ``--repeat 2``
every point runs twice and the two runs are compared.

Writes ``DIR/routers.json`` (every point), ``DIR/routers.md`` (tables) and ``DIR/routers.html`` (TTFT p90
and hit rate against rate, one line per router). Uses free loopback ports and stops only what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from kit import paths, tokenizer
from kit.experiments.client import send
from kit.experiments.results import RequestResult, percentile, summarize
from kit.experiments.workloads import Load, MultiTurn, SharedPrefix, body, ideal_hit_rate, jobs, random_text
from kit.targets.kv_events import wire
from kit.targets.processes import end_child, free_port, healthy, scrape, spawn, stop

LOG_DIR = Path(tempfile.mkdtemp(prefix="kit-routers-"))
MODEL = "Qwen/Qwen3-0.6B"
BLOCK = 16

# name → how to start it in front of worker URLs (kit profiles are scheduler configs).
KIT_PROFILES = ("random", "round-robin", "load-only", "prefix-only", "default-plugins", "prefix-active", "precise")
OTHERS = {"vllm-router cache_aware": ("vllm-router", "cache_aware"),
          "vllm-router round_robin": ("vllm-router", "round_robin"),
          "sglang-router cache_aware": ("sglang-router", "cache_aware"),
          "sglang-router round_robin": ("sglang-router", "round_robin")}

# Workloads: token lengths as inference-perf's shared_prefix takes them.
WORKLOADS = {
    # 16 system prompts of 1,200 tokens: 19k tokens of prefixes against 4 × 8k of KV cache.
    "shared-prefix": SharedPrefix(groups=16, prompts_per_group=32, system_prompt_len=1200, question_len=40,
                                  output_len=24, seed=11),
    # Every prompt unique: prefix-aware routing has nothing to gain and must not lose.
    "no-shared-prefix": SharedPrefix(groups=512, prompts_per_group=1, system_prompt_len=1200, question_len=40,
                                     output_len=24, seed=12),
    # Chats that resend their history: 48 conversations × 4 turns, each turn after the previous answer. The
    # answers in the history are canned (the same text for every router), so every router gets the same stream.
    "multi-turn": MultiTurn(conversations=48, turns=4, system_prompt_len=600, question_len=60, output_len=24,
                            seed=13),
}


# ----------------------------------------------------------------------------------------- fleet
def simulator_flags() -> list[str]:
    """``kit sim`` flags of the local environment's simulators."""
    env = yaml.safe_load((paths.ENVIRONMENTS / "local.yaml").read_text())
    flags = []
    for key, value in (env.get("local", {}).get("simulator") or {}).items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


class Fleet:
    """N fresh simulators and one router in front of them; stops exactly what it started. The kit's precise
    profile needs its KV-event wiring before the simulators start, so the router is named here."""

    def __init__(self, replicas: int, sim_flags: list[str], router: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ports = [free_port() for _ in range(replicas)]
        self.wiring = None
        if router in KIT_PROFILES:
            self.wiring = wire(paths.scheduler_profile(router), "127.0.0.1", self.port, replicas, MODEL,
                               LOG_DIR / f"config-{self.port}.yaml", events_port=free_port())
        self.sims = []
        for port in ports:
            events = self.wiring.sim_args(port) if self.wiring else []
            self.sims.append(spawn(["sim", "--port", str(port), "--model", MODEL, *sim_flags, *events],
                                   f"http://127.0.0.1:{port}", LOG_DIR / f"sim-{port}.log", role="sim"))
        self.router: Any = None

    @property
    def worker_urls(self) -> list[str]:
        return [s.url for s in self.sims]

    def start_router(self, name: str) -> str:
        port = self.port
        if self.wiring is not None:
            self.router = spawn(["gateway", "--port", str(port), "--endpoints", ",".join(self.worker_urls),
                                 "--config", self.wiring.config], self.url, LOG_DIR / f"gw-{port}.log",
                                role="gateway")
            return self.url
        exe, policy = OTHERS[name]
        binary = shutil.which(exe) or str(Path(sys.executable).with_name(exe))
        cmd = [binary, *(["launch"] if exe == "sglang-router" else []), "--host", "127.0.0.1", "--port", str(port),
               "--worker-urls", *self.worker_urls, "--policy", policy, "--prometheus-host", "127.0.0.1",
               "--prometheus-port", str(free_port()), "--log-level", "warning" if exe == "vllm-router" else "warn"]
        log = open(LOG_DIR / f"{exe}-{port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.router = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.router.log = log
        deadline = time.monotonic() + 60
        while not healthy(self.url, timeout=0.5):
            if self.router.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start: see {log.name}")
            time.sleep(0.1)
        return self.url

    def stop(self) -> None:
        if isinstance(self.router, subprocess.Popen):
            end_child(self.router, 10)
            self.router.log.close()
        elif self.router is not None:
            stop(self.router)
        for s in self.sims:
            stop(s)


# -------------------------------------------------------------------------------------- workload
@dataclass
class Stream:
    """One request stream: jobs (a request, or a conversation's turns sent one after another), each with its
    prompt group and Poisson start time (seconds from the start)."""

    jobs: list[list[dict]]
    groups: list[int]
    at: list[float]
    ideal_hit_rate: float


def make_stream(workload: SharedPrefix | MultiTurn, rate: float, duration: float, seed: int) -> Stream:
    """Poisson arrivals for ``duration`` seconds; each arrival takes the workload's next job (cycling)."""
    rng = random.Random(seed)
    at, t = [], 0.0
    while t < duration:
        at.append(t)
        t += rng.expovariate(rate)
    load = Load(rate=rate, stream=True)
    canned = random.Random(workload.seed + 7)
    out, groups, prompts = [], [], []
    for job in jobs(workload, load, len(at)):
        answers = [random_text(canned, workload.output_len) for _ in job.questions[:-1]]
        turns = [job.prompt(i, answers[:i]) for i in range(len(job.questions))]
        out.append([{**body(p, workload.output_len, load), "model": MODEL} for p in turns])
        groups.append(job.group)
        prompts += [tokenizer.encode(p.text) for p in turns]
    return Stream(out, groups, at, ideal_hit_rate(prompts, BLOCK))


async def _send_all(url: str, stream: Stream) -> tuple[list[RequestResult], float, float]:
    """Start every job at its time (its turns one after another); returns results, wall seconds and the p99
    lateness of the starts."""
    conn = aiohttp.TCPConnector(limit=0)
    late: list[float] = []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(i: int) -> list[RequestResult]:
            delay = start + stream.at[i] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            late.append(loop.time() - start - stream.at[i])
            done = []
            for b in stream.jobs[i]:
                res = await send(s, url, b)
                res.group = stream.groups[i]
                done.append(res)
                if not res.ok:
                    break
            return done

        results = [r for rs in await asyncio.gather(*(one(i) for i in range(len(stream.jobs)))) for r in rs]
        wall = loop.time() - start
    return results, wall, percentile(late, 0.99) or 0.0


# -------------------------------------------------------------------------------------- one point
@dataclass
class Point:
    workload: str
    rate: float
    router: str
    run: int
    summary: dict[str, Any]
    ideal_hit_rate: float
    loadgen_cpu_share: float
    send_lateness_p99_s: float
    notes: list[str] = field(default_factory=list)


def run_point(workload: str, rate: float, router: str, run: int, args: argparse.Namespace) -> Point:
    stream = make_stream(WORKLOADS[workload], rate, args.duration, seed=1000 + int(rate * 10))
    fleet = Fleet(args.replicas, simulator_flags(), router)
    try:
        url = fleet.start_router(router)
        time.sleep(0.3)  # let the router see its workers' first metrics
        before = scrape(fleet.worker_urls)
        cpu0, t0 = time.process_time(), time.perf_counter()
        results, wall, lateness = asyncio.run(_send_all(url, stream))
        cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - t0)
        after = scrape(fleet.worker_urls)
    finally:
        fleet.stop()
    cache = {n: (after[n].prefix_hits - before[n].prefix_hits, after[n].prefix_queries - before[n].prefix_queries)
             for n in after if n in before}
    summary = summarize(results, wall, cache).to_dict()
    for name in after:  # requests per server, from its own counter (routers other than the kit's don't say)
        done = after[name].requests_ok - (before[name].requests_ok if name in before else 0)
        summary["per_endpoint"].setdefault(name, {"requests": 0, "hit_rate": 0.0})["requests"] = int(done)
    notes = []
    if lateness > 0.05:
        notes.append(f"load generator sent late (p99 {1000 * lateness:.0f} ms)")
    return Point(workload, rate, router, run, summary, round(stream.ideal_hit_rate, 4), round(cpu_share, 3),
                 round(lateness, 4), notes)


# ---------------------------------------------------------------------------------------- report
def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.0f}"


def tables(points: list[Point]) -> str:
    out = []
    for w in dict.fromkeys(p.workload for p in points):
        for rate in sorted({p.rate for p in points if p.workload == w}):
            rows = []
            for p in (q for q in points if q.workload == w and q.rate == rate):
                s = p.summary
                rows.append({"router": p.router, "run": p.run, "TTFT p50 ms": _ms(s["ttft_p50_s"]),
                             "TTFT p90 ms": _ms(s["ttft_p90_s"]), "TTFT p99 ms": _ms(s["ttft_p99_s"]),
                             "ITL p50 ms": _ms(s["itl_p50_s"]), "req/s": s["requests_per_s"],
                             "out tok/s": s["output_tokens_per_s"],
                             "hit rate": f"{s['prefix_cache_hit_rate']:.2f} of {p.ideal_hit_rate:.2f}",
                             "errors": s["errors"], "loadgen CPU": f"{100 * p.loadgen_cpu_share:.0f}%"})
            unit = "conversations/s" if isinstance(WORKLOADS[w], MultiTurn) else "req/s"
            out.append(f"### {w} at {rate:g} {unit}\n\n" + _markdown(rows))
    return "\n\n".join(out)


def _markdown(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def agreement(points: list[Point], ttft_tol: float, hit_tol: float) -> list[str]:
    """Points whose two runs disagree by more than the tolerances (relative TTFT p90, absolute hit rate)."""
    out = []
    by = {}
    for p in points:
        by.setdefault((p.workload, p.rate, p.router), []).append(p)
    for key, runs in by.items():
        if len(runs) < 2:
            continue
        a, b = runs[0].summary, runs[1].summary
        if a["ttft_p90_s"] and b["ttft_p90_s"]:
            ratio = max(a["ttft_p90_s"], b["ttft_p90_s"]) / min(a["ttft_p90_s"], b["ttft_p90_s"]) - 1
            if ratio > ttft_tol:
                out.append(f"{key}: TTFT p90 differs by {100 * ratio:.0f}% between runs")
        if abs(a["prefix_cache_hit_rate"] - b["prefix_cache_hit_rate"]) > hit_tol:
            out.append(f"{key}: hit rate {a['prefix_cache_hit_rate']:.2f} vs {b['prefix_cache_hit_rate']:.2f}")
    return out


def figure(points: list[Point], path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    workloads = list(dict.fromkeys(p.workload for p in points))
    fig = make_subplots(rows=2, cols=len(workloads), subplot_titles=[*(f"{w}: TTFT p90" for w in workloads),
                                                                        *(f"{w}: hit rate" for w in workloads)])
    routers = list(dict.fromkeys(p.router for p in points))
    for c, w in enumerate(workloads, start=1):
        for i, r in enumerate(routers):
            pts = sorted((p for p in points if p.workload == w and p.router == r), key=lambda p: p.rate)
            rates = sorted({p.rate for p in pts})
            p90 = [statistics.median((q.summary["ttft_p90_s"] or 0) * 1000 for q in pts if q.rate == x) for x in rates]
            hit = [statistics.median(q.summary["prefix_cache_hit_rate"] for q in pts if q.rate == x) for x in rates]
            style = {"dash": "dot"} if not r.startswith(KIT_PROFILES) else {}
            fig.add_trace(go.Scatter(x=rates, y=p90, name=r, legendgroup=r, showlegend=c == 1,
                                     line={**style, "color": _COLORS[i % len(_COLORS)]}), row=1, col=c)
            fig.add_trace(go.Scatter(x=rates, y=hit, name=r, legendgroup=r, showlegend=False,
                                     line={**style, "color": _COLORS[i % len(_COLORS)]}), row=2, col=c)
    fig.update_yaxes(title_text="TTFT p90 (ms)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="pool hit rate", range=[0, 1], row=2, col=1)
    fig.update_xaxes(title_text="offered rate (req/s)", row=2)
    fig.update_layout(height=760, title="Routers side by side (kit sim fleets, one machine)")
    fig.write_html(path, include_plotlyjs=True)


_COLORS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D",
           "#BAB0AC")


def available_routers(wanted: list[str]) -> list[str]:
    out = []
    for r in wanted:
        if r in KIT_PROFILES:
            out.append(r)
            continue
        exe = OTHERS[r][0]
        if shutil.which(exe) or Path(sys.executable).with_name(exe).exists():
            out.append(r)
        else:
            print(f"skipping {r}: {exe} is not installed (pip install 'kit[routers]')", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--rates", nargs="+", type=float, default=[15, 30, 60, 90], help="offered rates, req/s")
    ap.add_argument("--routers", nargs="+", default=[*KIT_PROFILES, *OTHERS], choices=[*KIT_PROFILES, *OTHERS])
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per point")
    ap.add_argument("--repeat", type=int, default=2, help="runs of every point (2 checks agreement)")
    ap.add_argument("--ttft-tolerance", type=float, default=0.25, help="relative TTFT p90 difference allowed")
    ap.add_argument("--hit-tolerance", type=float, default=0.05, help="absolute hit-rate difference allowed")
    ap.add_argument("--out", default="build/routers")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    routers = available_routers(args.routers)
    plan = [(w, r, rt, run) for run in range(1, args.repeat + 1) for w in args.workloads for r in args.rates
            for rt in routers]
    print(f"bench/routers: {len(plan)} points ({len(args.workloads)} workloads × {len(args.rates)} rates × "
          f"{len(routers)} routers × {args.repeat} runs), {args.duration:g} s each; logs in {LOG_DIR}", flush=True)
    points: list[Point] = []
    for i, (w, r, rt, run) in enumerate(plan, start=1):
        p = run_point(w, r, rt, run, args)
        points.append(p)
        s = p.summary
        print(f"[{i}/{len(plan)}] {w} {r:g} req/s {rt} (run {run}): TTFT p90 {_ms(s['ttft_p90_s'])} ms, hit rate "
              f"{s['prefix_cache_hit_rate']:.2f} of {p.ideal_hit_rate:.2f}, errors {s['errors']}, loadgen CPU "
              f"{100 * p.loadgen_cpu_share:.0f}%" + ("; " + "; ".join(p.notes) if p.notes else ""), flush=True)
        (out / "routers.json").write_text(json.dumps({"args": vars(args), "points": [asdict(q) for q in points]},
                                                     indent=1))
    disagree = agreement(points, args.ttft_tolerance, args.hit_tolerance)
    report = tables(points)
    report += "\n\n" + ("Runs agree within the tolerances." if not disagree else
                        "Runs that disagree:\n" + "\n".join(f"- {d}" for d in disagree))
    (out / "routers.md").write_text(report + "\n")
    figure(points, out / "routers.html")
    print(report)
    print(f"bench/routers: wrote {out / 'routers.json'}, {out / 'routers.md'}, {out / 'routers.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
