"""Property-based fuzzing of request parsing in ``kit gateway`` and ``kit sim``: generated
bodies and headers, sent over real sockets to real processes. Every answer must be a 2xx or a JSON
4xx, and the servers must keep answering. 5,000 requests to each server (slow suite).
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.targets.processes import Proc, free_port, healthy, spawn, stop

MODEL = "Qwen/Qwen3-0.6B"
EXAMPLES = 5000
ZERO_LATENCY = ["--step-overhead-ms", "0", "--prefill-us-per-token", "0", "--decode-us-per-seq", "0",
                "--decode-ns-per-context-token", "0", "--max-model-len", "512"]

# ----------------------------------------------------------------------------------------- bodies
# Text with, now and then, lone surrogates: json.dumps escapes them (\udXXX) unless ensure_ascii is off.
text = st.text(max_size=24) | st.text(st.characters() | st.characters(categories=["Cs"]), max_size=8)
scalars = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | text
junk = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=5)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, picked in proportion to its weight (``one_of`` picks each branch alike)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value, sometimes any JSON at all."""
    return weighted((7, strategy), (1, junk))


part = st.fixed_dictionaries({"type": maybe(st.sampled_from(["text", "image_url", "input_audio"]))},
                             optional={"text": maybe(text)})
message = st.fixed_dictionaries(
    {"role": maybe(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))},
    optional={"content": maybe(text | st.lists(part, max_size=3))})
common = {"model": maybe(st.just(MODEL)), "max_tokens": maybe(st.integers(-2, 600)), "stream": maybe(st.booleans()),
          "stream_options": maybe(st.fixed_dictionaries({}, optional={"include_usage": st.booleans(),
                                                                       "continuous_usage_stats": st.booleans()})),
          "ignore_eos": maybe(st.booleans()), "n": maybe(st.integers(0, 3)), "temperature": maybe(st.floats(-1, 3)),
          "top_p": maybe(st.floats(-1, 2)), "seed": maybe(st.integers()), "user": maybe(text)}


def some_of(fields: dict[str, st.SearchStrategy], most: int = 3) -> st.SearchStrategy:
    """A dict of up to ``most`` of ``fields``, each with a value from its strategy."""
    return st.lists(st.sampled_from(sorted(fields)), max_size=most, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: fields[k] for k in keys}))


def with_fields(required: dict[str, st.SearchStrategy], optional: dict[str, st.SearchStrategy]):
    return st.tuples(st.fixed_dictionaries(required), some_of(optional)).map(lambda two: {**two[0], **two[1]})


completion = with_fields(
    {"prompt": maybe(st.text(min_size=1, max_size=40) | st.lists(st.integers(0, 127), min_size=1, max_size=12)
                     | st.lists(st.text(min_size=1), min_size=1, max_size=1)
                     | st.lists(st.lists(st.integers(0, 127), min_size=1, max_size=6), min_size=1, max_size=1)
                     | st.text(max_size=2) | st.lists(st.integers(-3, 2**31) | text, max_size=3))},
    {**common, "echo": maybe(st.booleans())})
chat = with_fields({"messages": maybe(st.lists(message, min_size=1, max_size=3) | st.lists(message, max_size=1))},
                   {**common, "max_completion_tokens": maybe(st.integers(-2, 600)),
                    "add_generation_prompt": maybe(st.booleans())})
tokenize = some_of({"model": maybe(st.just(MODEL)), "prompt": maybe(text), "messages": st.lists(message, max_size=3),
                    "add_special_tokens": maybe(st.booleans())})
detokenize = st.fixed_dictionaries({"tokens": st.one_of(st.lists(st.integers(-5, 2**31), max_size=20), junk)})
SHAPES = {"/v1/completions": completion, "/v1/chat/completions": chat, "/v1/completions/render": completion,
          "/v1/chat/completions/render": chat, "/tokenize": tokenize, "/detokenize": detokenize}


@st.composite
def encoded(draw, value: st.SearchStrategy) -> bytes:
    """A JSON body as bytes: well formed, cut short, a byte flipped, or arbitrary bytes."""
    how = draw(st.sampled_from(["json"] * 12 + ["truncated", "flipped", "bytes", "wrapped"]))
    if how == "bytes":
        return draw(st.binary(max_size=64))
    data = json.dumps(draw(value) if how != "wrapped" else [draw(value)], ensure_ascii=draw(st.booleans()))
    raw = data.encode("utf-8", "surrogatepass")  # lone surrogates unescaped: not UTF-8, as a client might send
    if how == "truncated":
        return raw[: draw(st.integers(0, len(raw)))]
    if how == "flipped" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    return raw


# ---------------------------------------------------------------------------------------- headers
TOKEN = "ABCXYZabcxyz0189!#$%&'*+.^_`|~-"  # characters allowed in a header name
names = st.sampled_from(["Content-Type", "Content-Encoding", "Accept", "Accept-Encoding", "User-Agent", "Expect",
                         "x-request-id", "x-session-token", "x-gateway-inference-objective", "Cache-Control",
                         "Connection", "Transfer-Encoding", "Authorization", "Host"]) | st.text(TOKEN, min_size=1,
                                                                                               max_size=12)
