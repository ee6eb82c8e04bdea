"""Soak: the local stack at 80% of its measured capacity for 10 minutes, watching every process.

Run: ``.venv/bin/python bench/soak.py [--minutes 10] [--load 0.8] [--out build/soak.json]`` (not part of
``make bench``: it takes the minutes it is given).

* stack: four zero-latency simulators (``kit sim`` with every latency term 0) behind ``kit gateway``
  (default scheduler profile), so that the HTTP and scheduling code under test carries as many
  requests as the machine allows; the load generator runs in this process on the same machine.
* capacity: closed-loop clients (concurrency 64) for 20 s; the requests per second they complete.
* soak: Poisson arrivals at ``load`` × capacity for ``minutes``: a mix of completions and chat,
  streamed and not, over 64 shared prompt prefixes with random suffixes (the prefix index fills to
  its bound), 1–16 output tokens; 1% are malformed (bad JSON, a lone surrogate, an unknown model)
  and must get a 4xx. An arrival that finds 2,048 requests unanswered is skipped and counted, so a
  stack that falls behind cannot exhaust the load generator's descriptors.
* samples every 10 s: each process's resident memory (RSS) and open file descriptors (psutil), the
  client's errors, the gateway's non-2xx answers, retries, endpoints in rotation and prefix-index
  entries, and the warning/error lines in every process's log. The summary compares the first
  sample after warm-up with the last and the largest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import psutil
from tqdm import tqdm

from kit.targets.processes import Proc, free_port, spawn, stop

FAST = ["--step-overhead-ms", "0", "--prefill-us-per-token", "0", "--decode-us-per-seq", "0",
        "--decode-ns-per-context-token", "0"]
LOG_DIR = Path(tempfile.mkdtemp(prefix="kit-soak-"))
PREFIXES = [f"System prompt {i}: you answer questions about product line {i} politely and briefly. " * 6
            for i in range(64)]
MAX_OUTSTANDING = 2048  # arrivals beyond this many unanswered requests are skipped (and counted)
MALFORMED = [(b'{"prompt": "unterminated', 400), (b'{"prompt": "\\ud800", "max_tokens": 1}', 400),
             (b'{"prompt": "x", "model": "no-such-model"}', 404)]


def start(args: list[str], role: str) -> Proc:
    port = free_port()
    return spawn([*args[:1], "--port", str(port), *args[1:]], f"http://127.0.0.1:{port}",
                 LOG_DIR / f"{role}-{port}.log", role=role)


def request_body(rng: random.Random) -> tuple[str, dict]:
    prompt = rng.choice(PREFIXES) + f"Question {rng.randrange(10**6)}?"
    body: dict = {"max_tokens": rng.randint(1, 16), "ignore_eos": True}
    if rng.random() < 0.5:
        path, body["prompt"] = "/v1/completions", prompt
    else:
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    if rng.random() < 0.5:
        body["stream"] = True
    return path, body


class Tally:
    def __init__(self) -> None:
        self.ok = self.errors = self.expected_4xx = self.skipped = 0
        self.kinds: dict[str, int] = {}
        self.latencies: list[float] = []

    def error(self, kind: str) -> None:
        self.errors += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


async def one(s: aiohttp.ClientSession, url: str, rng: random.Random, tally: Tally) -> None:
    t0 = time.perf_counter()
    try:
        if rng.random() < 0.01:
            raw, expected = rng.choice(MALFORMED)
            async with s.post(url + "/v1/completions", data=raw, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status == expected:
                    tally.expected_4xx += 1
                else:
                    tally.error(f"malformed answered {r.status}")
            return
        path, body = request_body(rng)
        async with s.post(url + path, json=body) as r:
            data = await r.read()
            if r.status != 200:
                tally.error(f"status {r.status}")
            elif body.get("stream") and not data.endswith(b"data: [DONE]\n\n"):
                tally.error("stream cut short")
            else:
                tally.ok += 1
                tally.latencies.append(time.perf_counter() - t0)
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.error(type(exc).__name__)


async def capacity(url: str, seconds: float = 20.0, concurrency: int = 64) -> float:
    tally, rng = Tally(), random.Random(1)
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one(s, url, rng, tally)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return tally.ok / (time.perf_counter() - t0)


def log_problems(proc: Proc) -> int:
    text = Path(proc.log).read_text(errors="replace")
    return sum(1 for line in text.splitlines() if " WARNING" in line or " ERROR" in line or "Traceback" in line)


def gateway_counts(url: str) -> dict[str, float | None]:
    """The gateway's non-2xx answers, retries, endpoints in rotation and prefix-index entries (None if it
    did not answer within 10 s)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {"non_2xx": None, "retries": None, "in_rotation": None, "prefix_index": None}
    out = {"non_2xx": 0.0, "retries": 0.0, "in_rotation": 0.0, "prefix_index": 0.0}
    for line in text.splitlines():
        if line.startswith("kit_gateway_requests_total{") and 'code="200"' not in line:
            out["non_2xx"] += float(line.split()[-1])
        elif line.startswith("kit_gateway_retries_total{"):
            out["retries"] += float(line.split()[-1])
        elif line.startswith("kit_gateway_endpoint_healthy{"):
            out["in_rotation"] += float(line.split()[-1])
        elif line.startswith("inference_extension_prefix_indexer_size"):
            out["prefix_index"] += float(line.split()[-1])
    return out


