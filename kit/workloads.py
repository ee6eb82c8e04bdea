"""Workloads: inference-perf's shared-prefix prompts, driven at a Poisson rate or a fixed concurrency.

``run_workload`` returns every request's result and a summary with the fields ``kit bench`` prints:
latency percentiles, throughput, errors, and prefix-cache hit rates from the servers' own counters
over the run (pool-wide and per endpoint).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from kit.client import RequestResult, make_body, run_sync, send
from kit.config import StrictModel
from kit.sim import tokenizer
from kit.vllm_metrics import EndpointMetrics, parse_vllm_metrics

_WORDS = ("system policy customer order return refund shipping warranty account billing support product "
          "service network cluster request latency token cache model server answer question detail "
          "context record review update status report result value index memory region").split()


class SharedPrefix(StrictModel):
    """inference-perf's ``shared_prefix`` data: G groups sharing a system prompt, P questions each."""

    groups: int = Field(10, ge=1, description="number of distinct system prompts")
    prompts_per_group: int = Field(10, ge=1, description="questions per system prompt")
    system_prompt_len: int = Field(100, ge=1, description="system prompt length in tokens")
    question_len: int = Field(50, ge=1, description="question length in tokens")
    output_len: int = Field(50, ge=1, description="tokens to generate (ignore_eos)")
    seed: int = Field(0, description="seed of the prompt text and the arrival times")


class Load(StrictModel):
    """How requests are sent: a Poisson rate, or a fixed number in flight."""

    rate: float | None = Field(None, gt=0, description="requests per second (Poisson arrivals)")
    concurrency: int | None = Field(None, ge=1, description="requests in flight at once")
    requests: int | None = Field(None, ge=1, description="how many to send (default: every prompt once)")
    stream: bool = Field(True, description="stream the answers (needed for TTFT and ITL)")
    chat: bool = Field(False, description="use chat completions (system prompt as a system message)")

    @model_validator(mode="after")
    def _one_mode(self) -> Load:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give exactly one of rate or concurrency")
        return self


def _tokens(rng: random.Random, n: int) -> list[int]:
    words = " ".join(rng.choice(_WORDS) for _ in range(n))  # ≥ n tokens: each word is ≥ 1 token
    return tokenizer.encode(" " + words)[:n]


@dataclass
class Prompt:
    group: int
    system: str
    question: str

    @property
    def text(self) -> str:
        return self.system + self.question


def shared_prefix_prompts(w: SharedPrefix) -> list[Prompt]:
    """G × P prompts of exactly the asked token lengths (kit tokenizer), shuffled once, as inference-perf."""
    rng = random.Random(w.seed)
    prompts = []
    for g in range(w.groups):
        system = tokenizer.decode(_tokens(rng, w.system_prompt_len))
        for _ in range(w.prompts_per_group):
            prompts.append(Prompt(g, system, tokenizer.decode(_tokens(rng, w.question_len))))
    rng.shuffle(prompts)
    return prompts


def _body(p: Prompt, w: SharedPrefix, load: Load) -> dict:
    if load.chat:
        body = make_body("", chat=True, stream=load.stream, max_tokens=w.output_len, ignore_eos=True)
        body["messages"] = [{"role": "system", "content": p.system}, {"role": "user", "content": p.question}]
        return body
    return make_body(p.text, chat=False, stream=load.stream, max_tokens=w.output_len, ignore_eos=True)


@dataclass
class WorkloadRun:
    results: list[RequestResult]
    groups: list[int]
    wall_s: float
    before: dict[str, EndpointMetrics] = field(default_factory=dict)
    after: dict[str, EndpointMetrics] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return summarize(self)


def endpoint_urls(url: str) -> list[str]:
    """Model servers behind ``url``: a kit gateway lists them at /endpoints; else ``url`` is one itself."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/endpoints", timeout=5) as r:
            return [e["url"] for e in json.loads(r.read())]
    except (OSError, ValueError, KeyError, TypeError):
        return [url.rstrip("/")]


def scrape(urls: list[str]) -> dict[str, EndpointMetrics]:
    out = {}
    for u in urls:
        try:
            with urllib.request.urlopen(u + "/metrics", timeout=5) as r:
                out[u.split("://", 1)[-1]] = parse_vllm_metrics(r.read().decode())
        except OSError:
            continue  # a dead server has no counters to read
    return out


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
    return WorkloadRun(results, [p.group for p in chosen], wall, before, scrape(urls))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(run: WorkloadRun) -> dict[str, Any]:
    ok = [r for r in run.results if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [g for r in ok for g in r.itls]
    e2e = [r.e2e for r in ok]
    per: dict[str, dict[str, Any]] = {}
    for r in ok:
        if r.endpoint:
            per.setdefault(r.endpoint, {"requests": 0})["requests"] += 1
    hits = queries = 0.0
    for name, after in run.after.items():
        before = run.before.get(name, EndpointMetrics())
        dh, dq = after.prefix_hits - before.prefix_hits, after.prefix_queries - before.prefix_queries
        hits, queries = hits + dh, queries + dq
        row = per.setdefault(name, {"requests": 0})
        row["hit_rate"] = round(dh / dq, 4) if dq else 0.0
    errors: dict[str, int] = {}
    for r in run.results:
        if not r.ok:
            key = str(r.status) if r.status else "connection"
            errors[key] = errors.get(key, 0) + 1

    def r6(v: float | None) -> float | None:
        return None if v is None else round(v, 6)

    return {
        "requests": len(run.results), "ok": len(ok), "errors": len(run.results) - len(ok), "error_kinds": errors,
        "ttft_p50_s": r6(_pct(ttft, 0.5)), "ttft_p90_s": r6(_pct(ttft, 0.9)), "ttft_p99_s": r6(_pct(ttft, 0.99)),
        "itl_p50_s": r6(_pct(itl, 0.5)), "itl_p90_s": r6(_pct(itl, 0.9)),
        "e2e_p50_s": r6(_pct(e2e, 0.5)), "e2e_p90_s": r6(_pct(e2e, 0.9)),
        "requests_per_s": round(len(ok) / run.wall_s, 3) if run.wall_s else None,
        "output_tokens_per_s": round(sum(r.completion_tokens for r in ok) / run.wall_s, 1) if run.wall_s else None,
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else 0.0,
        "duration_s": round(run.wall_s, 3),
        "per_endpoint": dict(sorted(per.items())),
    }
