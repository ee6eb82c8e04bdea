"""The approximate prefix-cache scorer and producer, against GIE v1.4.0's behaviour.

Cases marked "upstream" are ported from GIE v1.4.0
``pkg/epp/framework/plugins/scheduling/scorer/prefix/plugin_test.go``.
"""

from pathlib import Path

import pytest
import xxhash

from kit.errors import ConfigError
from kit.picker import InferenceRequest, load_picker_config, load_picker_file
from kit.picker.framework import CycleState, Endpoint
from kit.picker.plugins.approx_prefix import ApproxPrefixCacheProducer, PrefixIndex, PrefixParams, block_hashes
from kit.picker.plugins.scorers.prefix import PrefixCacheScorer
from kit.picker.registry import default
from kit.vllm_metrics import EndpointMetrics

ROOT = Path(__file__).resolve().parents[3]
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def ep(name, block_size=None, blocks=None, waiting=0.0):
    return Endpoint(name=name, url=f"http://{name}",
                    metrics=EndpointMetrics(block_size=block_size, num_gpu_blocks=blocks, waiting=waiting))


def request(text, model="Qwen/Qwen3-0.6B", salt=""):
    return InferenceRequest(model=model, prompt=text, cache_salt=salt)


def scorer(**params):
    return PrefixCacheScorer(params=PrefixParams.model_validate(params))


def score(s, req, eps):
    state = CycleState()
    return s.score(state, req, eps), state


def test_the_issue_reproduction_picks_the_endpoint_holding_the_prefix():
    """Weights queue 2 / KV 2 / prefix 3; A has 3 waiting, B none; A served a 100-character
    prompt sharing its first 64 characters with the new one. Full blocks only: A's prefix scores 1.0."""
    sched = load_picker_file(ROOT / "templates/scheduler/default-plugins.yaml").scheduler
    a, b = ep("a:8000"), ep("b:8000")
    shared = "s" * 64
    first = InferenceRequest(model="m", prompt=shared + "x" * 36, request_id="1")
    _, state = sched.schedule(first, [a])
    sched.pre_request(state, first, a)
    a.metrics.waiting = 3
    second = InferenceRequest(model="m", prompt=shared + "y" * 36, request_id="2")
    decision, _ = sched.schedule(second, [a, b])
    scores = {c["endpoint"]: c["scores"]["prefix-cache-scorer"] for c in decision.candidates}
    assert scores == {"a:8000": 1.0, "b:8000": 0.0}
    assert decision.picked == ["a:8000"]


def test_only_full_blocks_are_hashed():
    text = "a" * 64 + "b" * 64 + "tail"
    seed = xxhash.xxh64_intdigest(b"m")
    h0 = xxhash.xxh64_intdigest(b"a" * 64 + seed.to_bytes(8, "little"))
    h1 = xxhash.xxh64_intdigest(b"b" * 64 + h0.to_bytes(8, "little"))
    assert block_hashes(text, "m", 64, 256) == [h0, h1]


def test_short_prompts_and_truncation():
    assert block_hashes("x" * 63, "m", 64, 256) == []
    assert len(block_hashes("x" * 64 * 300, "m", 64, 256)) == 256
    assert block_hashes("same", "model-a", 2, 9) != block_hashes("same", "model-b", 2, 9)


def test_cache_salt_is_part_of_the_hash_seed():
    seed = xxhash.xxh64_intdigest(b"m" + b"tenant-1")
    h0 = xxhash.xxh64_intdigest(b"q" * 64 + seed.to_bytes(8, "little"))
    s = scorer(autoTune=False)
    a = ep("a:1")
    _, state = score(s, request("q" * 64, model="m", salt="tenant-1"), [a])
    assert state[s.name].hashes == [h0]
    s.pre_request(state, request("q" * 64, model="m", salt="tenant-1"), a)
    assert score(s, request("q" * 64, model="m", salt="tenant-1"), [a])[0] == {a: 1.0}
    assert score(s, request("q" * 64, model="m", salt="tenant-2"), [a])[0] == {a: 0.0}
    assert score(s, request("q" * 64, model="m"), [a])[0] == {a: 0.0}


def test_cache_salt_is_read_from_the_body():
    assert InferenceRequest.from_body({"prompt": "p", "cache_salt": "k"}, "m").cache_salt == "k"
    assert InferenceRequest.from_body({"prompt": "p", "cache_salt": 5}, "m").cache_salt == ""


