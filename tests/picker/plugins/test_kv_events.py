"""vLLM's KV-cache events, decoded from real bytes (tests/fixtures/kv_events: written by vLLM 0.32.0's own
``KVCacheManager`` and ``ZmqEventPublisher``, and the same batches in the older array encoding), applied to the
guide's index (v0.7: AllBlocksCleared only logged) and to llm-d-router v0.10.0's (the server is cleared), and
the precise producer scoring from ``req.tokens``. The index cases follow upstream's ``kvevents/pool_test.go``,
``event_dedup_filter_test.go`` and ``preciseprefixcache/producer_test.go`` at v0.10.0, rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from kit.picker import Endpoint, InferenceRequest, load_picker_config
from kit.picker.framework import CycleState
from kit.picker.plugins.kv_events import Cleared, Removed, Stored, decode_batch
from kit.picker.plugins.kv_index import KVBlockIndex, TokenProcessor, apply_events, parse_batch
from kit.picker.plugins.router.data import PREFIX_MATCH, key
from kit.picker.plugins.router.kv_index import Entry, Index, Pool, Tokens, realign
from kit.picker.plugins.router.precise import PrecisePrefixProducer, PrecisePrefixScorer, ProducerParams

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "kv_events"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
TOPIC = MANIFEST["topic"]  # kv@127.0.0.1:8001@Qwen/Qwen3-0.6B
POD, MODEL = "127.0.0.1:8001", "Qwen/Qwen3-0.6B"
PROMPT = [1000 + i for i in range(40)]  # request A of the generator: 2 full 16-token blocks and 8 tokens more
CHILD = PROMPT[:32] + [2000 + i for i in range(24)]  # request C: A's two blocks and one of its own
HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def payloads(form: str) -> list[bytes]:
    return [(FIXTURES / form / b["file"]).read_bytes() for b in MANIFEST["batches"]]


def eps(*names: str) -> list[Endpoint]:
    return [Endpoint(name=n, url=f"http://{n}") for n in names]


# ------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("form", ["vllm-0.32", "array"])
def test_both_encodings_of_real_vllm_batches_decode_to_what_vllm_recorded(form):
    for payload, recorded in zip(payloads(form), MANIFEST["batches"], strict=True):
        ts, events = decode_batch(payload)
        assert ts >= 1_700_000_000.0
        assert [type(e).__name__ for e in events] == [
            {"BlockStored": "Stored", "BlockRemoved": "Removed", "AllBlocksCleared": "Cleared"}[r["type"]]
            for r in recorded["events"]]
        for ev, want in zip(events, recorded["events"], strict=True):
            if isinstance(ev, Stored):
                assert (ev.hashes, ev.parent, ev.tokens, ev.block_size) == (
                    want["block_hashes"], want["parent"], want["token_ids"], want["block_size"])
                assert (ev.extra_keys, ev.group_idx, ev.kind, ev.medium) == (
                    want["extra_keys"], want["group_idx"], want["kind"], want["medium"])
            elif isinstance(ev, Removed):
                assert (ev.hashes, ev.medium, ev.group_idx) == (want["block_hashes"], want["medium"],
                                                                want["group_idx"])


def test_the_map_form_is_what_vllm_032_sends_and_the_array_form_reads_the_same():
    raw = msgpack.unpackb(payloads("vllm-0.32")[1], raw=False)
    event = raw[1][0]
    assert isinstance(event, dict) and event["type"] == "BlockStored"
    assert event["extra_keys"] == [["s1"], None] and event["kv_cache_spec_kind"] == "full_attention"
    assert isinstance(msgpack.unpackb(payloads("array")[1], raw=False)[1][0], list)
    assert [decode_batch(p)[1] for p in payloads("vllm-0.32")] == [decode_batch(p)[1] for p in payloads("array")]


def test_map_events_ignore_fields_they_do_not_know_and_read_absent_ones_as_none():
    ev = {"type": "BlockRemoved", "block_hashes": [b"\x00" * 24 + (7).to_bytes(8, "big")], "locality": "local"}
    assert decode_batch(msgpack.packb([1.0, [ev]]))[1] == [Removed([7], None, None)]
    assert decode_batch(msgpack.packb([1.0, [{"type": "AllBlocksCleared"}], None]))[1] == [Cleared()]


@pytest.mark.parametrize(("event", "words"), [
    ({"block_hashes": [1]}, 'missing the "type" tag'),
    ({"type": "Nope"}, "unknown vLLM event tag: Nope"),
    (["BlockRemoved", [1], "GPU", -1], "negative value"),
    (["BlockStored", [1], None, "tokens", 16], "token_ids is not an array"),
    (["BlockStored", [1], None, [1] * 16, 16, None, None, None, ["x"]], "extra_keys"),
    ("BlockStored", "neither an array nor a map"),
])
def test_a_malformed_event_makes_the_batch_unreadable(event, words):
    with pytest.raises(ValueError, match=words):
        decode_batch(msgpack.packb([1.0, [event]]))


# ------------------------------------------------------------------------------------- the guide's index (v0.7)
@pytest.mark.parametrize("form", ["vllm-0.32", "array"])
def test_the_v07_index_reads_real_batches_and_only_logs_all_blocks_cleared(form):
    tp, index = TokenProcessor(16), KVBlockIndex()
    batches = payloads(form)
    for payload in batches[:3]:
        apply_events(index, tp, POD, MODEL, parse_batch(payload))
    assert index.longest_prefix(tp.keys(PROMPT, MODEL)) == {POD: 2.0}
    assert index.longest_prefix(tp.keys(CHILD, MODEL)) == {POD: 3.0}
    cleared = parse_batch(batches[4])
    assert cleared == [("cleared",)]
    apply_events(index, tp, POD, MODEL, cleared)
    assert index.longest_prefix(tp.keys(PROMPT, MODEL)) == {POD: 2.0}  # v0.7 keeps the blocks
    apply_events(index, tp, POD, MODEL, parse_batch(batches[3]))
    assert index.longest_prefix(tp.keys(PROMPT, MODEL)) == {}  # the removals do evict


# ------------------------------------------------------------------------------ llm-d-router v0.10.0's index
def pool(block_size: int = 16) -> tuple[Pool, Index, Tokens]:
    index, tokens = Index(), Tokens(block_size, "test")
    return Pool(index, tokens), index, tokens


def held(index: Index, keys: list[int]) -> dict[int, set[Entry]]:
    found = index.lookup(keys, None)
    return {k: set(found.get(k, ())) for k in keys}


@pytest.mark.parametrize("form", ["vllm-0.32", "array"])
def test_the_v010_index_follows_real_batches_and_all_blocks_cleared_clears_that_server(form):
    p, index, tokens = pool()
    batches = [decode_batch(b)[1] for b in payloads(form)]
    for events in batches[:3]:
        p.apply(POD, MODEL, events)
    p.apply("other:8001", MODEL, batches[0])
    a, c = tokens.keys(PROMPT, MODEL), tokens.keys(CHILD, MODEL)
    assert len(a) == 2 and c[:2] == a
    assert all(len(e) == 2 for e in held(index, a).values())  # both servers hold A's blocks
    assert held(index, c[2:]) == {c[2]: {Entry(POD, "gpu", False, 0)}}
    salted = tokens.keys_with(PROMPT, MODEL, 0, [("s1",), None])
    assert salted != a and all(e == {Entry(POD, "gpu", False, 0)} for e in held(index, salted).values())

    p.apply(POD, MODEL, batches[3])  # A's, B's and C's blocks evicted; D's stored
    assert held(index, a) == {k: {Entry("other:8001", "gpu", False, 0)} for k in a}
    d = tokens.keys([3000 + i for i in range(160)], MODEL)
    assert all(held(index, d).values())
    p.apply(POD, MODEL, batches[4])  # AllBlocksCleared: nothing of this server is left; the other keeps its own
    assert not any(held(index, d).values())
    assert held(index, a) == {k: {Entry("other:8001", "gpu", False, 0)} for k in a}


def test_the_precise_producer_scores_real_events_from_the_requests_tokens():
    producer = PrecisePrefixProducer("precise", ProducerParams())
    for payload in payloads("vllm-0.32")[:3]:
        producer.receive(TOPIC, payload)
    a, b = eps(POD, "10.0.0.2:8000")
    state = CycleState()
    req = InferenceRequest(MODEL, "", tokens=CHILD + [7] * 8)  # 64 tokens: 4 blocks, 3 of them held
    producer.prepare_request_data(state, req, [a, b])
    infos = state[key(PREFIX_MATCH, "precise")]
    assert (infos[a.name].match_blocks, infos[a.name].total_blocks, infos[a.name].block_size_tokens) == (3, 4, 16)
    assert infos[b.name].match_blocks == 0 and infos[a.name].by_tier == {"gpu": 3}

    salted = InferenceRequest(MODEL, "", tokens=PROMPT, cache_salt="s1")
    state = CycleState()
    producer.prepare_request_data(state, salted, [a, b])
    assert state[key(PREFIX_MATCH, "precise")][a.name].match_blocks == 2  # B's salted blocks
    state = CycleState()
    producer.prepare_request_data(state, InferenceRequest(MODEL, "", tokens=PROMPT, cache_salt="s2"), [a, b])
    assert state[key(PREFIX_MATCH, "precise")][a.name].match_blocks == 0

    producer.receive(TOPIC, payloads("vllm-0.32")[4])  # AllBlocksCleared
    state = CycleState()
    producer.prepare_request_data(state, req, [a, b])
    assert state[key(PREFIX_MATCH, "precise")][a.name].match_blocks == 0


def test_a_64_token_index_reads_16_token_engine_blocks_many_to_one():
    producer = PrecisePrefixProducer("precise", ProducerParams.model_validate(
        {"tokenProcessorConfig": {"blockSizeTokens": 64}}))
    assert producer.block_size is None  # any engine block size is accepted
    p = payloads("vllm-0.32")
    for payload in (p[0], p[2]):  # A's two blocks (32 tokens: no full 64-token block), then C's third
        producer.receive(TOPIC, payload)
    assert len(producer.index) == 0  # an event covering no full index block is dropped, and so is its child
    ids = list(range(1, 129))
    engine = Stored([100 + i for i in range(8)], None, ids, 16)
    producer.pool.apply(POD, MODEL, [engine])
    state = CycleState()
    producer.prepare_request_data(state, InferenceRequest(MODEL, "", tokens=ids), eps(POD))
    assert state[key(PREFIX_MATCH, "precise")][POD].match_blocks == 2


def test_v010_configs_score_matched_over_total_with_the_precise_producer():
    cfg = load_picker_config(HEAD + """
