"""``precise-prefix-cache-scorer``: request keys, the event-fed index, scoring, speculation, metrics, and a
real simulator feeding the index over ZMQ. Cases follow llm-d-kv-cache v0.7.0's tests
(``token_processor_test.go``, ``in_memory_test.go``, ``kvblock_scorer_test.go``) and
llm-d-inference-scheduler v0.7.0's ``precise_prefix_cache_test.go``.
"""

from __future__ import annotations

import json
import time

import msgpack
import pytest

from kit import tokenizer
from kit.picker import Endpoint, InferenceRequest, load_picker_config
from kit.picker.framework import CycleState
from kit.picker.plugins.approx_prefix import PrefixMatch
from kit.picker.plugins.kv_index import (
    Entry,
    KVBlockIndex,
    TokenProcessor,
    apply_events,
    fnv1a64,
    parse_batch,
    parse_topic,
)
from kit.picker.plugins.tokenizer import tokenize
from kit.targets.processes import free_port
from tests.helpers import post

MODEL = "Qwen/Qwen3-0.6B"
HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def eps(*names: str) -> list[Endpoint]:
    return [Endpoint(name=n, url=f"http://{n}") for n in names]


def stored(hashes, parent, tokens, medium="GPU"):
    return ["BlockStored", hashes, parent, tokens, 4, None, medium, None]


def batch(*events) -> bytes:
    return msgpack.packb([1.0, list(events), 0], use_bin_type=True)


# ------------------------------------------------------------------------------------------ request keys
def test_fnv1a64_matches_the_reference_vectors():
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


def test_request_keys_are_chained_full_blocks_seeded_by_model_and_seed():
    tp = TokenProcessor(4, "42")
    tokens = list(range(1, 15))  # 3 full blocks and 2 tokens left over
    keys = tp.keys(tokens, MODEL)
    assert len(keys) == 3 and len(set(keys)) == 3
    assert tp.keys(tokens[8:12], MODEL, parent=keys[1]) == keys[2:]  # continues a chain from its parent
    assert tp.keys(tokens, "other-model") != keys
    assert TokenProcessor(4, "43").keys(tokens, MODEL) != keys
    assert TokenProcessor(4, "42").keys(tokens, MODEL) == keys  # deterministic across instances
    assert tp.keys(tokens[:3], MODEL) == []
    with pytest.raises(ValueError, match="blockSize must be greater than 0, got 0"):
        TokenProcessor(0)


# ---------------------------------------------------------------------------------------- index and events
def test_events_add_and_remove_endpoints_by_vllm_block_hash():
    tp, index = TokenProcessor(4), KVBlockIndex()
    tokens = list(range(100, 116))
    keys = tp.keys(tokens, MODEL)
    apply_events(index, tp, "a:1", MODEL, parse_batch(batch(stored([11, 12], None, tokens[:8]))))
    apply_events(index, tp, "a:1", MODEL, parse_batch(batch(stored([13, 14], 12, tokens[8:]))))  # parent 12
    apply_events(index, tp, "b:1", MODEL, parse_batch(batch(stored([21, 22], None, tokens[:8], medium="CPU"))))
    assert index.longest_prefix(keys) == {"a:1": 4.0, "b:1": 1.6}  # cpu blocks weigh 0.8
    assert index.longest_prefix(keys, ["b:1"]) == {"b:1": 1.6}
    apply_events(index, tp, "a:1", MODEL, parse_batch(batch(["BlockRemoved", [12], "GPU"])))
    assert index.longest_prefix(keys) == {"a:1": 1.0, "b:1": 1.6}  # a's chain breaks at block 1
    apply_events(index, tp, "c:1", MODEL, parse_batch(batch(stored([31], 999, tokens[:4]))))  # unknown parent
    assert all(e.pod != "c:1" for es in index.lookup(keys).values() for e in es)
    apply_events(index, tp, "a:1", MODEL, parse_batch(batch(["AllBlocksCleared"])))  # logged only (v0.7.0)
    assert index.longest_prefix(keys)["a:1"] == 1.0


def test_byte_hashes_use_their_last_eight_bytes_and_topics_name_endpoint_and_model():
    digest = bytes(range(32))
    ev = parse_batch(batch(stored([digest], None, [1, 2, 3, 4])))[0]
    assert ev[1] == [int.from_bytes(digest[-8:], "big")]
    assert parse_topic("kv@10.0.0.7:8000@Qwen/Qwen3-0.6B") == ("10.0.0.7:8000", "Qwen/Qwen3-0.6B")
    with pytest.raises(ValueError, match="unknown vLLM event tag"):
        parse_batch(batch(["Bogus"]))


