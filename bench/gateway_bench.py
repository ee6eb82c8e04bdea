"""Gateway and picker benchmarks: picker cost per pick, the gateway's added latency, its top request rate.

Run: ``make bench`` (or ``.venv/bin/python bench/gateway_bench.py [--out FILE]``). Results print as JSON.

* picker: ``kit bench-picker`` in process for 4/16/64 endpoints and 1k/32k-character prompts.
* added latency: the same request (``max_tokens`` 1) sent alternately straight to a simulator and
  through a gateway in front of that one simulator, one at a time; the difference of the medians is
  what the gateway adds (parse, schedule, proxy). The simulator runs with zero model latency.
* top rate: four zero-latency simulators behind the gateway; closed-loop clients at rising
  concurrency send short non-streaming requests; the highest rate reached with no error counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from kit.picker.bench import bench_picker
from kit.targets.processes import free_port, spawn, stop

LOG_DIR = Path(tempfile.mkdtemp(prefix="kit-gw-bench-"))
FAST = ["--step-overhead-ms", "0", "--prefill-us-per-token", "0", "--decode-us-per-seq", "0",
        "--decode-ns-per-context-token", "0"]


def start(args: list[str], role: str):
    port = free_port()
    return spawn([*args[:1], "--port", str(port), *args[1:]], f"http://127.0.0.1:{port}",
                 LOG_DIR / f"{role}-{port}.log", role=role)


def picker_table() -> list[dict]:
    return [bench_picker(n, c, 2000) for n in (4, 16, 64) for c in (1000, 32000)]


async def _timed(s: aiohttp.ClientSession, url: str, body: dict) -> float:
    t0 = time.perf_counter()
    async with s.post(url + "/v1/completions", json=body) as r:
        await r.read()
        assert r.status == 200, r.status
    return time.perf_counter() - t0


def added_latency(n: int = 2000) -> dict:
    sim = start(["sim", *FAST], "sim")
    gw = start(["gateway", "--endpoints", sim.url], "gateway")
    try:
        async def go():
            body = {"prompt": "How long does the gateway take? " * 8, "max_tokens": 1}
            direct, via = [], []
            async with aiohttp.ClientSession() as s:
                for _ in range(50):  # warm connections and caches
                    await _timed(s, sim.url, body)
                    await _timed(s, gw.url, body)
                for _ in range(n):
                    direct.append(await _timed(s, sim.url, body))
                    via.append(await _timed(s, gw.url, body))
            return direct, via

        direct, via = asyncio.run(go())
    finally:
        stop(gw)
        stop(sim)
    q = statistics.quantiles
    return {"requests_each": n,
            "direct_p50_ms": round(1e3 * statistics.median(direct), 3),
            "gateway_p50_ms": round(1e3 * statistics.median(via), 3),
            "added_p50_ms": round(1e3 * (statistics.median(via) - statistics.median(direct)), 3),
            "added_p90_ms": round(1e3 * (q(via, n=10)[-1] - q(direct, n=10)[-1]), 3),
            "added_p99_ms": round(1e3 * (q(via, n=100)[-1] - q(direct, n=100)[-1]), 3)}


def top_rate(levels: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512), seconds: float = 5.0) -> dict:
    sims = [start(["sim", *FAST], "sim") for _ in range(4)]
    gw = start(["gateway", "--endpoints", ",".join(s.url for s in sims)], "gateway")
    rows = []
    try:
        for c in levels:
            async def go(c=c):
                ok = errors = 0
                deadline = time.perf_counter() + seconds
                body = {"prompt": "Short question number one? " * 4, "max_tokens": 1}
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
                    async def worker():
                        nonlocal ok, errors
                        while time.perf_counter() < deadline:
                            try:
                                async with s.post(gw.url + "/v1/completions", json=body) as r:
                                    await r.read()
                                    ok, errors = (ok + 1, errors) if r.status == 200 else (ok, errors + 1)
                            except aiohttp.ClientError:
                                errors += 1
                    t0 = time.perf_counter()
                    await asyncio.gather(*(worker() for _ in range(c)))
                    return ok, errors, time.perf_counter() - t0

            ok, errors, wall = asyncio.run(go())
            rows.append({"concurrency": c, "ok": ok, "errors": errors, "requests_per_s": round(ok / wall, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        stop(gw)
        for s in sims:
            stop(s)
    clean = [r for r in rows if r["errors"] == 0]
    return {"levels": rows, "max_requests_per_s_without_errors": max((r["requests_per_s"] for r in clean), default=0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    result = {"picker": picker_table(), "added_latency": added_latency(), "top_rate": top_rate()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