plugins:
- type: precise-prefix-cache-producer
  parameters: {tokenProcessorConfig: {blockSizeTokens: 16}, kvEventsConfig: {discoverPods: false}}
- type: prefix-cache-scorer
  parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefix-cache-scorer}, {pluginRef: max-score-picker}]
""", release="v0.10")
    producer = next(p for p in cfg.scheduler.plugins if p.type == "precise-prefix-cache-producer")
    producer.in_process = True  # no ZMQ socket in this test
    for payload in payloads("vllm-0.32")[:3]:
        producer.receive(TOPIC, payload)
    a, b = eps(POD, "10.0.0.2:8000")
    req = InferenceRequest(MODEL, "", tokens=CHILD + [7] * 8)
    decision, _ = cfg.scheduler.schedule(req, [b, a])
    assert decision.picked == [a.name]


# ------------------------------------------------------------------------------------ upstream's pool cases
def tokens_1_to(n: int) -> list[int]:
    return list(range(1, n + 1))


def test_equal_block_sizes_map_engine_keys_one_to_one():
    p, index, tokens = pool(16)
    p.apply("pod", "m", [Stored([500, 501, 502, 503], None, tokens_1_to(64), 16)])
    keys = tokens.keys(tokens_1_to(64), "m")
    assert [index.request_key(k) for k in (500, 501, 502, 503)] == keys


def test_smaller_engine_blocks_map_many_to_one_and_evict_eagerly():
    p, index, tokens = pool(64)
    engine = list(range(100, 108))
    p.apply("pod-a", "m", [Stored(engine, None, tokens_1_to(128), 16)])
    keys = tokens.keys(tokens_1_to(128), "m")
    assert len(keys) == 2 and all(held(index, keys).values())
    assert [index.request_key(k) for k in engine] == [keys[i // 4] for i in range(8)]
    p.apply("pod-a", "m", [Removed([100])])
    assert held(index, keys) == {keys[0]: set(), keys[1]: {Entry("pod-a")}}
    assert index.request_key(100) is None


def test_larger_engine_blocks_map_one_to_many():
    p, index, tokens = pool(64)
    p.apply("pod-b", "m", [Stored([200, 201], None, tokens_1_to(256), 128)])
    keys = tokens.keys(tokens_1_to(256), "m")
    assert len(keys) == 4
    assert (index.request_key(200), index.request_key(201)) == (keys[1], keys[3])  # the last key each maps to
    p.apply("pod-b", "m", [Removed([200])])
    assert [bool(v) for v in held(index, keys).values()] == [False, False, True, True]


def test_engines_of_different_block_sizes_share_the_index_keys():
    p, index, tokens = pool(64)
    p.apply("pod-a", "m", [Stored(list(range(100, 108)), None, tokens_1_to(128), 16)])
    p.apply("pod-b", "m", [Stored(list(range(200, 204)), None, tokens_1_to(128), 32)])
    assert all({e.pod for e in v} == {"pod-a", "pod-b"}
               for v in held(index, tokens.keys(tokens_1_to(128), "m")).values())


def test_unknown_removals_and_partial_blocks_are_skipped():
    p, index, _ = pool(64)
    p.apply("pod-x", "m", [Removed([999999])])
    p.apply("pod-partial", "m", [Stored([400, 401, 402], None, tokens_1_to(48), 16)])
    assert len(index) == 0


def test_realigning_extra_keys():
    assert realign([("a",), None], 2) == [("a",), None]
    assert realign([None], 2) == [None, None]
    assert realign([("img",)], 2) == [("img",), ("img",)]
    assert realign([None, None, None, None], 1) == [None]
    assert realign([("a",), None, ("b",), None], 2) == [("a",), ("b",)]
    assert realign([("a",), ("b",)], 1) == [("a", "b")]
    assert realign([("a",)], 0) == [("a",)]


def test_salted_engine_blocks_key_differently_one_to_many():
    p, index, tokens = pool(16)
    p.apply("pod", "m", [Stored([1], None, tokens_1_to(32), 32, extra_keys=[["salt"]])])
    salted = tokens.keys_with(tokens_1_to(32), "m", 0, [("salt",), ("salt",)])
    assert all(held(index, salted).values()) and not any(held(index, tokens.keys(tokens_1_to(32), "m")).values())


def test_an_offload_adds_a_tier_and_each_tier_is_evicted_on_its_own():
    p, index, tokens = pool(16)
    engine, keys = [700, 701, 702, 703], tokens.keys(tokens_1_to(64), "m")
    p.apply("pod-a", "m", [Stored(engine, None, tokens_1_to(64), 16)])
    p.apply("pod-a", "m", [Stored(engine, None, [], 16, medium="CPU")])  # the same blocks, offloaded
    assert all({e.tier for e in v} == {"gpu", "cpu"} for v in held(index, keys).values())
    p.apply("pod-a", "m", [Removed(engine)])
    assert all({e.tier for e in v} == {"cpu"} for v in held(index, keys).values())
    assert index.request_key(700) is not None  # the mapping survives while the cpu copy lives
    p.apply("pod-a", "m", [Removed(engine, "CPU")])
    assert not any(held(index, keys).values()) and index.request_key(700) is None
    p.apply("pod-x", "m", [Stored([900, 901], None, [], 16, medium="CPU")])  # unknown keys: nothing happens
    assert len(index) == 0


@pytest.mark.parametrize(("kind", "indexed"), [
    ("full_attention", True), ("mla_attention", True), ("sink_full_attention", True),
    ("sliding_window", False), ("sliding_window_mla", False), ("mamba", False), ("chunked_local_attention", False),
    ("encoder_only_attention", False), ("cross_attention", False), ("unknown", False), (None, False),
])
def test_only_full_attention_groups_are_indexed(kind, indexed):
    p, index, tokens = pool(16)
    p.apply("pod-hma", "m", [Stored(list(range(900, 904)), None, tokens_1_to(64), 16, group_idx=0, kind=kind)])
    got = held(index, tokens.keys(tokens_1_to(64), "m"))
    if indexed:
        assert all(v == {Entry("pod-hma", "gpu", False, 0)} for v in got.values())
    else:
        assert not any(got.values())


def test_a_group_event_whose_tokens_and_hashes_disagree_is_dropped_before_its_parent_is_looked_up():
    p, index, _ = pool(16)
    p.apply("pod-hma", "m", [Stored([950], 949, tokens_1_to(64), 16, group_idx=0, kind="full_attention")])
    assert index.request_key(950) is None and p.skipped == 1


def test_removals_for_a_rejected_group_are_ignored_and_groups_evict_separately():
    p, index, tokens = pool(16)
    p.apply("pod-hma", "m", [Stored([980], None, tokens_1_to(16), 16, group_idx=1, kind="sliding_window_mla")])
    p.apply("pod-hma", "m", [Removed([980], None, 1)])
    assert p.skipped == 2
    keys, engine = tokens.keys(tokens_1_to(64), "m"), [850, 851, 852, 853]
    for g in (0, 1):
        p.apply("pod-hma", "m", [Stored(engine, None, tokens_1_to(64), 16, group_idx=g, kind="full_attention")])
    assert all({e.group for e in v} == {0, 1} for v in held(index, keys).values())
    p.apply("pod-hma", "m", [Removed(engine, None, 0)])
    assert all({e.group for e in v} == {1} for v in held(index, keys).values())


def test_duplicate_stores_need_as_many_removals_and_clearing_resets_the_counts():
    p, index, tokens = pool(16)
    engine, keys = [800, 801, 802, 803], tokens.keys(tokens_1_to(64), "m")
    store = Stored(engine, None, tokens_1_to(64), 16)
    p.apply("pod-dup", "m", [store, store])
    p.apply("pod-dup", "m", [Removed(engine)])
    assert all(held(index, keys).values())  # the first of two removals is held back
    p.apply("pod-dup", "m", [Removed(engine)])
    assert not any(held(index, keys).values()) and index.request_key(800) is None

    p.apply("pod-dup", "m", [store, store, Cleared(), store, Removed(engine)])
    assert not any(held(index, keys).values())  # after the clear one store needs one removal


def test_duplicate_counts_are_per_tier_and_group_and_server():
    p, index, tokens = pool(16)
    engine, keys = [900, 901, 902, 903], tokens.keys(tokens_1_to(64), "m")
    p.apply("pod", "m", [Stored(engine, None, tokens_1_to(64), 16)])
    cpu = Stored(engine, None, [], 16, medium="CPU")
    p.apply("pod", "m", [cpu, cpu, Removed(engine, "CPU")])
    assert all({e.tier for e in v} == {"gpu", "cpu"} for v in held(index, keys).values())
    p.apply("pod", "m", [Removed(engine, "CPU")])
    assert all({e.tier for e in v} == {"gpu"} for v in held(index, keys).values())
    p.apply("other", "m", [Removed(engine)])  # another server's removal does not touch this one's counts
    assert all(held(index, keys).values())


# --------------------------------------------------------------------------------- upstream's producer cases
def test_the_producer_needs_tokens_and_writes_nothing_without_them():
    producer = PrecisePrefixProducer("p")
    state = CycleState()
    producer.prepare_request_data(state, InferenceRequest("m", "no tokens here"), eps("a:1"))
    producer.prepare_request_data(state, InferenceRequest("m", "", tokens=[]), eps("a:1"))
    producer.prepare_request_data(state, InferenceRequest("m", "", tokens=[1, 2, 3]), eps("a:1"))  # < one block
    assert key(PREFIX_MATCH, "p") not in state


def test_the_producer_counts_cached_blocks_by_tier():
    producer = PrecisePrefixProducer("p")
    ids = tokens_1_to(32)
    producer.pool.apply("10.0.0.1:8080", "m", [Stored([1, 2], None, ids, 16)])
    producer.pool.apply("10.0.0.1:8080", "m", [Stored([1], None, [], 16, medium="CPU")])
    a, b = eps("10.0.0.1:8080", "10.0.0.2:8080")
    state = CycleState()
    producer.prepare_request_data(state, InferenceRequest("m", "", tokens=ids), [a, b])
    info = state[key(PREFIX_MATCH, "p")]
    assert (info[a.name].cached, info[a.name].by_tier) == (2, {"gpu": 2, "cpu": 1})
    assert (info[b.name].cached, info[b.name].by_tier, info[b.name].match_blocks) == (0, {}, 0)


@pytest.mark.parametrize("params", [{"blockSize": 64}, {"blockSizeTokens": 64}])
def test_the_block_size_flows_from_either_field(params):
    producer = PrecisePrefixProducer("p", ProducerParams.model_validate({"tokenProcessorConfig": params}))
    state = CycleState()
    producer.prepare_request_data(state, InferenceRequest("m", "", tokens=tokens_1_to(64)), eps("a:1"))
    info = state[key(PREFIX_MATCH, "p")]["a:1"]
    assert (info.block_size_tokens, info.total_blocks) == (64, 1)


@pytest.mark.parametrize(("params", "words"), [
    ({"indexerConfig": {"tokenizersPoolConfig": {"modelName": "x"}}}, "tokenizersPoolConfig is not supported"),
    ({"kvEventsConfig": {"engineType": "unsupported"}}, "engineType"),
    ({"tokenProcessorConfig": {"blockSizeTokens": -1}}, "blockSizeTokens must be greater than 0"),
    ({"speculativeTTL": "soon"}, "duration"),
])
def test_the_producer_refuses_bad_parameters(params, words):
    with pytest.raises(ValueError, match=words):
        ProducerParams.model_validate(params)


def test_the_deprecated_scorer_owns_a_producer_or_reads_a_configured_one():
    own = PrecisePrefixScorer("precise-prefix-cache-scorer")
    own.producer.pool.apply("a:1", "m", [Stored([1, 2], None, tokens_1_to(32), 16)])
    a, b = eps("a:1", "b:1")
    state = CycleState()
    req = InferenceRequest("m", "", tokens=tokens_1_to(64))
    own.prepare_request_data(state, req, [a, b])
    assert own.score(state, req, [a, b]) == {a: 0.5, b: 0.0}  # matched / total, not min-max

    cfg = load_picker_config(HEAD + """
plugins:
- type: precise-prefix-cache-producer
  parameters: {kvEventsConfig: {discoverPods: false}}
- type: precise-prefix-cache-scorer
  parameters: {tokenProcessorConfig: {blockSizeTokens: 32}}
""", release="v0.10")
    scorer = next(p for p in cfg.scheduler.plugins if p.type == "precise-prefix-cache-scorer")
    assert scorer.producer is None and any("DEPRECATION" in w for w in cfg.warnings)