def test_the_index_keeps_at_most_pod_cache_size_entries_per_key_and_size_keys():
    index = KVBlockIndex(size=2, pod_cache_size=2)
    index.add([1], [101], [Entry("a")])
    index.add([1], [101], [Entry("b")])
    index.add([1], [101], [Entry("c")])  # pushes out the least recently added entry
    assert [e.pod for e in index.lookup([101])[101]] == ["b", "c"]
    index.add([2], [102], [Entry("a")])
    index.add([3], [103], [Entry("a")])  # a third key pushes out the least recent
    assert len(index) == 2 and 101 not in index.lookup([101, 102, 103])


# ------------------------------------------------------------------------------------------------ scorer
def scorer_config(extra: str = "", clock=time.monotonic):
    cfg = load_picker_config(HEAD + f"""
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    tokenProcessorConfig: {{blockSize: 4}}
    kvEventsConfig: {{discoverPods: false}}
    indexerConfig: {{tokenizersPoolConfig: {{modelName: {MODEL}}}, kvBlockIndexConfig: {{enableMetrics: true}}}}
{extra}
""", clock=clock)
    return cfg, cfg.scheduler.plugins[0]


def feed(scorer, pod: str, text: str, blocks: int | None = None) -> None:
    tokens = tokenizer.encode(text)
    n = len(tokens) // 4 if blocks is None else blocks
    hashes = [hash((pod, i)) & (2**63 - 1) for i in range(n)]
    apply_events(scorer.index, scorer.processor, pod, MODEL, parse_batch(batch(stored(hashes, None, tokens[: 4 * n]))))


def test_scores_are_the_longest_held_prefix_normalised_min_max_as_v070():
    _, sc = scorer_config()
    text = "The quick brown fox jumps over the lazy dog near the river bank today."
    feed(sc, "a:1", text)
    feed(sc, "b:1", text, blocks=2)
    a, b, c = eps("a:1", "b:1", "c:1")
    req = InferenceRequest(model=MODEL, prompt=text + " And then?")
    state = CycleState()
    assert sc.score(state, req, [a, b, c]) == {a: 1.0, b: 0.0, c: 0.0}  # b holds 2 blocks: the minimum
    match = state[sc.name]
    assert isinstance(match, PrefixMatch) and match.servers["b:1"] == 2 and "c:1" not in match.servers
    assert sc.score(CycleState(), InferenceRequest(model=MODEL, prompt="unrelated words"), [a, b]) == {a: 0.0, b: 0.0}
    only_b = InferenceRequest(model=MODEL, prompt=text)
    feed(sc, "a:1", "zzz")  # a still holds the same blocks: ties score 1.0 each
    assert sc.score(CycleState(), only_b, [a, b])[a] == 1.0


def test_absolute_normalisation_is_held_blocks_over_prompt_blocks():
    _, sc = scorer_config("    scoreNormalization: absolute")
    text = "The quick brown fox jumps over the lazy dog near the river bank today."
    feed(sc, "b:1", text, blocks=2)
    a, b = eps("a:1", "b:1")
    req = InferenceRequest(model=MODEL, prompt=text)
    n = len(tokenizer.encode(text)) // 4
    assert sc.score(CycleState(), req, [a, b]) == {a: 0.0, b: 2 / n}  # min-max would give b 1.0


def test_chat_requests_are_tokenized_as_the_server_renders_them():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    req = InferenceRequest.from_body({"messages": messages}, MODEL)
    expected = tokenizer.encode(tokenizer.apply_chat_template(messages), allow_special=True)
    assert tokenize(req) == expected and tokenizer.IM_START in expected


def test_speculative_entries_cover_the_gap_and_expire_on_the_pickers_clock():
    now = [100.0]
    cfg, sc = scorer_config("    speculativeIndexing: true\n    speculativeTTL: 500ms", clock=lambda: now[0])
    sched = cfg.scheduler
    a, b = eps("a:1", "b:1")
    req = InferenceRequest(model=MODEL, prompt="a shared system prompt that is long enough for blocks", request_id="1")
    _, state = sched.schedule(req, [a, b])
    picked = state["picked"][0]
    sched.pre_request(state, req, picked)
    scores = sched.schedule(req, [a, b])[0].candidates
    assert {c["endpoint"]: c["scores"][sc.name] for c in scores}[picked.name] == 1.0
    now[0] += 0.6
    later = sched.schedule(req, [a, b])[0].candidates
    assert all(c["scores"][sc.name] == 0.0 for c in later)


