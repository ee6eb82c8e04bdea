"""The gateway's client to its endpoints (``kit.gateway.upstream``), against small servers on loopback that
misbehave on purpose: connections kept alive and reused, closed while idle, answers without a length,
malformed answers, nothing listening."""

from __future__ import annotations

import asyncio

import pytest

from kit.gateway.upstream import ConnectError, Disconnected, Pool
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
