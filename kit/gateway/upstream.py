"""The proxy's client: kept-alive HTTP/1.1 connections to the endpoints, and nothing else.

aiohttp's client spent more CPU per proxied request than everything else in the gateway together
(docs/results/gateway.md), so the proxy talks to its endpoints through this small client: an
asyncio protocol per connection, answers parsed by httptools (the llhttp parser), one pool of idle
connections per endpoint (most recently used first; one idle longer than ``keepalive`` seconds is
closed instead of reused), and TCP_NODELAY, so each piece of an answer is passed on as it arrives.

``Pool.post`` sends a body and returns the ``Answer`` once its status and headers are in; ``Answer.read``
gives its body as it arrives (chunked or not, decoded from the transfer encoding, never decompressed),
``b""`` at its end. Failures are ``UpstreamError``s: ``ConnectError`` (nothing listens),
``ConnectTimeout``, and ``Disconnected`` (closed, reset, or a malformed answer). A kept-alive
connection the endpoint closed while idle is noticed when nothing of the answer arrives; the request
is then sent once more on a new connection, as Go's HTTP transport does. A body read faster than the
client takes it is held to ``HIGH_WATER`` bytes: the connection stops reading until the proxy catches up.
"""

from __future__ import annotations

import asyncio
import collections
from urllib.parse import urlsplit

import httptools

from kit.http import no_delay

HIGH_WATER = 2**16  # bytes of an answer held before reading pauses


class UpstreamError(Exception):
    """The endpoint could not be reached, or broke off its answer."""


class ConnectError(UpstreamError):
    """Nothing accepted the connection (refused, unreachable)."""


class ConnectTimeout(UpstreamError):
    """No connection within the connect timeout."""


class Disconnected(UpstreamError):
    """The connection closed or reset, or the answer was malformed, before the answer ended."""


class Answer:
    """One answer: status and headers once ``Pool.post`` returns, then its body through ``read``."""

    __slots__ = ("_chunks", "_conn", "_error", "_head", "_size", "_waiter", "complete", "headers", "started",
                 "status")

    def __init__(self, conn: _Connection):
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names; a repeated header keeps its last value
        self.started = False  # any byte of the answer arrived
        self.complete = False  # the whole body arrived
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._error: UpstreamError | None = None
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def read(self) -> bytes:
        """What arrived of the body since the last call (waiting for more if nothing did); ``b""`` at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._size > HIGH_WATER and self._conn.transport is not None:
            self._conn.transport.resume_reading()
        self._size = 0
        return data

    def close(self) -> None:
        """Done with this answer: its connection goes back to the pool if the answer ended cleanly, else closes."""
        self._conn.release(self)

    # ------------------------------------------------------------------------- from the connection
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _feed(self, body: bytes) -> None:
        self._chunks.append(body)
        self._size += len(body)
        if self._size > HIGH_WATER and self._conn.transport is not None:
            self._conn.transport.pause_reading()
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()


class _Connection(asyncio.Protocol):
    """One kept-alive connection to one endpoint; carries one request at a time."""

    def __init__(self, pool: Pool, key: str, loop: asyncio.AbstractEventLoop):
        self.pool, self.key, self.loop = pool, key, loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: Answer | None = None
        self.idle_since = 0.0
        self.keep_alive = True
        self._until_close = False  # the answer has no length: it ends when the connection closes

    def send(self, data: list[bytes]) -> Answer:
        assert self.transport is not None
        self.answer = answer = Answer(self)
        answer._head = self.loop.create_future()
        self.transport.writelines(data)
        return answer

    def release(self, answer: Answer) -> None:
        if answer is not self.answer:
            return
        self.answer = None
        if answer.complete and self.keep_alive and self.transport is not None and not self.transport.is_closing():
            if answer._size > HIGH_WATER:  # left unread with reading paused: the next answer must get through
                self.transport.resume_reading()
            self.pool._put_back(self)
        elif self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------------------ asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        no_delay(transport)

    def data_received(self, data: bytes) -> None:
        if self.answer is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.transport.close()  # type: ignore[union-attr]
            return
        self.answer.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.answer._fail(Disconnected(f"malformed answer: {exc}"))
            self.keep_alive = False
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._forget(self)
        self.transport = None
        answer = self.answer
        if answer is None or answer.complete:
            return
        if exc is None and self._until_close and answer.status:
            answer.complete = True
            answer._wake()
            return
        why = f"{exc}" if exc else "the server closed the connection"
        answer._fail(Disconnected(why if answer.status else f"{why} before answering"))

    # ---------------------------------------------------------------------------- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.answer.headers[name.decode("latin-1").lower()] = value.decode("latin-1")  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        answer = self.answer
        assert answer is not None
        answer.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        h = answer.headers
        self._until_close = "content-length" not in h and "transfer-encoding" not in h and answer.status not in (
            204, 304)
        if answer._head is not None and not answer._head.done():
            answer._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.answer._feed(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        answer = self.answer
        assert answer is not None
        answer.complete = True
        answer._wake()


class Pool:
    """Idle connections per endpoint, reused most recently used first."""

    def __init__(self, connect_timeout: float, keepalive: float = 30.0):
        self.connect_timeout, self.keepalive = connect_timeout, keepalive
        self._idle: dict[str, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._targets: dict[str, tuple[str, int, str, bool]] = {}  # base URL → host, port, path prefix, TLS
        self._heads: dict[tuple[str, str, bytes], bytes] = {}  # (base URL, path, type) → request head up to the length

    async def post(self, url: str, path: str, body: bytes, content_type: bytes = b"application/json") -> Answer:
        """POST ``body`` to ``url`` + ``path``; the answer once its status and headers arrived."""
        host, port, prefix, tls = self._target(url)
        head = self._heads.get((url, path, content_type))
        if head is None:
            name = f"[{host}]" if ":" in host else host  # an IPv6 address
            head = self._heads[url, path, content_type] = (
                f"POST {prefix}{path} HTTP/1.1\r\nHost: {name}:{port}\r\nContent-Type: ".encode()
                + content_type + b"\r\nContent-Length: ")
        data = [head, b"%d\r\n\r\n" % len(body), body]
        conn = self._take(url)
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(url, host, port, tls)
            answer = conn.send(data)
            try:
                await answer._head  # type: ignore[misc]
            except Disconnected:
                answer.close()
                if reused and not answer.started:  # the endpoint had closed it while idle: once more
                    conn, reused = None, False
                    continue
                raise
            except BaseException:
                answer.close()
                raise
            finally:
                answer._head = None
            return answer

    async def close(self) -> None:
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        await asyncio.sleep(0)

    def _target(self, url: str) -> tuple[str, int, str, bool]:
        target = self._targets.get(url)
        if target is None:
            u = urlsplit(url)
            tls = u.scheme == "https"
            target = self._targets[url] = (u.hostname or "127.0.0.1", u.port or (443 if tls else 80),
                                           u.path.rstrip("/"), tls)
        return target

    def _take(self, key: str) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                if now - conn.idle_since <= self.keepalive:
                    return conn
                conn.transport.close()
        return None

    async def _connect(self, key: str, host: str, port: int, tls: bool) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self, key, loop), host, port,
                                                       ssl=tls or None)
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {host}:{port} within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectError(f"Cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self._open.add(conn)
        return conn

    def _put_back(self, conn: _Connection) -> None:
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
