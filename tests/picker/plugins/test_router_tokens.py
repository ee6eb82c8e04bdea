"""``token-producer`` (llm-d-router v0.10.0): the estimate backend (cases after upstream's estimate_test.go) and
the render backend with an injected ``post`` (after vllm_http_test.go), and the approximate producer's token
hashing (after prefixhash/hashing_test.go and approximateprefix/plugin_test.go), rewritten."""

import asyncio
import base64
import logging
import struct
import zlib

import pytest
import xxhash

from kit import tokenizer
from kit.picker import Endpoint, InferenceRequest, load_picker_config
from kit.picker.framework import CycleState
from kit.picker.plugins.router.approx import ApproxParams, ApproxPrefixProducer, token_hashes
from kit.picker.plugins.router.data import PREFIX_MATCH, key
from kit.picker.plugins.router.tokens import (
    EstimateParams,
    Estimator,
    TokenProducer,
    TokenProducerParams,
    estimate,
    pack,
)
from kit.vllm_metrics import EndpointMetrics

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def png(width: int, height: int) -> str:
    """A data URL of a PNG of that size (its header is what the estimate reads)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()


def chat(*parts: dict, tools: list | None = None, headers: dict | None = None) -> InferenceRequest:
    messages = [{"role": "user", "content": list(parts)}]
    body = {"messages": messages, **({"tools": tools} if tools else {})}
    return InferenceRequest.from_body(body, "m", headers=headers or {})


def completion(prompt) -> InferenceRequest:
    return InferenceRequest.from_body({"prompt": prompt}, "m")


# ---------------------------------------------------------------------------------------------- estimate
def test_packing_keeps_the_bytes():
    raw = b"the quick brown fox jumps over!!"
    assert struct.pack(f"<{len(raw) // 4}I", *pack(raw)) == raw
    assert pack(b"abcde") == [int.from_bytes(b"abcd", "little"), int.from_bytes(b"e\0\0\0", "little")]


def test_a_completion_is_its_bytes_and_token_ids_pass_through():
    est = Estimator(None)
    assert estimate(completion("hello world"), est) == estimate(completion("hello world"), est)
    assert estimate(completion("hello world"), est) != estimate(completion("hello there"), est)
    assert estimate(completion([11, 22, 33]), est) == [11, 22, 33]
    assert estimate(completion(["only one"]), est) == pack(b"only one")
    assert estimate(completion(["two", "prompts"]), est) is None  # kit-only: several prompts are not tokenized


def test_a_chat_is_tools_then_each_roles_and_text():
    est = Estimator(None)
    tools = [{"type": "function", "function": {"name": "f", "b": 1, "a": "<x>"}}]
    req = chat({"type": "text", "text": "hi"}, tools=tools)
    expected = b'[{"function":{"a":"\\u003cx\\u003e","b":1,"name":"f"},"type":"function"}]' + b"user" + b"hi"
    assert estimate(req, est) == pack(expected)
    plain = InferenceRequest.from_body({"messages": [{"role": "system", "content": "be brief"},
                                                     {"role": "user", "content": "hi"}]}, "m")
    assert estimate(plain, est) == pack(b"systembe briefuserhi")


def test_an_image_is_a_run_of_its_hash_aligned_to_a_token():
    url = png(64, 32)
    tokens = estimate(chat({"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": url}}),
                      Estimator(None))
    prefix = pack(b"userdescribe")
    assert tokens[:len(prefix)] == prefix
    assert tokens[len(prefix):] == [xxhash.xxh64_intdigest(url.encode()) & 0xFFFFFFFF] * (64 * 32 // 1024)


@pytest.mark.parametrize(("settings", "url", "count"), [
    (None, "https://example.com/a.png", 640 * 360 // 1024),
    ({"image": {"mode": "static", "static": {"staticToken": 7}}}, png(64, 32), 7),
    ({"image": {"dynamic": {"factor": 2048}}}, "https://example.com/a.png", 640 * 360 // 2048),
    ({"image": {"defaultResolution": {"width": 1024, "height": 1024}}}, "https://example.com/a.png", 1024),
], ids=["default resolution", "static", "custom factor", "custom default resolution"])
def test_image_placeholder_counts(settings, url, count):
    est = Estimator(EstimateParams.model_validate(settings) if settings else None)
    assert est.image(url) == count


@pytest.mark.parametrize(("settings", "headers", "count"), [
    (None, {}, 10 * 2 * 225),
    ({"video": {"tokensPerFrame": {"mode": "static", "static": {"numTokensPerFrame": 100}}}}, {}, 20 * 100),
    ({"video": {"defaultDuration": 8, "frames": {"mode": "sampled", "sampled": {"sampleFPS": 2}},
                "tokensPerFrame": {"mode": "static", "static": {"numTokensPerFrame": 10}}}}, {}, 160),
    ({"video": {"defaultDuration": 10, "frames": {"mode": "strided", "maxFrames": 16, "strided": {
        "defaultSourceFPS": 24, "frameStride": 4}}, "tokensPerFrame": {"mode": "static", "static": {
            "numTokensPerFrame": 100}}}}, {}, 1600),
    ({"video": {"defaultDuration": 1, "frames": {"mode": "strided", "minFrames": 8, "strided": {
        "defaultSourceFPS": 24, "frameStride": 4}}, "tokensPerFrame": {"mode": "static", "static": {
            "numTokensPerFrame": 100}}}}, {}, 800),
    ({"video": {"maxVideoTokens": 500}}, {}, 500),
    (None, {"x-llm-d-video-duration-seconds": "4", "x-llm-d-video-resolution": "320X180"}, 4 * 2 * (320 * 180 // 1024)),
], ids=["default", "static per frame", "sampled", "strided capped", "strided floored", "max tokens", "headers"])
def test_video_placeholder_counts(settings, headers, count):
    est = Estimator(EstimateParams.model_validate(settings) if settings else None)
    assert est.video(headers) == count


# ------------------------------------------------------------------------------------------------ render
class Render:
    """A render endpoint in process: records each call; answers as vLLM 0.32's /render routes do."""

    def __init__(self, fail: Exception | None = None, answer: object = None):
        self.calls: list[tuple[str, dict, float]] = []
        self.fail, self.answer = fail, answer

    async def __call__(self, url: str, body: dict, timeout: float) -> object:
        self.calls.append((url, body, timeout))
        if self.fail is not None:
            raise self.fail
        if self.answer is not None:
            return self.answer
        if url.endswith("/v1/chat/completions/render"):
            return {"token_ids": tokenizer.encode(tokenizer.apply_chat_template(body["messages"]),
                                                  allow_special=True)}
        return [{"token_ids": tokenizer.encode(body["prompt"])}]


