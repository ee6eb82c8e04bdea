"""The gateway's client to its endpoints (``kit.gateway.upstream``), against small servers on loopback that
misbehave on purpose: connections kept alive and reused, closed while idle, answers without a length,
malformed answers, nothing listening."""

from __future__ import annotations

import asyncio

import pytest

from kit.gateway.upstream import ConnectError, Disconnected, Pool, ReadTimeout
from kit.targets.processes import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Scripted(asyncio.Protocol):
    """Answers each request on a connection with the next reply of its script (None, or past its end: close
    instead of answering); connections past the last script answer OK."""

    def __init__(self, server: Server):
        self.server = server
        self.n = 0
        server.connections += 1
        self.script = server.scripts.pop(0) if server.scripts else [OK] * 100

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        reply = self.script[self.n] if self.n < len(self.script) else None
        self.n += 1
        if reply is None:
            self.transport.close()
        else:
            self.transport.write(reply)
            if b"Connection: close" in reply:
                self.transport.close()


class Server:
    def __init__(self, *scripts: list[bytes | None]):
        self.scripts = list(scripts)
        self.connections = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def __aenter__(self):
        self._srv = await asyncio.get_running_loop().create_server(lambda: Scripted(self), "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc):
        self._srv.close()


async def body(pool: Pool, url: str) -> tuple[int, bytes]:
    answer = await pool.post(url, "/v1/completions", b'{"prompt": "x"}')
    try:
        out = b""
        while piece := await answer.read():
            out += piece
        return answer.status, out
    finally:
        answer.close()


def test_sequential_requests_reuse_one_kept_alive_connection():
    async def go():
        async with Server() as srv:
            pool = Pool(connect_timeout=1.0)
            got = [await body(pool, srv.url) for _ in range(5)]
            await pool.close()
            return got, srv.connections

    got, connections = asyncio.run(go())
    assert got == [(200, b"{}")] * 5 and connections == 1


def test_a_connection_the_endpoint_closed_while_idle_is_replaced_without_an_error():
    async def go():
        # First connection: one answer, then it closes at the next request (as a server whose idle timeout
        # ran out just as the request arrived); the second connection answers.
        async with Server([OK, None], [OK] * 10) as srv:
            pool = Pool(connect_timeout=1.0)
            got = [await body(pool, srv.url), await body(pool, srv.url)]
            await pool.close()
            return got, srv.connections

    got, connections = asyncio.run(go())
    assert got == [(200, b"{}"), (200, b"{}")] and connections == 2


def test_a_new_connection_closed_before_answering_is_an_error():
    async def go():
        async with Server([None]) as srv:
            pool = Pool(connect_timeout=1.0)
            try:
                with pytest.raises(Disconnected, match="before answering"):
                    await body(pool, srv.url)
            finally:
                await pool.close()

    asyncio.run(go())


def test_an_answer_without_a_length_ends_when_the_connection_closes():
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nhello, world"

    async def go():
        async with Server([reply]) as srv:
            pool = Pool(connect_timeout=1.0)
            try:
                return await body(pool, srv.url)
            finally:
                await pool.close()

    assert asyncio.run(go()) == (200, b"hello, world")


def test_chunked_answers_are_decoded_and_a_malformed_one_is_an_error():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    garbage = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n"

    async def go():
        async with Server([chunked], [garbage]) as srv:
            pool = Pool(connect_timeout=1.0)
            try:
                first = await body(pool, srv.url)
                with pytest.raises(Disconnected, match="malformed"):
                    await body(pool, srv.url)
                return first
            finally:
                await pool.close()

    assert asyncio.run(go()) == (200, b"hello, world")


def test_nothing_listening_is_a_connect_error():
    async def go():
        pool = Pool(connect_timeout=1.0)
        with pytest.raises(ConnectError, match="Cannot connect"):
            await pool.post(f"http://127.0.0.1:{free_port()}", "/v1/completions", b"{}")

    asyncio.run(go())


# ------------------------------------------------------------------ what an endpoint can make the client hold
def test_interim_answers_are_skipped_and_never_taken_for_the_final_one():
    """An endpoint answering ``103 Early Hints`` (or ``100 Continue``) before its answer: the client gets the final
    answer, and the next answer on the same connection belongs to the next request (before, the 103 was taken as
    the answer and every later one was one request late)."""
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    first = early + b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    second = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"

    async def go():
        async with Server([first, second]) as srv:
            pool = Pool(connect_timeout=1.0)
            try:
                answer = await pool.post(srv.url, "/v1/completions", b"{}")
                assert "link" not in answer.headers  # the interim answer's headers are not the answer's
                answer.close()
                return [(answer.status, b"{}"), await body(pool, srv.url)], srv.connections
            finally:
                await pool.close()

    got, connections = asyncio.run(go())
    assert got == [(200, b"{}"), (200, b"second")] and connections == 1


def test_endless_interim_answers_and_endless_headers_are_an_error():
    many = b"HTTP/1.1 103 Early Hints\r\n\r\n" * 6 + OK
    endless = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000  # never finished

    async def go():
        async with Server([many], [endless]) as srv:
            pool = Pool(connect_timeout=1.0)
            try:
                with pytest.raises(Disconnected, match="more than 5 interim"):
                    await body(pool, srv.url)
                with pytest.raises(Disconnected, match="headers are larger than 65536 bytes"):
                    await asyncio.wait_for(body(pool, srv.url), 5)
            finally:
                await pool.close()

    asyncio.run(go())


def test_an_answer_switching_protocols_unasked_is_an_error():
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nxx"

    async def go():
        async with Server([switch]) as srv:
            pool = Pool(connect_timeout=1.0)
            try:
                with pytest.raises(Disconnected, match="malformed"):
                    await body(pool, srv.url)
            finally:
                await pool.close()

    asyncio.run(go())


class Stalling(asyncio.Protocol):
    """Answers with a chunked body's first piece, then sends nothing more (a server stopped mid-stream)."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")


def test_a_stream_that_stalls_after_its_first_piece_fails_after_the_read_timeout():
    async def go():
        port = free_port()
        srv = await asyncio.get_running_loop().create_server(Stalling, "127.0.0.1", port)
        pool = Pool(connect_timeout=1.0, read_timeout=0.5)
        try:
            answer = await pool.post(f"http://127.0.0.1:{port}", "/v1/completions", b"{}")
            assert await answer.read() == b"hello"
            start = asyncio.get_running_loop().time()
            with pytest.raises(ReadTimeout, match=r"within 0\.5 s"):
                await answer.read()
            answer.close()
            return asyncio.get_running_loop().time() - start
        finally:
            await pool.close()
            srv.close()

    took = asyncio.run(go())
    assert 0.4 < took < 2.0, took
