"""Time the endpoint picker alone: one scheduling cycle plus the prefix-index update, per request."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from kit import paths
from kit.picker.config import load_picker_file
from kit.picker.framework import Endpoint, InferenceRequest
from kit.picker.scheduler import Scheduler
from kit.vllm_metrics import EndpointMetrics

WARMUP = 200  # picks that fill the index before any is timed


def _prompt(rng: random.Random, chars: int, group: int) -> str:
    head = f"system prompt of group {group}: " * (chars // 60 + 1)
    tail = " ".join(str(rng.random()) for _ in range(chars // 40 + 1))
    return (head[: chars * 3 // 4] + tail)[:chars]


def endpoints(rng: random.Random, n: int) -> list[Endpoint]:
    """``n`` endpoints with random queue, KV and running metrics (16-token blocks, 40,000 of them)."""
    eps = []
    for i in range(n):
        m = EndpointMetrics(waiting=rng.randint(0, 10), running=rng.randint(0, 64), kv_usage=rng.random(),
                            block_size=16, num_gpu_blocks=40000)
        eps.append(Endpoint(name=f"10.0.0.{i}:8000", url=f"http://10.0.0.{i}:8000", metrics=m,
                            updated=time.monotonic() + 3600))
    return eps


def make_requests(rng: random.Random, prompt_chars: int, count: int, distinct: bool = False) \
        -> Iterator[InferenceRequest]:
    """``count`` requests cycling over 32 prompt groups that share three quarters of their text; with
    ``distinct`` each prompt starts with its request number, so no two share a block."""
    prompts = [_prompt(rng, prompt_chars, g) for g in range(32)]
    for i in range(count):
        prompt = (f"{i}:" + prompts[i % 32])[:prompt_chars] if distinct else prompts[i % 32]
        yield InferenceRequest(model="Qwen/Qwen3-0.6B", prompt=prompt, request_id=str(i))


def time_pick(sched: Scheduler, req: InferenceRequest, eps: list[Endpoint], clock: Callable[[], float]) -> float:
    """Seconds on ``clock`` for one scheduling cycle and the PreRequest calls that follow it."""
    start = clock()
    _, state = sched.schedule(req, eps)
    sched.pre_request(state, req, state["picked"][0])
    return clock() - start


def percentiles(timings: list[float]) -> dict[str, float]:
    """p50, p99 and mean of ``timings`` (seconds), in microseconds."""
    timings = sorted(timings)
    return {"p50_us": round(1e6 * statistics.median(timings), 1),
            "p99_us": round(1e6 * timings[int(0.99 * (len(timings) - 1))], 1),
            "mean_us": round(1e6 * statistics.fmean(timings), 1)}


def bench_picker(n_endpoints: int, prompt_chars: int, requests: int = 2000, config: str | None = None,
                 seed: int = 0, clock: Callable[[], float] = time.perf_counter,
                 distinct: bool = False) -> dict[str, Any]:
    """p50/p99 microseconds per pick with ``n_endpoints`` endpoints and ``prompt_chars``-character prompts.

    Endpoints carry random queue, KV and running metrics (autoTune on, 16-token blocks); prompts come
    from 32 groups sharing three quarters of their text, so the prefix index holds real matches
    (``distinct``: every prompt new, so nothing matches and every prompt is hashed afresh). With
    ``clock=time.thread_time`` each pick is timed in CPU time, which a busy machine does not stretch
    by descheduling the process in mid-pick.
    """
    rng = random.Random(seed)
    sched = load_picker_file(config or paths.default_scheduler_config()).scheduler
    eps = endpoints(rng, n_endpoints)
    reqs = make_requests(rng, prompt_chars, requests + WARMUP, distinct)
    timings = [time_pick(sched, req, eps, clock) for req in reqs]
    return {"endpoints": n_endpoints, "prompt_chars": prompt_chars, "requests": requests,
            **percentiles(timings[WARMUP:])}
