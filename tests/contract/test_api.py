"""The OpenAI and vLLM routes: answers' shapes, streaming, errors, tokenization and the two render routes.

Every expectation here was read from a real vLLM 0.32.0; each test runs against the simulator and against
real vLLM (``server`` fixture), so the simulator answers the way vLLM does or the suite says where not.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.contract.conftest import MAX_MODEL_LEN, MODEL, Server
from tests.helpers import get_json, post

PROMPT = "Please answer the customer's question about the refund for order 12345 in two sentences."


def sse(url: str, path: str, body: dict) -> list:
    """The ``data:`` payloads of a streamed answer (JSON, and the final ``[DONE]`` as text)."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    out = []
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for line in r.read().decode().split("\n"):
            if line.startswith("data: "):
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_models_health_and_version(server: Server):
    models = get_json(server.url + "/v1/models")
    assert models["object"] == "list"
    [m] = models["data"]
    assert (m["id"], m["object"], m["owned_by"], m["max_model_len"]) == (MODEL, "model", "vllm", MAX_MODEL_LEN)
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        assert r.status == 200 and r.read() == b""
    assert get_json(server.url + "/version")["version"].startswith("0.32.0")


def test_a_completion(server: Server):
    status, body, _ = post(server.url, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 4,
                                                           "ignore_eos": True})
    assert status == 200
    assert re.fullmatch(r"cmpl-[0-9a-f]{16}", body["id"]) and body["object"] == "text_completion"
    assert body["model"] == MODEL and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert {"index", "text", "logprobs", "finish_reason", "stop_reason"} <= set(choice)
    assert (choice["index"], choice["finish_reason"], choice["logprobs"]) == (0, "length", None)
    u = body["usage"]
    assert u["completion_tokens"] == 4 and u["total_tokens"] == u["prompt_tokens"] + 4 > 4
    assert isinstance(u["prompt_tokens_details"]["cached_tokens"], int)


def test_a_chat_completion(server: Server):
    status, body, _ = post(server.url, "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
        "max_completion_tokens": 3, "ignore_eos": True})
    assert status == 200
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", body["id"]) and body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def test_a_streamed_completion(server: Server):
    chunks = sse(server.url, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 5,
                                                 "ignore_eos": True, "stream": True,
                                                 "stream_options": {"include_usage": True}})
    assert chunks[-1] == "[DONE]"
    data = chunks[:-1]
    assert len({c["id"] for c in data}) == 1 and {c["object"] for c in data} == {"text_completion"}
    *tokens, usage = data
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert "cached_tokens" in usage["usage"]["prompt_tokens_details"]
    reasons = [c["choices"][0]["finish_reason"] for c in tokens]
    assert reasons[-1] == "length" and set(reasons[:-1]) <= {None}


