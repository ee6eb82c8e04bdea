"""A node fast-forwards decode stretches and gets exactly what stepping every step gets."""

import math
import random

import pytest

from kit.fleet.node import Node
from kit.sim.config import SimConfig
from kit.sim.engine import Engine

CONFIGS = {
    "roomy": SimConfig(num_gpu_blocks=400, max_num_seqs=16, max_model_len=6400),
    "preempting": SimConfig(num_gpu_blocks=160, max_num_seqs=8, block_size=4, max_model_len=640),
    "chunked": SimConfig(num_gpu_blocks=70, max_num_seqs=64, block_size=8, max_num_batched_tokens=64,
                         max_model_len=560),
    "no caching": SimConfig(num_gpu_blocks=300, max_num_seqs=12, enable_prefix_caching=False, max_model_len=4800),
}


def drive(cfg: SimConfig, fast: bool, seed: int, n: int = 60, events: list | None = None):
    """Requests sharing a few prefixes at random times, with the state probed between them (and the node's
    KV-cache events, stamped, appended to ``events`` when given)."""
    rng = random.Random(seed)
    node = Node("n", cfg, fast=fast)
    if events is not None:
        node.engine.pool.events = []
        node.on_events = lambda t, batch: events.append((t, batch))
    prefixes = [[rng.randrange(1, 5000) for _ in range(rng.randint(20, 300))] for _ in range(5)]
    seqs, probes, t = [], [], 0.0
    for _ in range(n):
        t += rng.expovariate(40)
        for _ in range(rng.randint(0, 3)):
            probe = t - rng.random() * 0.02
            if probe > node.now:
                node.advance(probe)
                pool = node.engine.pool
                probes.append((probe, node.waiting, node.running, pool.num_free, node.next_event() >= probe))
        node.advance(t)
        prompt = rng.choice(prefixes) + [rng.randrange(1, 5000) for _ in range(rng.randint(1, 40))]
        seqs.append(node.submit(t, prompt, rng.randint(1, 120)))
    node.advance(math.inf)
    assert node.idle and not node.engine.waiting
    return ([(s.first_token_at, s.last_token_at, s.cached_tokens, s.preemptions, s.tokens, s.finish_reason)
             for s in seqs], probes, node.engine.steps, dict(node.itl), node.prefix_hits, node.generation_tokens,
            sorted(node.engine.pool.cached))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("seed", range(6))
def test_fast_forward_gives_what_stepping_gives(name, seed):
    assert drive(CONFIGS[name], True, seed) == drive(CONFIGS[name], False, seed)


@pytest.mark.parametrize("name", ["roomy", "preempting", "chunked"])
@pytest.mark.parametrize("seed", range(4))
def test_fast_forward_publishes_the_kv_events_stepping_publishes(name, seed):
    fast, slow = [], []
    assert drive(CONFIGS[name], True, seed, events=fast) == drive(CONFIGS[name], False, seed, events=slow)
    assert fast == slow
    kinds = {e[0] for _, batch in fast for e in batch}
    assert kinds == ({"stored"} if name == "roomy" else {"stored", "removed"})  # the small caches evict
    times = [t for t, _ in fast]
    assert times == sorted(times) and len(set(times)) == len(times)  # one batch per step, in order
    # Replaying the events gives the cache's contents at the end
    held: set = set()
    for _, batch in fast:
        for ev in batch:
            if ev[0] == "stored":
                held.update(ev[1])
            elif ev[0] == "removed":
                held.difference_update(ev[1])
    node_cache = drive(CONFIGS[name], True, seed)[-1]
    assert held == set(node_cache)


def test_fast_forward_hashes_generated_blocks_with_the_engines_algorithm(monkeypatch):
    # vLLM's sha256 block hashes: the fast-forward once committed generated blocks under Python's tuple hash
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # the root of vLLM's hashes; unset, every engine draws its own
    cfg = CONFIGS["roomy"].model_copy(update={"prefix_caching_hash_algo": "sha256"})
    fast = drive(cfg, True, 1)
    assert fast == drive(cfg, False, 1)
    assert all(isinstance(h, bytes) for h in fast[-1])


def test_the_fast_forward_goes_on_through_arrivals_prefills_and_finishes():
    node = Node("n", CONFIGS["roomy"])  # steps of 2.5 ms
    for i in range(8):
        node.submit(0.0, list(range(10 * i, 10 * i + 50)), 100 + 2 * i)
    node.advance(0.05)
    ff = node.ff
    assert ff is not None and len(ff.base) == 8  # every sequence decodes lazily
    node.submit(0.05, list(range(500, 560)), 200)  # an arrival: admitted and prefilled beside them
    node.advance(0.1)
    assert node.ff is ff and len(ff.base) == 9 and not node.finished
    node.advance(0.27)
    assert node.ff is ff and 0 < len(node.finished) < 8 and len(ff.base) == 9 - len(node.finished)  # in place


def test_the_cases_exercise_preemption_and_stretches():
    seqs = drive(CONFIGS["preempting"], True, 0)[0]
    assert any(s[3] for s in seqs)  # some sequence was preempted
    node = Node("n", CONFIGS["roomy"])
    for i in range(8):
        node.submit(0.0, list(range(10 * i, 10 * i + 50)), 200)
    node.advance(0.1)
    assert node.ff is not None  # mid-stretch


def test_next_event_never_passes_a_finish():
    rng = random.Random(3)
    node = Node("n", CONFIGS["preempting"])
    t = 0.0
    for _ in range(40):
        t += rng.expovariate(60)
        node.advance(t)
        node.submit(t, [rng.randrange(1, 99) for _ in range(rng.randint(10, 200))], rng.randint(1, 80))
        bound = node.next_event()
        node.advance(bound)
        assert all(s.last_token_at >= bound for s in node.finished if s.last_token_at > t)
        node.finished.clear()


@pytest.mark.parametrize("batch,context", [(1, 0), (7, 3100), (256, 2_000_000)])
def test_decode_seconds_is_what_step_cost_charges_a_decode_plan(batch, context):
    e = Engine(SimConfig(max_num_seqs=batch, max_model_len=16384))
    seqs = [e.submit(list(range(1, 2 + context // batch)), 5) for _ in range(batch)]
    while not all(s.output_len for s in seqs):
        e.complete(e.schedule())
    plan = e.schedule()
    assert all(n == 1 for _, n in plan) and len(plan) == batch
    assert e.step_cost(plan).duration == e.decode_seconds(batch, sum(s.num_computed for s in seqs),
                                                          max(s.num_computed for s in seqs))