values = st.sampled_from(["gzip", "deflate", "br", "identity", "zstd", "chunked", "close", "keep-alive",
                          "100-continue", "application/json", "text/plain", "", "Bearer x"]) | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=16)
header_line = st.tuples(names, values).map(lambda nv: f"{nv[0]}: {nv[1]}".encode("latin-1"))
# Any bytes but CR and LF, and never empty (an empty line would end the headers early and leave the rest,
# read as a second request, to answer a later one).
raw_line = st.binary(min_size=1, max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")).filter(
    lambda b: b.strip())
headers = st.lists(weighted((9, header_line), (1, raw_line)), max_size=2)


@st.composite
def requests(draw, paths: list[str]) -> tuple[str, bytes]:
    path = draw(st.sampled_from(paths))
    method = draw(st.sampled_from(["POST"] * 20 + ["GET", "PUT", "DELETE"]))
    body = draw(encoded(SHAPES[path]))
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Content-Type: application/json",
             *draw(headers), b"Content-Length: %d" % len(body)]
    return path, b"\r\n".join(lines) + b"\r\n\r\n" + body


# ---------------------------------------------------------------------------------------- checking
class Client:
    """One kept-alive connection, reopened whenever the server closes it."""

    def __init__(self, proc: Proc):
        self.proc, self.port, self.sock = proc, int(proc.url.rsplit(":", 1)[1]), None

    def send(self, data: bytes) -> http.client.HTTPResponse:
        for attempt in range(2):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            try:
                self.sock.sendall(data)
                resp = http.client.HTTPResponse(self.sock)
                resp.begin()
                resp.body = resp.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                self.close()  # a kept-alive connection the server had just closed: once more, anew
                if attempt:
                    raise
        if resp.will_close:
            self.close()
        return resp

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def check(resp: http.client.HTTPResponse, proc: Proc, request: bytes) -> None:
    where = f"{request[:300]!r} → {resp.status} {resp.body[:300]!r}"
    assert 200 <= resp.status < 300 or 400 <= resp.status < 500, where
    assert resp.getheader("x-kit-instance") == proc.instance, where
    ctype = resp.getheader("Content-Type", "")
    if resp.status >= 400:
        assert ctype.startswith("application/json"), where
        body = json.loads(resp.body)
        if proc.role == "sim" and "detail" in body:  # an unknown route or method: vLLM's FastAPI shape
            assert resp.status in (404, 405) and isinstance(body["detail"], str) and body["detail"], where
            return
        error = body["error"]
        assert error["code"] == resp.status and isinstance(error["message"], str) and error["message"], where
    elif ctype.startswith("text/event-stream"):
        assert resp.body.endswith(b"data: [DONE]\n\n"), where
    else:
        assert ctype.startswith("application/json"), where
        json.loads(resp.body)


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def stack(tmp_path_factory):
    """Two simulators and a gateway, for one test: each fuzz test has its own, so the two can run side by side."""
    logs = tmp_path_factory.mktemp("fuzz")
    started = []
    try:
        for _ in range(2):
            port = free_port()
            started.append(spawn(["sim", "--port", str(port), *ZERO_LATENCY], f"http://127.0.0.1:{port}",
                                 logs / f"sim-{port}.log", role="sim"))
        port = free_port()
        started.append(spawn(["gateway", "--port", str(port), "--endpoints", ",".join(p.url for p in started)],
                             f"http://127.0.0.1:{port}", logs / "gateway.log", role="gateway"))
        yield {"sims": started[:2], "gateway": started[2]}
    finally:
        for proc in reversed(started):
            stop(proc)


def fuzz(proc: Proc, paths: list[str], everyone: list[Proc]) -> None:
    client = Client(proc)
    statuses: collections.Counter[int] = collections.Counter()

    @FUZZ
    @given(requests(paths))
    def one(request: tuple[str, bytes]) -> None:
        resp = client.send(request[1])
        statuses[resp.status] += 1
        check(resp, proc, request[1])

    try:
        one()
    finally:
        client.close()
    print(f"{proc.role}: {sum(statuses.values())} requests, answers {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= EXAMPLES
    assert statuses[200] >= EXAMPLES // 10  # generation itself was reached, not only the parsers
    for p in everyone:
        assert p.alive() and healthy(p.url), p
    assert "Traceback" not in Path(proc.log).read_text()


@pytest.mark.slow
def test_the_gateway_answers_every_generated_request_with_a_2xx_or_a_json_4xx(stack):
    fuzz(stack["gateway"], ["/v1/completions", "/v1/chat/completions"], [stack["gateway"], *stack["sims"]])


@pytest.mark.slow
def test_the_simulator_answers_every_generated_request_with_a_2xx_or_a_json_4xx(stack):
    fuzz(stack["sims"][0], list(SHAPES), stack["sims"])