def test_a_streamed_chat_completion(server: Server):
    chunks = sse(server.url, "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True}})
    assert chunks[-1] == "[DONE]"
    first, *rest, usage = chunks[:-1]
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in rest)
    assert rest[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4


# (what the client sent, path, body or raw bytes) → (status, error type, param, message or a regex of it), as
# vLLM 0.32.0 answers. A message of None is not compared: the simulator words schema errors its own way.
TOO_LONG = (f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, your prompt contains "
            "{} input tokens, which exceeds this limit even without any output tokens. Please reduce the length of "
            "the input prompt. (parameter=input_tokens, value={})")
ERRORS = [
    ("max_tokens 0", "/v1/completions", {"prompt": "hi", "max_tokens": 0},
     (400, "BadRequestError", "max_tokens", "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)")),
    ("max_tokens text", "/v1/completions", {"prompt": "hi", "max_tokens": "x"},
     (400, "Bad Request", "body.max_tokens", None)),
    ("max_tokens over the context", "/v1/completions", {"prompt": "hi", "max_tokens": 9000},
     (400, "BadRequestError", "max_tokens", "max_tokens=9000 cannot be greater than max_model_len=8192. Please "
      "request fewer output tokens. (parameter=max_tokens, value=9000)")),
    ("chat max_completion_tokens over the context", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9000},
     (400, "BadRequestError", "max_completion_tokens", "max_completion_tokens=9000 cannot be greater than "
      "max_model_len=8192. Please request fewer output tokens. (parameter=max_completion_tokens, value=9000)")),
    ("text prompt over the context", "/v1/completions", {"prompt": "hi " * 8192, "max_tokens": 2},
     (400, "BadRequestError", "input_tokens", TOO_LONG.format("at least 8193", 8193))),
    ("token prompt over the context", "/v1/completions", {"prompt": [5] * 9000, "max_tokens": 2},
     (400, "BadRequestError", "input_tokens", TOO_LONG.format(9000, 9000))),
    ("prompt fills the context", "/v1/completions", {"prompt": [5] * 8192, "max_tokens": 2},
     (400, "BadRequestError", "max_tokens", "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)")),
    ("unknown model", "/v1/completions", {"model": "nope", "prompt": "hi"},
     (404, "NotFoundError", "model", f"The model `nope` does not exist. Valid aliases: {MODEL}.")),
    ("unknown model, render", "/v1/completions/render", {"model": "nope", "prompt": "hi"},
     (404, "NotFoundError", "model", f"The model `nope` does not exist. Valid aliases: {MODEL}.")),
    ("no prompt", "/v1/completions", {"max_tokens": 2},
     (400, "BadRequestError", "prompt", "Either prompt or prompt_embeds must be provided and non-empty. "
      "(parameter=prompt)")),
    ("empty prompt", "/v1/completions", {"prompt": ""},
     (400, "BadRequestError", "prompt", "Either prompt or prompt_embeds must be provided and non-empty. "
      "(parameter=prompt)")),
    ("prompt list empty", "/v1/completions", {"prompt": []},
     (400, "BadRequestError", None, "You must pass at least one prompt")),
    ("prompt a number", "/v1/completions", {"prompt": 42}, (400, "Bad Request", "body.prompt", None)),
    ("token id out of vocabulary", "/v1/completions", {"prompt": [1, 2, 2**31 - 1], "max_tokens": 2},
     (400, "BadRequestError", None, f"Token id {2**31 - 1} is out of vocabulary")),
    ("negative token id", "/v1/completions", {"prompt": [1, 2, -5], "max_tokens": 2},
     (400, "Bad Request", "body.prompt.2", None)),
    ("stream_options without stream", "/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}},
     (400, "BadRequestError", "stream_options", "Stream options can only be defined when `stream=True`. "
      "(parameter=stream_options)")),
    ("temperature below 0", "/v1/completions", {"prompt": "hi", "temperature": -1},
     (400, "BadRequestError", "temperature", "temperature must be non-negative, got -1.0. (parameter=temperature, "
      "value=-1.0)")),
    ("top_p 0", "/v1/completions", {"prompt": "hi", "top_p": 0},
     (400, "BadRequestError", "top_p", "top_p must be in (0, 1], got 0.0. (parameter=top_p, value=0.0)")),
    ("n 0", "/v1/completions", {"prompt": "hi", "n": 0},
     (400, "BadRequestError", None, "n must be at least 1, got 0.")),
    ("no messages", "/v1/chat/completions", {"messages": []},
     (400, "BadRequestError", None, "Cannot apply chat template to an empty conversation. Provide at least one "
      "message.")),
    ("messages not a list", "/v1/chat/completions", {"messages": "hi"}, (400, "Bad Request", "body.messages", None)),
    ("not JSON", "/v1/completions", b"{not json", (400, "Bad Request", re.compile(r"body(\.\d+)?"), None)),
    ("JSON but not an object", "/v1/completions", b"[1, 2]", (400, "Bad Request", "body", None)),
    ("empty body", "/v1/completions", b"", (400, "Bad Request", "body", None)),
    ("tokenize nothing", "/tokenize", {"model": MODEL}, (400, "Bad Request", "body.prompt", None)),
    ("detokenize text", "/detokenize", {"tokens": "x"}, (400, "Bad Request", "body.tokens", None)),
    ("detokenize a negative id", "/detokenize", {"tokens": [-1]}, (400, "Bad Request", "body.tokens.0", None)),
]