def test_upstream_completion_sequence():
    """upstream: TestPrefixPluginCompletion (4-character blocks)."""
    s = scorer(autoTune=False, blockSizeTokens=1)
    e1, e2, e3 = ep("pod1"), ep("pod2"), ep("pod3")
    eps = [e1, e2, e3]

    got, state = score(s, request("aaaaaa", "test-model1"), eps)  # 6 characters: one full block
    assert len(state[s.name].hashes) == 1 and state[s.name].servers == {}
    assert got == {e1: 0.0, e2: 0.0, e3: 0.0}
    s.pre_request(state, request("aaaaaa", "test-model1"), e1)
    s.pre_request(state, request("aaaaaa", "test-model1"), e3)  # upstream: pod3 was the prefill pick

    got, state = score(s, request("bbbbbb", "test-model2"), eps)
    assert len(state[s.name].hashes) == 1 and state[s.name].servers == {}
    s.pre_request(state, request("bbbbbb", "test-model2"), e2)

    got, state = score(s, request("aaaabbbb", "test-model1"), eps)
    assert len(state[s.name].hashes) == 2 and state[s.name].servers == {"pod1": 1, "pod3": 1}
    assert got == {e1: 0.5, e2: 0.0, e3: 0.5}
    s.pre_request(state, request("aaaabbbb", "test-model1"), e1)

    got, state = score(s, request("aaaabbbb", "test-model-new"), eps)  # another model: no match
    assert len(state[s.name].hashes) == 2 and state[s.name].servers == {}
    s.pre_request(state, request("aaaabbbb", "test-model-new"), e1)

    got, state = score(s, request("aaaabbbbcccc", "test-model1"), eps)
    assert len(state[s.name].hashes) == 3 and len(state[s.name].servers) == 2
    assert got[e1] == pytest.approx(2 / 3) and got[e2] == 0.0


def _chat(*turns):
    roles = ["system", "user", "assistant", "user", "assistant", "user"]
    body = {"messages": [{"role": r, "content": c} for r, c in zip(roles, turns, strict=False)]}
    return InferenceRequest.from_body(body, "test-model1")


def test_upstream_chat_conversation_growth():
    """upstream: TestPrefixPluginChatCompletionsGrowth (8-character blocks)."""
    s = scorer(autoTune=False, blockSizeTokens=2)
    e1, e2 = ep("pod1"), ep("pod2")
    turns = ["You are a helpful assistant", "Hello, how are you?",
             "I'm doing well, thank you! How can I help you today?", "Can you explain how prefix caching works?",
             "Prefix caching is a technique where...", "That's very helpful, thank you!"]
    got, state = score(s, _chat(*turns[:2]), [e1, e2])
    first = len(state[s.name].hashes)
    assert first > 1 and got == {e1: 0.0, e2: 0.0}
    s.pre_request(state, _chat(*turns[:2]), e1)
    got, state = score(s, _chat(*turns[:4]), [e1, e2])
    second = len(state[s.name].hashes)
    assert second > first and 0 < got[e1] < 1 and got[e2] == 0.0
    s.pre_request(state, _chat(*turns[:4]), e1)
    got, state = score(s, _chat(*turns), [e1, e2])
    assert len(state[s.name].hashes) > second and got[e1] > 0.5 and got[e2] == 0.0


@pytest.mark.parametrize(("params", "expected"), [
    ({"blockSizeTokens": 0, "maxPrefixBlocksToMatch": 0, "lruCapacityPerServer": 0}, (16, 256, 31250)),
    ({"blockSizeTokens": -5, "maxPrefixBlocksToMatch": -10, "lruCapacityPerServer": -100}, (16, 256, 31250)),
    ({"blockSizeTokens": 32, "maxPrefixBlocksToMatch": -1, "lruCapacityPerServer": 50000}, (32, 256, 50000)),
    ({"blockSizeTokens": 64, "maxPrefixBlocksToMatch": 200, "lruCapacityPerServer": 30000}, (64, 200, 30000)),
], ids=["all-zero", "negative", "mixed", "all-valid"])
def test_upstream_invalid_values_fall_back_to_defaults(params, expected):
    """upstream: TestNew_InvalidConfigFallbacks; the kit also warns about each replaced value."""
    warnings = []
    s = default().create("prefix-cache-scorer", raw=params, warnings=warnings)
    p = s.producer.p
    assert (p.block_size_tokens, p.max_prefix_blocks_to_match, p.lru_capacity_per_server) == expected
    replaced = sum(1 for k, v in params.items() if v <= 0)
    assert len(warnings) == replaced and all("the default" in w for w in warnings)


@pytest.mark.parametrize(("params", "ok"), [
    ({"blockSizeTokens": 1}, True),
    ({"blockSize": 1, "blockSizeTokens": 1}, True),
    ({"blockSize": 1}, False),
], ids=["tokens", "both", "legacy-only"])
def test_upstream_legacy_block_size_validation(params, ok):
    """upstream: TestPrefixPluginValidation."""
    cfg = HEAD + "plugins:\n- type: prefix-cache-scorer\n  parameters: " + str(params).replace("'", "") + "\n"
    if ok:
        load_picker_config(cfg)
    else:
        with pytest.raises(ConfigError, match="blockSize: deprecated"):
            load_picker_config(cfg)


def test_upstream_auto_tune_enabled_uses_the_endpoint_block_size_and_capacity():
    """upstream: TestPrefixPluginAutoTune, enabled."""
    s = scorer(autoTune=True, blockSizeTokens=32, lruCapacityPerServer=1)
    pod = ep("pod-autotune", block_size=16, blocks=1000)
    _, state = score(s, request("a" * 128), [pod])
    assert len(state[s.name].hashes) == 2  # 64-character blocks
    s.pre_request(state, request("a" * 128), pod)
    assert s.index.capacity["pod-autotune"] == 1000 and len(s.index.lrus["pod-autotune"]) == 2


