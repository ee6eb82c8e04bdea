"""Time the endpoint picker alone: one scheduling cycle plus the prefix-index update, per request."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from kit import paths
from kit.picker.config import load_picker_file
from kit.picker.framework import Endpoint, InferenceRequest
from kit.vllm_metrics import EndpointMetrics


def _prompt(rng: random.Random, chars: int, group: int) -> str:
    head = f"system prompt of group {group}: " * (chars // 60 + 1)
    tail = " ".join(str(rng.random()) for _ in range(chars // 40 + 1))
    return (head[: chars * 3 // 4] + tail)[:chars]


def bench_picker(n_endpoints: int, prompt_chars: int, requests: int = 2000, config: str | None = None,
                 seed: int = 0, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """p50/p99 microseconds per pick with ``n_endpoints`` endpoints and ``prompt_chars``-character prompts.

    Endpoints carry random queue, KV and running metrics (autoTune on, 16-token blocks); prompts come
    from 32 groups sharing three quarters of their text, so the prefix index holds real matches. With
    ``clock=time.thread_time`` each pick is timed in CPU time, which a busy machine does not stretch
    by descheduling the process in mid-pick.
    """
    rng = random.Random(seed)
    loaded = load_picker_file(config or paths.default_scheduler_config())
    sched = loaded.scheduler
    eps = []
    for i in range(n_endpoints):
        m = EndpointMetrics(waiting=rng.randint(0, 10), running=rng.randint(0, 64), kv_usage=rng.random(),
                            block_size=16, num_gpu_blocks=40000)
        eps.append(Endpoint(name=f"10.0.0.{i}:8000", url=f"http://10.0.0.{i}:8000", metrics=m,
                            updated=time.monotonic() + 3600))
    prompts = [_prompt(rng, prompt_chars, g) for g in range(32)]
    timings = []
    for i in range(requests + 200):
        req = InferenceRequest(model="Qwen/Qwen3-0.6B", prompt=prompts[i % len(prompts)], request_id=str(i))
        start = clock()
        _, state = sched.schedule(req, eps)
        sched.pre_request(state, req, state["picked"][0])
        elapsed = clock() - start
        if i >= 200:  # the first 200 warm the index
            timings.append(elapsed)
    timings.sort()
    return {"endpoints": n_endpoints, "prompt_chars": prompt_chars, "requests": requests,
            "p50_us": round(1e6 * statistics.median(timings), 1),
            "p99_us": round(1e6 * timings[int(0.99 * (len(timings) - 1))], 1),
            "mean_us": round(1e6 * statistics.fmean(timings), 1)}