def producer(**params) -> TokenProducer:
    return TokenProducer(params=TokenProducerParams.model_validate(params))


def test_a_completion_renders_at_the_completions_route_with_the_model_name():
    render = Render()
    p = producer(modelName="base", vllm={"url": "http://r:8001/", "timeout": "2s"})
    req = InferenceRequest.from_body({"model": "served", "prompt": "hello there", "max_tokens": 3}, "served")
    assert asyncio.run(p.produce(req, render)) is True
    assert render.calls == [("http://r:8001/v1/completions/render",
                             {"model": "base", "prompt": "hello there", "max_tokens": 3}, 2.0)]
    assert req.tokens == tokenizer.encode("hello there")


def test_a_chat_renders_at_the_chat_route_and_parts_get_the_longer_timeout():
    render = Render()
    p = producer(modelName="base")
    text = InferenceRequest.from_body({"messages": [{"role": "user", "content": "hi"}]}, "m")
    parts = InferenceRequest.from_body({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
                                       "m")
    asyncio.run(p.produce(text, render))
    asyncio.run(p.produce(parts, render))
    assert [(u, t) for u, _, t in render.calls] == [("http://localhost:8000/v1/chat/completions/render", 5.0),
                                                    ("http://localhost:8000/v1/chat/completions/render", 30.0)]
    assert text.tokens == tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]),
                                           allow_special=True)


