"""The approximate prefix-cache scorer: hashing, index, matching, LRU, auto-tune."""

import xxhash

from kit.picker.framework import CycleState, Endpoint, InferenceRequest
from kit.picker.plugins.scorers.prefix import PrefixCacheScorer, PrefixIndex, PrefixParams, block_hashes
from kit.vllm_metrics import EndpointMetrics


def ep(name, block_size=None, blocks=None):
    return Endpoint(name=name, url=f"http://{name}", metrics=EndpointMetrics(block_size=block_size,
                                                                             num_gpu_blocks=blocks))


def test_hash_chain_matches_the_upstream_recipe():
    text = "a" * 64 + "b" * 64 + "tail"
    seed = xxhash.xxh64_intdigest(b"m")
    h0 = xxhash.xxh64_intdigest(b"a" * 64 + seed.to_bytes(8, "little"))
    h1 = xxhash.xxh64_intdigest(b"b" * 64 + h0.to_bytes(8, "little"))
    h2 = xxhash.xxh64_intdigest(b"tail" + h1.to_bytes(8, "little"))
    assert block_hashes(text, "m", 64, 256) == [h0, h1, h2]


def test_short_prompts_and_truncation():
    assert block_hashes("x" * 63, "m", 64, 256) == []
    assert len(block_hashes("x" * 64 * 300, "m", 64, 256)) == 256
    assert block_hashes("same", "model-a", 2, 9) != block_hashes("same", "model-b", 2, 9)


def request(text):
    return InferenceRequest(model="Qwen/Qwen3-0.6B", prompt=text)


def test_score_is_the_share_of_blocks_already_sent_to_an_endpoint():
    scorer = PrefixCacheScorer(params=PrefixParams(autoTune=False, blockSizeTokens=4))  # 16-byte blocks
    a, b = ep("a:1"), ep("b:1")
    shared = "0123456789abcdef" * 3  # 3 blocks
    first = request(shared + "X" * 16)
    state = CycleState()
    assert scorer.score(state, first, [a, b]) == {a: 0.0, b: 0.0}
    scorer.pre_request(state, first, a)  # the pick teaches the index
    second = request(shared + "Y" * 16)
    got = scorer.score(CycleState(), second, [a, b])
    assert got == {a: 0.75, b: 0.0}  # 3 of 4 blocks match on a


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


def test_auto_tune_takes_block_size_and_capacity_from_cache_config_info():
    scorer = PrefixCacheScorer()  # autoTune on by default
    a = ep("a:1", block_size=4, blocks=2)
    req = request("z" * 64)  # 4 blocks of 4 tokens × 4 chars
    state = CycleState()
    scorer.score(state, req, [a])
    assert len(state[scorer.name]) == 4
    scorer.pre_request(state, req, a)
    assert scorer.index.capacity["a:1"] == 2 and len(scorer.index.lrus["a:1"]) == 2


def test_max_prefix_tokens_to_match_wins_over_blocks():
    scorer = PrefixCacheScorer(params=PrefixParams(autoTune=False, maxPrefixTokensToMatch=32))
    state = CycleState()
    scorer.score(state, request("q" * 10_000), [ep("a:1")])
    assert len(state[scorer.name]) == 2  # 32 tokens / 16 tokens per block


def test_chat_requests_hash_their_messages():
    body = {"messages": [{"role": "system", "content": "S" * 200}, {"role": "user", "content": "hi"}]}
    req = InferenceRequest.from_body(body, "m")
    assert req.prompt.startswith('[{"role":"system","content":"SSS')
