"""The precise prefix index on its own (docs/results/precise.md): event lag, memory per million blocks, scorer cost.

* **event lag**: a real ``kit sim`` publishes its KV-cache events to a precise scorer in this process
  (central mode, as the local stack runs it) while requests are sent to the simulator at ``--rate``;
  for each batch, the time from the simulator's publish timestamp (the end of the engine step that
  stored the blocks) to the index having applied it;
* **memory**: bytes the index holds per million blocks (one engine key, one request key and one
  endpoint entry each), measured with tracemalloc;
* **scorer cost**: one ``score()`` per request against prompt length, with the index holding the
  prompt's prefix on one of four endpoints: tokenizing, and the rest (keys, walk, normalisation);
  the approximate ``prefix-cache-scorer`` beside it for scale;
* **simulator cost**: a simulator engine step with and without KV-cache events recorded and encoded.

    .venv/bin/python bench/precise_index.py
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit import tokenizer
from kit.picker import Endpoint, InferenceRequest, load_picker_config
from kit.picker.framework import CycleState
from kit.picker.plugins.kv_index import Entry, KVBlockIndex, apply_events
from kit.picker.plugins.scorers import precise_prefix
from kit.picker.plugins.tokenizer import tokenize
from kit.targets.processes import free_port, spawn, stop

MODEL = "Qwen/Qwen3-0.6B"
HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]


def event_lag(rate: float, seconds: float, prompt_tokens: int) -> dict:
    port = free_port()
    cfg = load_picker_config(HEAD + f"""
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    kvEventsConfig: {{zmqEndpoint: "tcp://127.0.0.1:{port}", discoverPods: false}}
    indexerConfig: {{tokenizersPoolConfig: {{modelName: {MODEL}}}}}
""")
    lags: list[float] = []
    last_ts = threading.local()
    real_parse, real_apply = precise_prefix.parse_batch, precise_prefix.apply_events

    def parse(payload: bytes):
        last_ts.ts = msgpack.unpackb(payload, raw=False)[0]
        return real_parse(payload)

    def apply(*args):
        real_apply(*args)
        lags.append(time.time() - last_ts.ts)

    precise_prefix.parse_batch, precise_prefix.apply_events = parse, apply
    cfg.scheduler.start()
    sim_port = free_port()
    log = Path("build/bench-precise-sim.log")
    sim = spawn(["sim", "--port", str(sim_port), "--num-gpu-blocks", "512", "--max-model-len", "8192",
                 "--max-num-seqs", "16", "--time-scale", "4", "--kv-events-config",
                 json.dumps({"enable_kv_cache_events": True, "endpoint": f"tcp://127.0.0.1:{port}",
                             "topic": f"kv@127.0.0.1:{sim_port}@{MODEL}"})],
                f"http://127.0.0.1:{sim_port}", log, role="simulator")
    try:
        rng = random.Random(0)
        words = "policy order refund cache model server token index memory region".split()
        threads, deadline = [], time.monotonic() + seconds

        def post(text: str) -> None:
            body = json.dumps({"prompt": text, "max_tokens": 8}).encode()
            req = urllib.request.Request(sim.url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=60).read()

        while time.monotonic() < deadline:
            text = " ".join(rng.choice(words) for _ in range(prompt_tokens // 2))
            t = threading.Thread(target=post, args=(text,))
            t.start()
            threads.append(t)
            time.sleep(rng.expovariate(rate))
        for t in threads:
            t.join()
        time.sleep(0.5)
    finally:
        stop(sim)
        cfg.scheduler.close()
        precise_prefix.parse_batch, precise_prefix.apply_events = real_parse, real_apply
    return {"batches": len(lags), "p50_ms": round(1000 * statistics.median(lags), 2),
            "p99_ms": round(1000 * pct(lags, 0.99), 2), "max_ms": round(1000 * max(lags), 2)}


def memory_per_million(blocks: int) -> dict:
    gc.collect()
    tracemalloc.start()
    index = KVBlockIndex()
    entry = [Entry("10.0.0.1:8000")]
    start = tracemalloc.take_snapshot()
    for base in range(0, blocks, 64):
        keys = range(base, base + 64)
        index.add([k + (1 << 40) for k in keys], list(keys), entry)
    used = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(start, "filename"))
    tracemalloc.stop()
    return {"blocks": blocks, "mib_per_million_blocks": round(used / blocks * 1e6 / 2**20, 1),
            "bytes_per_block": round(used / blocks)}


def scorer_cost(lengths: list[int], repeat: int) -> list[dict]:
    precise = load_picker_config(HEAD + f"""
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    kvEventsConfig: {{discoverPods: false}}
    indexerConfig: {{tokenizersPoolConfig: {{modelName: {MODEL}}}}}