def test_the_gateways_render_url_applies_when_the_config_sets_none():
    render = Render()
    asyncio.run(producer(modelName="m").produce(completion("x y"), render, "http://127.0.0.1:8101"))
    asyncio.run(producer(modelName="m", vllm={"url": "http://set:1"}).produce(completion("x y"), render,
                                                                              "http://127.0.0.1:8101"))
    assert [u for u, _, _ in render.calls] == ["http://127.0.0.1:8101/v1/completions/render",
                                               "http://set:1/v1/completions/render"]


def test_tokens_already_set_or_pre_tokenized_prompts_need_no_render():
    render = Render()
    req = completion("x")
    req.tokens = [1, 2]
    asyncio.run(producer(modelName="m").produce(req, render))
    ids = completion([5, 6, 7])
    asyncio.run(producer(modelName="m").produce(ids, render))
    assert render.calls == [] and req.tokens == [1, 2] and ids.tokens == [5, 6, 7]


@pytest.mark.parametrize("render", [Render(fail=TimeoutError()), Render(fail=ConnectionError("refused")),
                                    Render(answer={"error": "bad"}), Render(answer=[{"token_ids": "x"}])],
                         ids=["timeout", "refused", "no token ids", "not a list of ids"])
def test_a_failed_render_leaves_the_tokens_unset_counts_and_logs(render, caplog):
    p = producer(modelName="m")
    req = completion("hello")
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(p.produce(req, render)) is False
        asyncio.run(p.produce(completion("again"), render))
    assert req.tokens is None and p.failures == 2
    assert p.gauges() == {"kit_token_producer_render_failures": 2.0}
    assert len([r for r in caplog.records if "rendering at http://localhost:8000 failed" in r.message]) == 1


def test_after_a_failed_render_the_producers_behind_it_skip_the_request():
    cfg = load_picker_config(HEAD + "plugins:\n- type: token-producer\n  parameters: {modelName: m}\n"
                             "- type: approx-prefix-cache-producer\n- type: prefix-cache-scorer\n", release="v0.10")
    sched = cfg.scheduler
    assert sched.renders
    eps = [Endpoint("a:1", "http://a:1", metrics=EndpointMetrics(block_size=64))]
    req = sched.request({"prompt": "hello " * 100}, "/v1/completions", "m")
    asyncio.run(sched.produce(req, Render(fail=TimeoutError())))
    _, state = sched.schedule(req, eps)
    assert req.produce_failed and key(PREFIX_MATCH) not in state


@pytest.mark.parametrize(("params", "words"), [
    ({"modelName": "m", "estimate": {}}, "only one of 'estimate', 'vllm', or 'udsTokenizerConfig' may be set"),
    ({"vllm": {"url": "http://x"}}, "modelName: must be specified"),
    ({"modelName": "m", "udsTokenizerConfig": {"socketFile": "/tmp/s"}}, "only one of"),
    ({"modelName": "m", "vllm": {"timeout": "soon"}}, "expected a duration"),
    ({"estimate": {"image": {"mode": "pixels"}}}, "mode"),
])
def test_token_producer_parameters_are_checked(params, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("'", ".")):
        TokenProducerParams.model_validate(params)


def test_no_backend_is_the_estimate_and_the_legacy_name_works():
    assert producer().backend == "estimate" and not producer().renders
    cfg = load_picker_config(HEAD + "plugins:\n- type: tokenizer\n  parameters: {modelName: m}\n", release="v0.10")
    legacy = next(p for p in cfg.scheduler.plugins if p.type == "tokenizer")
    assert legacy.renders and any("DEPRECATION warning" in w for w in cfg.warnings)