def test_index_metrics_carry_upstreams_names():
    _, sc = scorer_config()
    feed(sc, "a:1", "one two three four five six seven eight nine ten")
    sc.score(CycleState(), InferenceRequest(model=MODEL, prompt="one two three four five six seven"), eps("a:1"))
    g = sc.gauges()
    assert g["kvcache_index_admissions_total"] > 0 and g["kvcache_index_lookup_requests_total"] == 1
    assert g["kvcache_index_lookup_hits_total"] > 0 and "kvcache_index_evictions_total" in g


def test_no_hit_lru_reads_the_precise_scorers_matches():
    cfg = load_picker_config(HEAD + f"""
plugins:
- type: precise-prefix-cache-scorer
  parameters: {{tokenProcessorConfig: {{blockSize: 4}}, kvEventsConfig: {{discoverPods: false}},
               indexerConfig: {{tokenizersPoolConfig: {{modelName: {MODEL}}}}}}}
- type: no-hit-lru-scorer
  parameters: {{prefixPluginName: precise-prefix-cache-scorer}}
""")
    sc = cfg.scheduler.plugins[0]
    feed(sc, "a:1", "alpha beta gamma delta epsilon zeta eta theta")
    warm = InferenceRequest(model=MODEL, prompt="alpha beta gamma delta epsilon zeta eta theta iota")
    decision, _ = cfg.scheduler.schedule(warm, eps("a:1", "b:1"))
    assert {c["scores"]["no-hit-lru-scorer"] for c in decision.candidates} == {0.5}  # warm: 0.5 everywhere


def test_loading_warns_where_upstream_would_refuse_or_ignore():
    cfg = load_picker_config(HEAD + """
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    indexerConfig: {tokenProcessorConfig: {blockSize: 5}}
    kvEventsConfig: {concurrency: 8}
""")
    text = "\n".join(cfg.warnings)
    assert "tokenizersPoolConfig.modelName: missing: upstream v0.7.0 refuses" in text
    assert "indexerConfig.tokenProcessorConfig: ignored, as in v0.7.0" in text
    assert "kvEventsConfig.concurrency" in text
    assert cfg.scheduler.plugins[0].subscriber is None  # loading opens no socket


# ------------------------------------------------------------------------------- real events over ZMQ
@pytest.mark.slow
def test_a_real_simulators_events_reach_the_index_and_follow_evictions(sim_factory):
    """The scorer binds its endpoint (central mode); a real ``kit sim`` connects and publishes; the index
    learns the blocks a request stored, and forgets them when the small cache evicts them."""
    port = free_port()
    cfg = load_picker_config(HEAD + f"""
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    tokenProcessorConfig: {{blockSize: 4}}
    kvEventsConfig: {{zmqEndpoint: "tcp://127.0.0.1:{port}", discoverPods: false}}
    indexerConfig: {{tokenizersPoolConfig: {{modelName: {MODEL}}}}}
""")
    sched, sc = cfg.scheduler, cfg.scheduler.plugins[0]
    sched.start()
    try:
        sim_port = free_port()
        sim = sim_factory("--num-gpu-blocks", "24", "--block-size", "4", "--max-model-len", "96",
                          "--kv-events-config", json.dumps({
                              "enable_kv_cache_events": True, "endpoint": f"tcp://127.0.0.1:{port}",
                              "topic": f"kv@127.0.0.1:{sim_port}@{MODEL}"}))
        ep = Endpoint(name=f"127.0.0.1:{sim_port}", url=sim.url)
        prompt = "You are a careful assistant. Answer briefly and cite the manual. How do I reset it?"
        req = InferenceRequest(model=MODEL, prompt=prompt)

        def score() -> float:
            return sc.score(CycleState(), req, [ep])[ep]

        assert score() == 0.0
        post(sim.url, "/v1/completions", {"prompt": prompt, "max_tokens": 4, "ignore_eos": True})
        deadline = time.monotonic() + 5
        while score() == 0.0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert score() == 1.0, "the index learned the blocks the simulator stored"
        for i in range(4):  # other prompts fill the 24-block cache and evict the first one's blocks
            post(sim.url, "/v1/completions", {"prompt": f"{i} tell me a long story about topic number {i} and more "
                                              "words to fill many blocks of the cache", "max_tokens": 4,
                                              "ignore_eos": True})
        keys = sc.processor.keys(tokenizer.encode(prompt), MODEL)
        deadline = time.monotonic() + 5
        while sc.index.lookup(keys[:1]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not sc.index.lookup(keys[:1]), "the first block's eviction reached the index"
    finally:
        sched.close()
    assert not sc.subscriber.thread.is_alive()