""").scheduler.plugins[0]
    approx = load_picker_config(HEAD + "plugins:\n- type: prefix-cache-scorer\n").scheduler.plugins[0]
    eps = [Endpoint(name=f"10.0.0.{i}:8000", url=f"http://10.0.0.{i}:8000") for i in range(4)]
    rng = random.Random(1)
    words = "policy order refund cache model server token index memory region".split()
    out = []
    for n in lengths:
        shared = " ".join(rng.choice(words) for _ in range(n // 2))
        tokens = tokenizer.encode(shared)
        blocks = len(tokens) // 16
        apply_events(precise.index, precise.processor, eps[0].name, MODEL,
                     [("stored", list(range(blocks)), 0, tokens[: 16 * blocks], "gpu", None)])
        prompts = [shared + f" question {i} " + " ".join(rng.choice(words) for _ in range(50)) for i in range(repeat)]
        approx.pre_request(CycleState(), InferenceRequest(model=MODEL, prompt=prompts[0]), eps[0])
        times = {"tokenize": [], "precise": [], "approx": []}
        for p in prompts:
            req = InferenceRequest(model=MODEL, prompt=p)
            t0 = time.perf_counter()
            tokenize(req)
            t1 = time.perf_counter()
            precise.score(CycleState(), req, eps)
            t2 = time.perf_counter()
            approx.score(CycleState(), req, eps)
            t3 = time.perf_counter()
            times["tokenize"].append(t1 - t0)
            times["precise"].append(t2 - t1)
            times["approx"].append(t3 - t2)
        out.append({"prompt_tokens": len(tokenizer.encode(prompts[0])),
                    "precise_ms": round(1000 * statistics.median(times["precise"]), 3),
                    "of_which_tokenize_ms": round(1000 * statistics.median(times["tokenize"]), 3),
                    "approx_ms": round(1000 * statistics.median(times["approx"]), 3)})
    precise.close()
    return out


def sim_event_cost(repeat: int = 3) -> dict:
    """Engine steps per second of one simulator, in process, with and without KV-cache events recorded and
    encoded (a 12-group shared-prefix workload, 200 output tokens each); medians of ``repeat`` runs."""
    from kit.experiments.workloads import SharedPrefix, shared_prefix_prompts
    from kit.sim.config import SimConfig
    from kit.sim.engine import Engine
    from kit.sim.kv_events import encode_batch

    prompts = [tokenizer.encode(p.text) for p in shared_prefix_prompts(
        SharedPrefix(groups=12, prompts_per_group=20, system_prompt_len=2000, question_len=100))]

    def run(events: bool) -> float:
        engine = Engine(SimConfig(num_gpu_blocks=512, max_model_len=8192, max_num_seqs=16))
        if events:
            engine.enable_events(lambda ev: encode_batch(time.time(), ev, 16))
        steps, start = 0, time.perf_counter()
        for i, p in enumerate(prompts):
            engine.submit(p, 200, None)
            while (engine.running or engine.waiting) and (i % 4 != 3 or steps % 60):
                engine.complete(engine.schedule())
                engine.flush_events()
                steps += 1
                if i % 4 != 3:
                    break
        while engine.running or engine.waiting:
            engine.complete(engine.schedule())
            engine.flush_events()
            steps += 1
        return (time.perf_counter() - start) / steps

    off = statistics.median(run(False) for _ in range(repeat))
    on = statistics.median(run(True) for _ in range(repeat))
    return {"us_per_step_off": round(1e6 * off, 1), "us_per_step_events": round(1e6 * on, 1),
            "added_us_per_step": round(1e6 * (on - off), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10.0, help="requests per second to the simulator")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--prompt-tokens", type=int, default=2000)
    ap.add_argument("--blocks", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    Path("build").mkdir(exist_ok=True)
    result = {"event_lag": event_lag(args.rate, args.seconds, args.prompt_tokens),
              "memory": memory_per_million(args.blocks),
              "scorer_cost": scorer_cost([512, 2048, 8192, 32768], args.repeat),
              "simulator_event_cost": sim_event_cost()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