def sample(procs: dict[str, Proc], gw: Proc, tally: Tally, t: float) -> dict:
    row: dict = {"t_s": round(t, 1), "ok": tally.ok, "client_errors": tally.errors, "skipped": tally.skipped,
                 "expected_4xx": tally.expected_4xx, **gateway_counts(gw.url)}
    for name, proc in procs.items():
        p = psutil.Process(proc.pid)
        row[name] = {"rss_mib": round(p.memory_info().rss / 2**20, 1), "fds": p.num_fds(),
                     "log_problems": log_problems(proc)}
    return row


async def soak(url: str, rate: float, seconds: float, procs: dict[str, Proc], gw: Proc,
               every: float = 10.0) -> tuple[list[dict], Tally]:
    tally, rng = Tally(), random.Random(2)
    samples: list[dict] = []
    bar = tqdm(total=int(seconds), unit="s", desc=f"soak at {rate:.0f} req/s")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=60)) as s:
        tasks: set[asyncio.Task] = set()
        t0 = time.perf_counter()
        next_arrival, next_sample = t0, t0
        while (now := time.perf_counter()) < t0 + seconds:
            if now >= next_sample:
                samples.append(await asyncio.to_thread(sample, procs, gw, tally, now - t0))
                next_sample += every
                bar.n = int(now - t0)
                bar.set_postfix(ok=tally.ok, errors=tally.errors, gw_mib=samples[-1]["gateway"]["rss_mib"])
            while next_arrival <= now:
                if len(tasks) < MAX_OUTSTANDING:
                    task = asyncio.create_task(one(s, url, rng, tally))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:  # the stack fell behind: do not let the load generator run out of descriptors
                    tally.skipped += 1
                next_arrival += rng.expovariate(rate)
            await asyncio.sleep(min(next_arrival, next_sample) - time.perf_counter())
        await asyncio.gather(*tasks)
        samples.append(await asyncio.to_thread(sample, procs, gw, tally, time.perf_counter() - t0))
    bar.n = int(seconds)
    bar.close()
    return samples, tally


def summarize(samples: list[dict], names: list[str], warmup_s: float) -> dict:
    first = next(s for s in samples if s["t_s"] >= warmup_s)
    last = samples[-1]
    return {name: {"rss_mib": {"first": first[name]["rss_mib"], "last": last[name]["rss_mib"],
                               "max": max(s[name]["rss_mib"] for s in samples)},
                   "fds": {"first": first[name]["fds"], "last": last[name]["fds"],
                           "max": max(s[name]["fds"] for s in samples)},
                   "log_problems": last[name]["log_problems"]} for name in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.8, help="share of the measured capacity to send")
    ap.add_argument("--out", help="also write the JSON (every sample) here")
    args = ap.parse_args()
    sims = [start(["sim", *FAST], "sim") for _ in range(4)]
    gw = start(["gateway", "--endpoints", ",".join(s.url for s in sims)], "gateway")
    procs = {"gateway": gw, **{f"sim{i}": s for i, s in enumerate(sims)}}
    try:
        print(f"soak: 4 zero-latency simulators behind a gateway at {gw.url} (logs in {LOG_DIR})")
        cap = asyncio.run(capacity(gw.url))
        rate = args.load * cap
        print(f"soak: capacity {cap:.0f} requests/s (64 closed-loop clients, 20 s); sending {rate:.0f}/s "
              f"for {args.minutes:g} min")
        samples, tally = asyncio.run(soak(gw.url, rate, args.minutes * 60, procs, gw))
    finally:
        for proc in (gw, *sims):
            stop(proc)
    lat = sorted(tally.latencies)
    result = {
        "stack": "4 zero-latency kit sim behind kit gateway (default profile), load generator on the same machine",
        "capacity_requests_per_s": round(cap, 1), "load": args.load, "target_requests_per_s": round(rate, 1),
        "minutes": args.minutes, "achieved_requests_per_s": round(tally.ok / (args.minutes * 60), 1),
        "ok": tally.ok, "client_errors": tally.errors, "error_kinds": tally.kinds,
        "skipped_with_2048_outstanding": tally.skipped,
        "malformed_answered_as_expected": tally.expected_4xx,
        "gateway": {"non_2xx": samples[-1]["non_2xx"], "retries": samples[-1]["retries"]},
        "latency_ms": {"p50": round(1e3 * statistics.median(lat), 2),
                       "p99": round(1e3 * lat[int(0.99 * (len(lat) - 1))], 2)} if lat else {},
        "processes": summarize(samples, list(procs), warmup_s=60.0),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**result, "samples": samples}, indent=2))
        print(f"soak: wrote {args.out}")


if __name__ == "__main__":
    main()
