"""Send a workload (any of ``kit.experiments.workloads``) over HTTP at a rate, in rate stages or at a fixed
concurrency, and collect what ``kit bench`` prints.

``run_workload`` returns every request's result and the servers' counters before and after, from
which ``WorkloadRun.summary()`` computes latency percentiles, throughput, errors, and prefix-cache hit
rates (pool-wide and per endpoint).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass, field

import aiohttp
from tqdm.auto import tqdm

from kit.experiments.client import run_sync, send
from kit.experiments.results import RequestResult, Summary, summarize
from kit.experiments.workloads import Job, Load, Workload, body, plan
from kit.targets.processes import scrape
from kit.vllm_metrics import EndpointMetrics


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


async def _drive(url: str, w: Workload, load: Load, progress: bool) -> list[RequestResult]:
    """Run every job: open loop (each starts at its arrival time) or closed loop (``concurrency`` workers);
    a conversation's turns go one after another, each carrying the answers so far."""
    js, times = plan(w, load)
    results: list[RequestResult] = []
    bar = tqdm(total=sum(len(j.questions) for j in js), desc="requests", unit="req", disable=not progress,
               leave=False)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:

        async def run_job(job: Job) -> None:
            answers: list[str] = []
            for turn in range(len(job.questions)):
                if turn and job.think_time:
                    await asyncio.sleep(job.think_time)
                res = await send(s, url, body(job.prompt(turn, answers), w.output_len, load))
                res.group = job.group
                results.append(res)
                bar.update()
                if not res.ok:
                    break  # the conversation cannot go on without its answer
                answers.append(res.text)

        if times is None:
            queue = iter(js)

            async def worker() -> None:
                for job in queue:
                    await run_job(job)

            await asyncio.gather(*(worker() for _ in range(load.concurrency or 1)))
        else:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            tasks = []
            for job, at in zip(js, times, strict=True):
                delay = t0 + at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(run_job(job)))
            await asyncio.gather(*tasks)
    bar.close()
    results.sort(key=lambda r: r.started)
    return results


def run_workload(url: str, workload: Workload, load: Load, progress: bool = True) -> WorkloadRun:
    """Send the workload to ``url`` (a gateway or one server) and collect results and counters."""
    urls = endpoint_urls(url)
    before = scrape(urls)
    start = time.perf_counter()
    results = run_sync(_drive(url, workload, load, progress))
    wall = time.perf_counter() - start
    return WorkloadRun(results, wall, before, scrape(urls))
