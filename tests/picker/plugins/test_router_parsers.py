"""llm-d-router v0.10.0's ``requestHandler`` parsers and its ``session-affinity-scorer``. Cases follow upstream's
handlers/parsers_test.go, the parsers' own tests (openai, anthropic, vllmhttp, passthrough) and
scorer/sessionaffinity's tests, rewritten."""

import base64

import pytest

from kit.picker import Endpoint, Unparseable, load_picker_config
from kit.picker.framework import CycleState, InferenceRequest
from kit.picker.plugins.router.parsers import (
    AnthropicParser,
    OpenAIParser,
    Parser,
    Parsers,
    PassthroughParser,
    VertexAIParser,
    VllmGRPCParser,
    VllmHTTPParser,
    matches,
)
from kit.picker.plugins.router.session import SessionAffinityScorer, SessionParams

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def named(cls: type[Parser], name: str, paths: tuple[str, ...] | None = None) -> Parser:
    p = cls(name)
    if paths is not None:
        p.paths = paths
    return p


# ---------------------------------------------------------------------------------------------- the registry
@pytest.mark.parametrize(("path", "want"), [
    ("/v1/chat/completions", "openai"),
    ("/v1/messages", "anthropic"),
    ("/google.cloud.aiplatform.v1beta1.PredictionService/ChatCompletions", "vertex"),
    ("/google.cloud.aiplatform.v1.PredictionService/ChatCompletions", "vertex"),
    ("/v1/messages/", "anthropic"),
    ("/unknown/path", None),
])
def test_a_path_goes_to_the_parser_claiming_its_suffix(path, want):
    registry = Parsers([named(OpenAIParser, "openai"), named(AnthropicParser, "anthropic"),
                        named(VertexAIParser, "vertex")])
    if want is None:
        with pytest.raises(ValueError, match="no parser registered matching path suffix for: /unknown/path"):
            registry.resolve(path)
    else:
        assert registry.resolve(path).name == want


def test_the_first_claim_wins_and_a_second_parser_of_a_type_is_skipped():
    custom = named(PassthroughParser, "custom", ("v1/chat/completions",))
    assert Parsers([named(OpenAIParser, "openai"), custom]).resolve("/v1/chat/completions").name == "openai"
    assert Parsers([custom, named(OpenAIParser, "openai")]).resolve("/v1/chat/completions").name == "custom"
    twice = Parsers([named(OpenAIParser, "a"), named(OpenAIParser, "b")])
    assert [p.name for p in twice.entries] == ["a"] and twice.skipped == ["b: a openai-parser is listed already"]


def test_passthrough_takes_what_no_earlier_parser_claims_and_ends_the_list():
    registry = Parsers([named(OpenAIParser, "openai"), named(PassthroughParser, "passthrough"),
                        named(AnthropicParser, "anthropic")])
    assert registry.resolve("/v1/completions").name == "openai"
    assert registry.resolve("/v1/messages").name == "passthrough"  # anthropic comes after the fallback
    assert registry.resolve("/anything").name == "passthrough"
    assert registry.skipped == ["anthropic: listed after the fallback parser passthrough"]


def test_suffix_matching_trims_slashes_and_spaces():
    assert matches("/v1/chat/completions/", "chat/completions")
    assert matches(" /v1/messages ", "/messages/")
    assert not matches("/v1/chat/completions/render", "chat/completions")


# ------------------------------------------------------------------------------------------------ the parsers
def test_openai_reads_prompts_and_chats_as_the_gateway_does():
    req = OpenAIParser().parse("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                        "cache_salt": "s"}, "m", {}, 0, "r1")
    assert req.messages == [{"role": "user", "content": "hi"}] and req.cache_salt == "s"
    assert req.path == "/v1/chat/completions" and req.request_id == "r1"
    assert OpenAIParser().parse("/v1/completions", {"prompt": "hello"}, "m", {}, 0, "").prompt == "hello"
    with pytest.raises(ValueError, match="JSON object"):
        OpenAIParser().parse("/v1/completions", ["not", "an", "object"], "m", {}, 0, "")


def test_anthropic_reads_the_system_prompt_and_messages_as_a_chat():
    body = {"model": "claude", "system": [{"type": "text", "text": "be brief"},
                                          {"type": "text", "text": "x-anthropic-billing-header: 1"}],
            "messages": [{"role": "user", "content": "hi"}]}
    req = AnthropicParser().parse("/v1/messages", body, "m", {}, 0, "")
    assert req.model == "claude"
    assert req.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="must have a messages list"):
        AnthropicParser().parse("/v1/messages", {"prompt": "x"}, "m", {}, 0, "")


