"""Simulator benchmarks: fidelity to the latency model under load, sustained streams, SSE rate, memory.

Run: ``make bench`` (or ``.venv/bin/python bench/sim_bench.py [--quick] [--out FILE] [--record]``). Each part
starts its own ``kit sim`` process on a free port and stops it. Results print as JSON; ``--record`` also writes
them as records for the results pages (``bench/results/simulator/``, then ``make results``).

* fidelity / sustained streams: N streaming requests start together (unique 512-token prompts, 64
  output tokens). The same workload replayed through the engine on a virtual clock gives the latency
  model's own TTFT and inter-token latency; the live process is compared with it, as the clients
  see it and as its own histograms report it. A concurrency is *sustained* when every stream
  completes and the measured inter-token latency stays within 1.25x of the model's.
* SSE rate: the engine runs flat out (time scale 0.001) and the client counts events per second.
* memory: resident memory of the simulator with 1,000 streaming requests in flight versus idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import psutil
from record import write_record

from kit import tokenizer
from kit.experiments.client import make_body, send
from kit.sim.config import SimConfig
from kit.sim.engine import replay
from kit.targets.processes import free_port, spawn, stop
from kit.vllm_metrics import parse_vllm_metrics

PROMPT_TOKENS, OUTPUT_TOKENS = 512, 64
LOG_DIR = Path(tempfile.mkdtemp(prefix="kit-bench-"))


def prompt(i: int, n_tokens: int = PROMPT_TOKENS) -> str:
    """A prompt of exactly ``n_tokens`` tokens, unique from its first block (no prefix sharing)."""
    words = f"request {i:06d} " + " ".join(f"w{(i * 7919 + k) % 997}" for k in range(n_tokens * 2))
    ids = tokenizer.encode(words)[:n_tokens]
    return tokenizer.decode(ids)


def metrics(url: str):
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return parse_vllm_metrics(r.read().decode())


def start_sim(*flags: str):
    port = free_port()
    return spawn(["sim", "--port", str(port), *flags], f"http://127.0.0.1:{port}", LOG_DIR / f"sim-{port}.log",
                 role="sim")


async def load(url: str, bodies: list[dict]):
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(send(s, url, b) for b in bodies))
        return results, time.perf_counter() - t0


def fidelity(concurrency: list[int]) -> list[dict]:
    flags = ["--max-num-seqs", "4096"]
    cfg = SimConfig(max_num_seqs=4096)
    rows = []
    for c in concurrency:
        proc = start_sim(*flags)
        try:
            texts = [prompt(i) for i in range(c)]
            before = metrics(proc.url)
            bodies = [make_body(t, chat=False, stream=True, max_tokens=OUTPUT_TOKENS, ignore_eos=True) for t in texts]
            results, wall = asyncio.run(load(proc.url, bodies))
            after = metrics(proc.url)
        finally:
            stop(proc)
        ok = [r for r in results if r.ok]
        # The model's prediction for the same requests arriving when the client actually sent them.
        t0 = min(r.started for r in results)
        model = replay(cfg, [tokenizer.encode(t) for t in texts], OUTPUT_TOKENS, [r.started - t0 for r in results])
        m_ttft = statistics.mean(s.first_token_at - s.arrival for s in model)
        m_itl = statistics.mean((s.last_token_at - s.first_token_at) / (s.output_len - 1) for s in model)
        c_ttft = statistics.mean(r.ttft for r in ok)
        c_itl = statistics.mean(statistics.mean(r.itls) for r in ok)
        s_itl = (after.itl_sum - before.itl_sum) / (after.itl_count - before.itl_count)
        s_ttft = (after.ttft_sum - before.ttft_sum) / (after.ttft_count - before.ttft_count)
        rows.append({
            "concurrency": c, "ok": len(ok), "wall_s": round(wall, 2),
            "model_ttft_ms": round(1e3 * m_ttft, 2), "server_ttft_ms": round(1e3 * s_ttft, 2),
            "client_ttft_ms": round(1e3 * c_ttft, 2),
            "model_itl_ms": round(1e3 * m_itl, 3), "server_itl_ms": round(1e3 * s_itl, 3),
            "client_itl_ms": round(1e3 * c_itl, 3),
            "itl_ratio": round(c_itl / m_itl, 3),
            "sustained": len(ok) == c and c_itl <= 1.25 * m_itl,
            "sse_events_per_s": round(sum(len(r.itls) + 1 for r in ok) / wall),
        })
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def sse_rate(concurrency: int = 256, tokens: int = 200) -> dict:
    proc = start_sim("--max-num-seqs", "1024", "--time-scale", "0.001")
    try:
        bodies = [make_body(prompt(i, 64), chat=False, stream=True, max_tokens=tokens, ignore_eos=True)
                  for i in range(concurrency)]
        results, wall = asyncio.run(load(proc.url, bodies))
    finally:
        stop(proc)
    events = sum(len(r.itls) + 1 for r in results if r.ok)
    return {"concurrency": concurrency, "events": events, "wall_s": round(wall, 2),
            "sse_events_per_s": round(events / wall)}


async def _hold(url: str, n: int, until_running: int) -> tuple[float, float]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        bodies = [make_body(prompt(i, 256), chat=False, stream=True, max_tokens=4000, ignore_eos=True)
                  for i in range(n)]
        tasks = [asyncio.create_task(send(s, url, b)) for b in bodies]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            m = await asyncio.to_thread(metrics, url)
            if m.running + m.waiting >= until_running:
                break
        await asyncio.sleep(1.0)
        m = await asyncio.to_thread(metrics, url)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return m.running, m.waiting


def memory(n: int = 1000) -> dict:
    proc = start_sim("--max-num-seqs", "1024", "--time-scale", "200")
    try:
        ps = psutil.Process(proc.pid)
        idle = ps.memory_info().rss
        running, waiting = asyncio.run(_hold(proc.url, n, n))
        busy = ps.memory_info().rss
        time.sleep(1.0)
        after = metrics(proc.url)
    finally:
        stop(proc)
    return {"in_flight": int(running + waiting), "idle_rss_mib": round(idle / 2**20, 1),
            "busy_rss_mib": round(busy / 2**20, 1), "mib_per_1000": round((busy - idle) / 2**20 * 1000 / n, 1),
            "running_after_clients_left": after.running}


FIDELITY_COLUMNS = {"concurrency": "streams", "ok": "ok", "model_ttft_ms": "model TTFT ms",
                    "server_ttft_ms": "server TTFT ms", "client_ttft_ms": "client TTFT ms",
                    "model_itl_ms": "model ITL ms", "server_itl_ms": "server ITL ms", "client_itl_ms": "client ITL ms",
                    "itl_ratio": "client/model ITL", "sse_events_per_s": "SSE events/s"}


def record(result: dict) -> None:
    """The three measurements as records for docs/results/simulator.md."""
    rows = [[row[k] for k in FIDELITY_COLUMNS] for row in result["fidelity"]]
    write_record("simulator", "fidelity", "Fidelity to the latency model, and concurrent streams sustained",
                 table={"columns": list(FIDELITY_COLUMNS.values()), "rows": rows},
                 figures={"most concurrent streams sustained": result["max_sustained_streams"]},
                 notes="N streaming completions start together (each a unique 512-token prompt, 64 output tokens), "
                       "Qwen3-0.6B-on-H100 defaults, `--max-num-seqs 4096`, time scale 1. *Model*: the same requests "
                       "replayed through the engine on a virtual clock (the latency model's prediction); *server*: the "
                       "simulator's own TTFT and ITL histograms; *client*: the load generator. Means over the run. "
                       "A level is sustained when every stream completes and the client's ITL stays within 1.25× of "
                       "the model's.")
    sse = result["sse"]
    write_record("simulator", "sse-rate", "SSE events per second, flat out",
                 figures={"SSE events/s": sse["sse_events_per_s"], "events": sse["events"], "seconds": sse["wall_s"]},
                 notes=f"{sse['concurrency']} streams with `--time-scale 0.001`, so the engine never waits: the most "
                       "events one simulator process streams. Client and server share the machine's cores.")
    mem = result["memory"]
    write_record("simulator", "memory", "Memory per 1,000 in-flight requests",
                 figures={"resident memory idle (MiB)": mem["idle_rss_mib"],
                          f"resident memory with {mem['in_flight']:,} requests in flight (MiB)": mem["busy_rss_mib"],
                          "MiB per 1,000 in-flight requests": mem["mib_per_1000"],
                          "requests running after the clients left": mem["running_after_clients_left"]},
                 notes="Streaming requests (256-token prompts) held in flight (`--time-scale 200`); resident memory "
                       "of the simulator process (psutil).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer concurrency levels")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--record", action="store_true", help="also write records for the results pages (make results)")
    args = ap.parse_args()
    levels = [1, 32, 256] if args.quick else [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    result = {"fidelity": fidelity(levels), "sse": sse_rate(), "memory": memory()}
    sustained = [r["concurrency"] for r in result["fidelity"] if r["sustained"]]
    result["max_sustained_streams"] = max(sustained) if sustained else 0
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.record:
        record(result)


if __name__ == "__main__":
    main()