def test_the_estimate_backend_fills_tokens_in_the_cycle():
    req = completion("hello world")
    producer().prepare_request_data(CycleState(), req, [])
    assert req.tokens == pack(b"hello world")


# ------------------------------------------------------------------------------------- approximate hashing
def test_blocks_include_the_trailing_partial_one_and_chain_from_the_model_and_salt():
    ids = list(range(1, 11))
    hashes = token_hashes(ids, "m", 4, 2048)
    assert len(hashes) == 3
    root = xxhash.xxh64_intdigest(b"m")
    first = xxhash.xxh64_intdigest(struct.pack("<Q", xxhash.xxh64_intdigest(struct.pack("<4I", 1, 2, 3, 4)))
                                   + struct.pack("<Q", root))
    assert hashes[0] == first
    assert token_hashes(ids, "m" + "salt", 4, 2048)[0] != first
    assert token_hashes(ids, "other", 4, 2048)[0] != first
    assert token_hashes(ids, "m", 4, 2) == hashes[:2]
    assert token_hashes([], "m", 4, 2048) == []


def eps_with(block_size: int | None = None, blocks: int | None = None, n: int = 2) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i}:8000", "", metrics=EndpointMetrics(block_size=block_size, num_gpu_blocks=blocks))
            for i in range(n)]


@pytest.mark.parametrize(("params", "reported", "size", "blocks"), [
    ({}, None, 64, 131072 // 64),
    ({}, 128, 128, 131072 // 128),
    ({"autoTune": False}, 128, 64, 131072 // 64),  # 16, raised to the floor of 64
    ({"autoTune": False, "blockSizeTokens": 256}, None, 256, 512),
    ({"maxPrefixTokensToMatch": 0}, None, 64, 2048),
    ({"maxPrefixTokensToMatch": 0, "maxPrefixBlocksToMatch": 0}, None, 64, 1 << 62),
    ({"blockSize": 96}, None, 96, 131072 // 96),  # deprecated, taken as blockSizeTokens
], ids=["defaults", "auto-tuned", "auto-tune off", "configured", "block cap", "no cap", "deprecated blockSize"])
def test_block_size_floor_and_caps(params, reported, size, blocks):
    p = ApproxPrefixProducer(params=ApproxParams.model_validate(params))
    assert p.block_tokens(eps_with(reported)) == size
    assert p.max_blocks(size) == blocks


def test_the_approx_producer_matches_where_it_sent_the_blocks():
    p = ApproxPrefixProducer()
    a, b = eps_with(64, 500)
    first = InferenceRequest("m", "", tokens=list(range(200)))
    state = CycleState()
    p.prepare_request_data(state, first, [a, b])
    assert state[key(PREFIX_MATCH)] == {a.name: p_info(0, 4), b.name: p_info(0, 4)}
    p.pre_request(state, first, a)
    assert p.index.capacity[a.name] == 500  # autoTune: the endpoint's num_gpu_blocks
    second = InferenceRequest("m", "", tokens=list(range(150)) + [9999] * 50)
    state = CycleState()
    p.prepare_request_data(state, second, [a, b])
    assert state[key(PREFIX_MATCH)][a.name].match_blocks == 2 and state[key(PREFIX_MATCH)][b.name].match_blocks == 0
    assert p.gauges()["llm_d_epp_prefix_indexer_size"] == 4


def p_info(matched: int, total: int):
    from kit.picker.plugins.router.data import MatchInfo

    return MatchInfo(matched, total, 64)


def test_without_tokens_nothing_is_hashed():
    p = ApproxPrefixProducer()
    a, b = eps_with(64)
    state = CycleState()
    p.prepare_request_data(state, InferenceRequest("m", "text"), [a, b])
    assert all(i.total_blocks == 0 for i in state[key(PREFIX_MATCH)].values())