def test_upstream_auto_tune_disabled_uses_the_parameters():
    """upstream: TestPrefixPluginAutoTune, disabled."""
    s = scorer(autoTune=False, blockSizeTokens=8, lruCapacityPerServer=1)
    pod = ep("pod-autotune", block_size=16, blocks=1000)
    _, state = score(s, request("a" * 128), [pod])
    assert len(state[s.name].hashes) == 4  # 32-character blocks
    s.pre_request(state, request("a" * 128), pod)
    assert s.index.capacity["pod-autotune"] == 1 and len(s.index.lrus["pod-autotune"]) == 1


def test_auto_tune_reads_the_block_size_of_the_first_candidate_only():
    """GIE v1.4.0 looks at the first endpoint; if it reports no block size, the parameter applies."""
    s = scorer()
    silent, reporting = ep("a:1"), ep("b:1", block_size=4)
    _, state = score(s, request("z" * 256), [silent, reporting])
    assert len(state[s.name].hashes) == 4  # 16-token (64-character) blocks, not b's 4-token blocks
    _, state = score(s, request("z" * 256), [reporting, silent])
    assert len(state[s.name].hashes) == 16


def test_auto_tune_takes_the_capacity_from_num_gpu_blocks_alone():
    """The chosen endpoint's num_gpu_blocks sizes its LRU even without a block size."""
    s = scorer()
    a = ep("a:1", blocks=2)
    _, state = score(s, request("z" * 256), [a])
    s.pre_request(state, request("z" * 256), a)
    assert s.index.capacity["a:1"] == 2 and len(s.index.lrus["a:1"]) == 2


def test_pre_request_without_a_match_in_the_cycle_adds_nothing():
    s = scorer()
    s.pre_request(CycleState(), request("z" * 256), ep("a:1"))
    assert s.index.size == 0


def test_upstream_prepare_request_data_with_the_producer():
    """upstream: TestPrepareRequestData, as the v1.5 producer."""
    producer = ApproxPrefixCacheProducer(params=PrefixParams(blockSizeTokens=1))
    e1, e2 = ep("pod1"), ep("pod2")
    state = CycleState()
    producer.prepare_request_data(state, request("aaaabbbb", "test-model1"), [e1, e2])
    producer.pre_request(state, request("aaaabbbb", "test-model1"), e1)
    state = CycleState()
    producer.prepare_request_data(state, request("aaaacccc", "test-model1"), [e1, e2])
    match = state[producer.name]
    assert (match.servers.get("pod1"), match.servers.get("pod2"), len(match.hashes)) == (1, None, 2)


def test_a_configured_producer_feeds_the_scorer_and_its_parameters_apply():
    cfg = load_picker_config(HEAD + """
plugins:
- type: approx-prefix-cache-producer
  parameters: {blockSizeTokens: 1, autoTune: false}
- type: prefix-cache-scorer
  parameters: {blockSizeTokens: 64}
""")
    assert any("plugins[1].parameters: ignored" in w for w in cfg.warnings)
    sched = cfg.scheduler
    a, b = ep("a:1"), ep("b:1")
    req = InferenceRequest(model="m", prompt="abcdefgh")  # two 4-character blocks
    decision, state = sched.schedule(req, [a])
    sched.pre_request(state, req, a)
    decision, _ = sched.schedule(InferenceRequest(model="m", prompt="abcdxxxx"), [a, b])
    assert {c["endpoint"]: c["scores"]["prefix-cache-scorer"] for c in decision.candidates} == {"a:1": 0.5, "b:1": 0.0}
    assert sched.gauges()["inference_extension_prefix_indexer_size"] == 2.0  # counted once, by the producer


def test_matching_stops_at_the_first_block_nobody_holds():
    index = PrefixIndex()
    index.add("a", [1, 2, 3], 100)
    index.add("b", [1, 9, 3], 100)
    assert index.match([1, 2, 3]) == {"a": 3, "b": 2}  # walk continues while some endpoint holds the hash
    assert index.match([7, 1]) == {}


def test_lru_capacity_evicts_the_oldest_hashes_per_endpoint():
    index = PrefixIndex()
    index.add("a", [1, 2, 3], 3)
    index.add("a", [1], 3)  # refresh 1
    index.add("a", [4], 3)  # evicts 2, the least recently used
    assert set(index.lrus["a"]) == {1, 3, 4}
    assert 2 not in index.owners
    index.remove("a")
    assert index.size == 0 and not index.owners


def test_max_prefix_tokens_to_match_wins_over_blocks():
    s = scorer(autoTune=False, maxPrefixTokensToMatch=32)
    _, state = score(s, request("q" * 10_000), [ep("a:1")])
    assert len(state[s.name].hashes) == 2  # 32 tokens / 16 tokens per block


def test_chat_requests_hash_their_messages():
    body = {"messages": [{"role": "system", "content": "S" * 200}, {"role": "user", "content": "hi"}]}
    req = InferenceRequest.from_body(body, "m")
    assert req.prompt.startswith('[{"role":"system","content":"SSS')