def test_vllm_generate_takes_token_ids_as_the_requests_tokens():
    req = VllmHTTPParser().parse("/inference/v1/generate", {"token_ids": [1, 2, 3]}, "m", {}, 0, "")
    assert req.tokens == [1, 2, 3] and req.prompt == ""
    for body in ({}, {"token_ids": []}, {"token_ids": ["a"]}):
        with pytest.raises(ValueError, match="non-empty token_ids"):
            VllmHTTPParser().parse("/inference/v1/generate", body, "m", {}, 0, "")


def test_passthrough_reads_nothing_and_grpc_parsers_only_claim():
    req = PassthroughParser().parse("/x", {"prompt": "ignored"}, "m", {"h": "v"}, 0, "")
    assert (req.prompt, req.tokens, req.body, req.headers) == ("", None, None, {"h": "v"})
    for cls in (VllmGRPCParser, VertexAIParser):
        with pytest.raises(ValueError, match="HTTP/JSON only"):
            cls().parse(cls.paths[0], {}, "m", {}, 0, "")


# ----------------------------------------------------------------------------------------- through the loader
def test_the_default_parsers_and_a_refused_path():
    sched = load_picker_config(HEAD + "plugins:\n- type: random-picker\n", release="v0.10").scheduler
    assert sched.request({"messages": [{"role": "user", "content": "x"}]}, "/v1/chat/completions", "m").messages
    assert sched.request({"token_ids": [5, 6]}, "/inference/v1/generate", "m").tokens == [5, 6]
    with pytest.raises(Unparseable, match="no parser registered"):
        sched.request({"prompt": "x"}, "/v1/unknown", "m")
    with pytest.raises(Unparseable, match="must have a messages list"):
        sched.request({"prompt": "x"}, "/v1/messages", "m")


def test_a_configured_passthrough_parser_serves_every_path():
    sched = load_picker_config(HEAD + """
plugins:
- type: passthrough-parser
- type: random-picker
requestHandler:
  parsers:
  - pluginRef: passthrough-parser
""", release="v0.10").scheduler
    req = sched.request({"prompt": "x"}, "/v1/completions", "m")
    assert req.prompt == "" and req.path == "/v1/completions"


def test_the_guides_v07_reads_bodies_as_before():
    sched = load_picker_config(HEAD + "plugins:\n- type: random-picker\n").scheduler
    assert sched.request({"prompt": "x"}, "/v1/unknown", "m").prompt == "x"


# --------------------------------------------------------------------------------------------- session affinity
def eps(n: int = 3) -> list[Endpoint]:
    return [Endpoint(name=f"10.0.0.{i}:8000", url=f"http://10.0.0.{i}:8000") for i in range(1, n + 1)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_encoded_endpoint_header_pins_the_session():
    scorer = SessionAffinityScorer()
    a, b, c = eps()
    token = scorer.response_headers(InferenceRequest("m", ""), b)["x-session-token"]
    assert base64.b64decode(token).decode() == b.name
    req = InferenceRequest("m", "", headers={"X-Session-Token": token})
    assert scorer.score(CycleState(), req, [a, b, c]) == {a: 0.0, b: 1.0, c: 0.0}
    bad = InferenceRequest("m", "", headers={"x-session-token": "%%%"})
    assert set(scorer.score(CycleState(), bad, [a, b, c]).values()) == {0.0}


def test_a_session_id_binds_where_it_went_until_it_is_idle_too_long():
    scorer = SessionAffinityScorer(params=SessionParams.model_validate(
        {"strategy": "session_id", "sessionIdConfig": {"evictionTtlSeconds": 60, "evictionSweepSeconds": 5}}))
    clock = scorer.clock = Clock()
    a, b, c = eps()
    req = InferenceRequest("m", "", headers={"x-session-id": "s1"})
    state = CycleState()
    assert set(scorer.score(state, req, [a, b, c]).values()) == {0.0}  # unbound
    scorer.pre_request(state, req, c)
    clock.now = 30.0
    state = CycleState()
    assert scorer.score(state, req, [a, b, c]) == {a: 0.0, b: 0.0, c: 1.0}
    scorer.pre_request(state, req, c)  # used again: the idle time starts over
    clock.now = 85.0
    assert scorer.score(CycleState(), req, [a, b, c])[c] == 1.0
    clock.now = 200.0
    assert scorer.score(CycleState(), req, [a, b, c])[c] == 0.0
    assert scorer.response_headers(req, c) == {}


@pytest.mark.parametrize(("params", "words"), [
    ({"sessionIdConfig": {"sources": [{"header": "a", "attribute": "b"}]}}, "exactly one of header or attribute"),
    ({"sessionIdConfig": {"sources": [{}]}}, "exactly one of header or attribute"),
    ({"sessionIdConfig": {"evictionTtlSeconds": -1}}, "must be > 0"),
    ({"strategy": "cookie"}, "strategy"),
])
def test_session_parameters_are_checked(params, words):
    with pytest.raises(ValueError, match=words):
        SessionParams.model_validate(params)