@pytest.mark.parametrize(("path", "sent", "expected"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_as_vllm_answers_them(server: Server, path: str, sent, expected):
    status, etype, param, message = expected
    if isinstance(sent, bytes):
        got, body, _ = post(server.url, path, raw=sent)
    else:
        got, body, _ = post(server.url, path, {"model": MODEL, **sent} if "model" not in sent else sent)
    assert got == status, body
    err = body["error"]
    assert (err["type"], err["code"]) == (etype, status)
    if isinstance(param, re.Pattern):
        assert param.fullmatch(err["param"]), err
    else:
        assert err["param"] == param, err
    if message is not None:
        assert err["message"] == message
    assert err["message"]


def test_unknown_routes_and_methods(server: Server):
    assert post(server.url, "/v1/engines", {})[:2] == (404, {"detail": "Not Found"})
    assert post(server.url, "/v1/completions", method="GET")[:2] == (405, {"detail": "Method Not Allowed"})


def test_tokenize_and_detokenize(server: Server):
    status, tok, _ = post(server.url, "/tokenize", {"model": MODEL, "prompt": PROMPT})
    assert status == 200 and set(tok) == {"count", "max_model_len", "tokens", "token_strs"}
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] == MAX_MODEL_LEN
    assert tok["token_strs"] is None
    _, with_strs, _ = post(server.url, "/tokenize", {"model": MODEL, "prompt": PROMPT, "return_token_strs": True})
    assert len(with_strs["token_strs"]) == tok["count"] and all(isinstance(t, str) for t in with_strs["token_strs"])
    assert post(server.url, "/detokenize", {"model": MODEL, "tokens": tok["tokens"]})[1] == {"prompt": PROMPT}
    messages = [{"role": "user", "content": PROMPT}]
    _, chat, _ = post(server.url, "/tokenize", {"model": MODEL, "messages": messages})
    assert chat["count"] > tok["count"]  # the chat template adds its markers
    _, both, _ = post(server.url, "/tokenize", {"model": MODEL, "prompt": "ignored", "messages": messages})
    assert both["tokens"] == chat["tokens"]  # given both, vLLM tokenizes the messages
    # /tokenize counts a prompt of any length
    assert post(server.url, "/tokenize", {"model": MODEL, "prompt": "hi " * 9000})[1]["count"] > MAX_MODEL_LEN


RENDER_KEYS = {"request_id", "token_ids", "token_offsets", "features", "content_parts", "sampling_params", "model",
               "reasoning_ended", "reasoning_parser_kwargs", "return_token_ids", "output_mode", "stream",
               "stream_options", "cache_salt", "priority", "kv_transfer_params", "ec_transfer_params"}


def test_the_two_render_routes_answer_what_the_engine_would_get(server: Server):
    status, rendered, _ = post(server.url, "/v1/completions/render", {"model": MODEL, "prompt": PROMPT,
                                                                      "max_tokens": 7})
    assert status == 200 and isinstance(rendered, list) and len(rendered) == 1
    [item] = rendered
    assert set(item) == RENDER_KEYS
    tok = post(server.url, "/tokenize", {"model": MODEL, "prompt": PROMPT})[1]
    assert item["token_ids"] == tok["tokens"] and item["model"] == MODEL and item["output_mode"] == "tokens"
    assert re.fullmatch(r"cmpl-[0-9a-f]{16}", item["request_id"])
    assert item["sampling_params"]["max_tokens"] == 7 and item["sampling_params"]["temperature"] == 1.0
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    status, chat, _ = post(server.url, "/v1/chat/completions/render", {"model": MODEL, "messages": messages})
    assert status == 200 and isinstance(chat, dict) and set(chat) == RENDER_KEYS
    chat_tok = post(server.url, "/tokenize", {"model": MODEL, "messages": messages})[1]
    assert chat["token_ids"] == chat_tok["tokens"] and re.fullmatch(r"chatcmpl-[0-9a-f]{16}", chat["request_id"])
    # Without max_tokens a chat may use the rest of the context.
    assert chat["sampling_params"]["max_tokens"] == MAX_MODEL_LEN - len(chat["token_ids"])
    status, rendered_ids, _ = post(server.url, "/v1/completions/render", {"model": MODEL, "prompt": [5, 6, 7]})
    assert status == 200 and rendered_ids[0]["token_ids"] == [5, 6, 7]


def test_reset_prefix_cache(server: Server):
    body = {"model": MODEL, "prompt": PROMPT * 4, "max_tokens": 1}
    post(server.url, "/v1/completions", body)
    warm = post(server.url, "/v1/completions", body)[1]["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert warm > 0
    assert post(server.url, "/reset_prefix_cache", None, raw=b"")[:2] == (200, {"success": True})
    cold = post(server.url, "/v1/completions", body)[1]["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cold == 0
