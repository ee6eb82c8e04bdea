"""The main job (``make demo``): bring up a simulated model server, show what it does, tear it down."""

from __future__ import annotations

import asyncio
import json
import statistics
import urllib.request
from pathlib import Path

import aiohttp
from tqdm.auto import tqdm

from kit.client import RequestResult, make_body, send
from kit.processes import free_port, spawn, stop
from kit.vllm_metrics import parse_vllm_metrics

SYSTEM = ("You are the support assistant of a bicycle shop. You know the catalogue, the repair price list, "
          "the return policy and the opening hours, and you answer briefly and politely. ") * 12


def _say(title: str) -> None:
    print(f"\n== {title}")


async def _burst(url: str, bodies: list[dict], desc: str) -> list[RequestResult]:
    async with aiohttp.ClientSession() as s:
        tasks = [asyncio.ensure_future(send(s, url, b)) for b in bodies]
        for t in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc=desc, unit="req"):
            await t
        return [t.result() for t in tasks]


def run_demo(out: str = "out") -> int:
    """Run the walkthrough against one local simulator; write ``out/demo.json``; stop what it started."""
    out_dir = Path(out)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    _say(f"Starting a simulated vLLM server (Qwen/Qwen3-0.6B on an H100, 8 sequences per step) at {url}")
    proc = spawn(["sim", "--port", str(port), "--max-num-seqs", "8", "--time-scale", "4"], url,
                 out_dir / "logs" / "sim.log", role="sim")
    print(f"   started pid {proc.pid}; log {proc.log}")
    try:
        summary = asyncio.run(_walk(url))
    finally:
        stop(proc)
        _say(f"Stopped the simulator (pid {proc.pid}); nothing the demo started is left running")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"   summary written to {out_dir / 'demo.json'}")
    return 0


async def _walk(url: str) -> dict:
    async with aiohttp.ClientSession() as s:
        _say("One chat request, streamed token by token")
        r = await send(s, url, make_body("Which bike should I buy for my commute?", chat=True, stream=True,
                                         max_tokens=24))
        print(f"   reply: {r.text.strip()!r}")
        print(f"   first token after {1000 * r.ttft:.1f} ms, {len(r.itls) + 1} tokens, "
              f"{1000 * statistics.mean(r.itls):.1f} ms between tokens")

        _say("The same long system prompt twice: the second time its KV blocks are already cached")
        turns = []
        for question in ("Do you repair e-bikes?", "Can I return a helmet?"):
            body = make_body("", chat=True, stream=True, max_tokens=8)
            body["messages"] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
            turns.append(await send(s, url, body))
        for name, t in zip(("cold", "warm"), turns, strict=True):
            print(f"   {name}: {t.prompt_tokens} prompt tokens, {t.cached_tokens} from the prefix cache, "
                  f"first token after {1000 * t.ttft:.1f} ms")

    _say("40 requests at once against 8 sequence slots: the rest wait in the queue")
    bodies = [make_body(f"Customer {i}: " + SYSTEM[: 400 + 10 * i], chat=False, stream=True, max_tokens=64,
                        ignore_eos=True) for i in range(40)]
    results = await _burst(url, bodies, "burst")
    ttfts = sorted(r.ttft for r in results if r.ok)
    print(f"   {sum(r.ok for r in results)}/40 succeeded; time to first token: fastest {1000 * ttfts[0]:.0f} ms, "
          f"median {1000 * statistics.median(ttfts):.0f} ms, slowest {1000 * ttfts[-1]:.0f} ms")

    with urllib.request.urlopen(url + "/metrics") as resp:
        m = parse_vllm_metrics(resp.read().decode())
    _say("What the server's Prometheus metrics (vLLM names) say")
    print(f"   requests served {m.requests_ok:.0f}, prompt tokens {m.prompt_tokens:.0f}, "
          f"generated tokens {m.generation_tokens:.0f}")
    print(f"   prefix-cache hit rate {100 * m.hit_rate:.1f}% of prompt tokens; "
          f"mean TTFT {1000 * m.ttft_sum / m.ttft_count:.1f} ms")
    return {"single": {"ttft_s": r.ttft, "tokens": r.completion_tokens},
            "prefix": {"cold_ttft_s": turns[0].ttft, "warm_ttft_s": turns[1].ttft,
                       "warm_cached_tokens": turns[1].cached_tokens},
            "burst": {"ok": sum(x.ok for x in results), "ttft_min_s": ttfts[0],
                      "ttft_median_s": statistics.median(ttfts), "ttft_max_s": ttfts[-1]},
            "server": {"requests": m.requests_ok, "prefix_hit_rate": m.hit_rate}}
