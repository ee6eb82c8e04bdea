"""The gateway's own HTTP/1.1 server (``kit.gateway.front``) over raw sockets, against a real ``kit gateway``
process: what aiohttp's server did for it when the gateway ran on aiohttp (pipelining, chunked and compressed bodies,
``HEAD``, HTTP/1.0, requests in pieces) and what it does better (a body announced too large is refused
before it is sent)."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import socket
import time
import zlib

import pytest

BODY = json.dumps({"prompt": "hello", "max_tokens": 2}).encode()


@pytest.fixture
def gw(sim_factory, gateway_factory):
    return gateway_factory([sim_factory().url])


def connect(proc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(proc.url.rsplit(":", 1)[1])), timeout=10)


def post(path: str, body: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    return (b"POST %s HTTP/%s\r\nHost: x\r\nContent-Type: application/json\r\n" % (path.encode(), version)
            + b"".join(h + b"\r\n" for h in headers) + b"Content-Length: %d\r\n\r\n" % len(body) + body)


class _Reader:
    """One buffered reader for every answer on a connection (``HTTPResponse`` would make one per answer, and
    the first could swallow the bytes of the next)."""

    class _Open(io.BufferedReader):
        def close(self) -> None:  # each answer closes its reader when read: this one stays for the next
            pass

    def __init__(self, sock: socket.socket):
        self.file = self._Open(socket.SocketIO(sock, "rb"))  # type: ignore[arg-type]

    def makefile(self, _mode: str):
        return self.file


def answers(sock: socket.socket | _Reader, n: int, method: str = "POST") -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``n`` answers from a kept-alive connection."""
    reader = sock if isinstance(sock, _Reader) else _Reader(sock)
    out = []
    for _ in range(n):
        resp = http.client.HTTPResponse(reader, method=method)  # type: ignore[arg-type]
        resp.begin()
        out.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
    return out


def test_pipelined_requests_are_answered_in_order_on_one_connection(gw):
    with connect(gw) as s:
        s.sendall(post("/v1/completions", BODY, b"x-request-id: one") + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
                  + post("/v1/completions", BODY, b"x-request-id: two"))
        got = answers(s, 3)
    assert [status for status, _, _ in got] == [200, 404, 200]
    assert got[0][1]["x-request-id"] == "one" and got[2][1]["x-request-id"] == "two"
    assert json.loads(got[1][2])["error"]["code"] == 404


def test_chunked_and_compressed_bodies_are_decoded_and_passed_on(gw):
    chunked = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (BODY[:7], BODY[7:])) + b"0\r\n\r\n")
    with connect(gw) as s:
        s.sendall(chunked + post("/v1/completions", gzip.compress(BODY), b"Content-Encoding: gzip")
                  + post("/v1/completions", zlib.compress(BODY), b"Content-Encoding: deflate"))
        got = answers(s, 3)
    assert [(status, json.loads(body)["usage"]["completion_tokens"]) for status, _, body in got] == [(200, 2)] * 3


def test_a_request_arriving_a_few_bytes_at_a_time_is_served(gw):
    data = post("/v1/completions", BODY)
    with connect(gw) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 7):
            s.sendall(data[i:i + 7])
            time.sleep(0.002)
        [(status, _, body)] = answers(s, 1)
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2


def test_a_body_announced_too_large_is_refused_before_it_is_sent(gw):
    """With ``Expect: 100-continue`` the client waits for the go-ahead: the 413 comes instead, at once, and the
    connection closes."""
    with connect(gw) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % (64 * 2**20))
        reader = _Reader(s)
        [(status, headers, body)] = answers(reader, 1)
        assert reader.file.read(1) == b""  # and closed at once: the client need not send the body
    assert status == 413 and headers["connection"] == "close"
    assert "larger than 16777216 bytes" in json.loads(body)["error"]["message"]


def test_head_method_and_unknown_routes(gw):
    with connect(gw) as s:
        s.sendall(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"PUT /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                  b"GET /decisions/no-such-id HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = _Reader(s)
        [(head, _, nothing)] = answers(reader, 1, method="HEAD")
        (put, put_headers, put_body), (missing, _, missing_body) = answers(reader, 2)
    assert head == 200 and nothing == b""
    assert put == 405 and put_headers["allow"] == "GET,HEAD" and json.loads(put_body)["error"]["code"] == 405
    assert missing == 404 and "no recent decision" in json.loads(missing_body)["error"]["message"]


def test_an_http_1_0_client_gets_its_stream_unchunked_until_the_connection_closes(gw):
    body = json.dumps({"prompt": "hello", "max_tokens": 3, "stream": True}).encode()
    with connect(gw) as s:
        s.sendall(post("/v1/completions", body, version=b"1.0"))
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, events = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 200 OK") and b"transfer-encoding" not in head.lower()
    assert events.count(b"data: {") == 3 and events.endswith(b"data: [DONE]\n\n")
