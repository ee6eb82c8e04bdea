"""Send a workload over HTTP at a Poisson rate or a fixed concurrency, and collect what ``kit bench`` prints.

``run_workload`` returns every request's result and the servers' counters before and after, from
which ``WorkloadRun.summary()`` computes latency percentiles, throughput, errors, and prefix-cache hit
rates (pool-wide and per endpoint).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from dataclasses import dataclass, field

import aiohttp
from tqdm.auto import tqdm

from kit.experiments.client import make_body, run_sync, send
from kit.experiments.results import RequestResult, Summary, summarize
from kit.experiments.workloads import Load, Prompt, SharedPrefix, shared_prefix_prompts
from kit.targets.processes import scrape
from kit.vllm_metrics import EndpointMetrics


def _body(p: Prompt, w: SharedPrefix, load: Load) -> dict:
    if load.chat:
        body = make_body("", chat=True, stream=load.stream, max_tokens=w.output_len, ignore_eos=True)
        body["messages"] = [{"role": "system", "content": p.system}, {"role": "user", "content": p.question}]
        return body
    return make_body(p.text, chat=False, stream=load.stream, max_tokens=w.output_len, ignore_eos=True)


@dataclass
class WorkloadRun:
    results: list[RequestResult]
    wall_s: float
    before: dict[str, EndpointMetrics] = field(default_factory=dict)
    after: dict[str, EndpointMetrics] = field(default_factory=dict)

    def summary(self) -> Summary:
        cache = {}
        for name, after in self.after.items():
            before = self.before.get(name, EndpointMetrics())
            cache[name] = (after.prefix_hits - before.prefix_hits, after.prefix_queries - before.prefix_queries)
        return summarize(self.results, self.wall_s, cache)


def endpoint_urls(url: str) -> list[str]:
    """Model servers behind ``url``: a kit gateway lists them at /endpoints; else ``url`` is one itself."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/endpoints", timeout=5) as r:
            return [e["url"] for e in json.loads(r.read())]
    except (OSError, ValueError, KeyError, TypeError):
        return [url.rstrip("/")]


async def _drive(url: str, bodies: list[dict], load: Load, seed: int, progress: bool) -> list[RequestResult]:
    results: list[RequestResult | None] = [None] * len(bodies)
    bar = tqdm(total=len(bodies), desc="requests", unit="req", disable=not progress, leave=False)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:

        async def one(i: int) -> None:
            results[i] = await send(s, url, bodies[i])
            bar.update()

        if load.concurrency:
            queue = iter(range(len(bodies)))

            async def worker() -> None:
                for i in queue:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(load.concurrency)))
        else:
            rng = random.Random(seed + 1)
            tasks = []
            for i in range(len(bodies)):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(rng.expovariate(load.rate))
            await asyncio.gather(*tasks)
    bar.close()
    return results  # type: ignore[return-value]


def run_workload(url: str, workload: SharedPrefix, load: Load, progress: bool = True) -> WorkloadRun:
    """Send the workload to ``url`` (a gateway or one server) and collect results and counters."""
    prompts = shared_prefix_prompts(workload)
    n = load.requests or len(prompts)
    chosen = [prompts[i % len(prompts)] for i in range(n)]
    bodies = [_body(p, workload, load) for p in chosen]
    urls = endpoint_urls(url)
    before = scrape(urls)
    start = time.perf_counter()
    results = run_sync(_drive(url, bodies, load, workload.seed, progress))
    wall = time.perf_counter() - start
    for r, p in zip(results, chosen, strict=True):
        r.group = p.group
    return WorkloadRun(results, wall, before, scrape(urls))
