"""The gateway's HTTP/1.1 server: an asyncio protocol per client connection, requests parsed by httptools.

aiohttp's server cost the gateway about 70 µs of CPU per request more than a bare httptools protocol
(docs/results/gateway.md), so the gateway serves its clients through this module; the simulator
stays on aiohttp (``kit.http.start_app``). Both keep the same hardening, with the limits and the
drain sequence shared in ``kit.http``:

* keep-alive and pipelining: requests on one connection are answered in order, one at a time, by one
  task; reading pauses while ``PIPELINE`` requests wait. A client that disconnects cancels the task.
* ``ServerLimits``: a connection idle (no request in progress) longer than ``idle_timeout`` closes;
  past the connection cap the longest-idle one closes to make room, or, if none is idle, the new one
  gets a JSON 503 (``kit.http.make_room``).
* malformed HTTP (a request line or header line over ``max_line_size``, more than ``max_headers``
  headers, anything llhttp refuses, an upgrade request) gets a JSON 400, one rate-limited log line, and
  the connection closes; a body over ``max_body`` bytes (as sent, or once decompressed) a JSON 413, the
  rest of it read and dropped for up to ``LINGER`` seconds so the client sees the answer.
* ``Expect: 100-continue`` gets its interim answer as soon as the headers are in; any other expectation
  a JSON 417. Bodies sent ``gzip`` or ``deflate`` encoded are decoded; other encodings pass as sent,
  except ``br`` and ``zstd``, which get a 400.
* every answer carries ``Date`` and, with ``$KIT_INSTANCE`` set, ``x-kit-instance``.

Handlers are ``async (Request) -> Response | Stream``; a ``Stream`` sends its headers with its first
piece, then each piece as it is written (chunked), waiting while the client's socket buffer is full.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import httptools

from kit.http import (
    INSTANCE_ENV,
    INSTANCE_HEADER,
    HTTPError,
    ServerLimits,
    capacity,
    error_body,
    line_too_long,
    log_to_stderr,
    make_room,
    no_delay,
    open_file_limit,
    over_cap_message,
)

log = logging.getLogger("kit.http")
PIPELINE = 16  # requests waiting on one connection before it stops reading
LINGER = 10.0  # seconds the rest of a refused body is read and dropped before the connection closes
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
JSON = "application/json; charset=utf-8"
_NAMES = {n.encode(): n.lower() for n in ("Host", "Content-Type", "Content-Length", "Accept", "User-Agent",
                                          "Connection", "Accept-Encoding", "Authorization")}  # as clients spell them
_NAMES.update({k.lower(): v for k, v in _NAMES.items()})


class Request:
    """One request: method, decoded path, query string, headers (lower-case names; a repeated header keeps its
    first value), the whole body (decoded from its transfer and content encodings), and ``tail``: the rest of
    the path after a prefix route."""

    __slots__ = ("body", "conn", "headers", "keep_alive", "method", "path", "query_string", "tail", "version")

    def __init__(self, conn: Connection, method: str, path: str, query_string: str, headers: dict[str, str],
                 body: bytes, version: str, keep_alive: bool):
        self.conn, self.method, self.path, self.query_string = conn, method, path, query_string
        self.headers, self.body, self.version, self.keep_alive = headers, body, version, keep_alive
        self.tail = ""

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def stream(self, status: int, headers: dict[str, str]) -> Stream:
        """Start a streamed answer (sent with its first piece)."""
        return Stream(self, status, headers)


class Response:
    """A whole answer, sent in one write with its length."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(self, status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None,
                 close: bool = False):
        self.status, self.body, self.headers, self.close = status, body, headers or {}, close


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode(), {"Content-Type": JSON})


def error(status: int, message: str, param: str | None = None, close: bool = False) -> Response:
    """An OpenAI/vLLM-shaped JSON error (the body ``kit.http.error`` sends)."""
    resp = json_response(error_body(status, message, param), status)
    resp.close = close
    return resp


class Stream:
    """A streamed answer: headers with the first piece, each piece written as it comes, chunked (HTTP/1.0: the
    connection's end ends it)."""

    __slots__ = ("chunked", "conn", "ended", "head", "started")

    def __init__(self, request: Request, status: int, headers: dict[str, str]):
        self.conn = request.conn
        self.chunked = request.version != "1.0"
        if not self.chunked:
            request.keep_alive = False
        self.head = self.conn.head(status, headers, b"Transfer-Encoding: chunked\r\n" if self.chunked else b"",
                                   request.keep_alive)
        self.started = self.ended = False

    async def write(self, data: bytes) -> None:
        if not data:
            return
        piece = b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data
        if not self.started:
            self.started = self.conn.answering = True
            piece = self.head + piece
        await self.conn.send(piece)

    async def end(self, data: bytes = b"") -> None:
        """Write the last piece and the end of the answer, in one write."""
        piece = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n") if self.chunked else data
        if not self.started:
            self.started = self.conn.answering = True
            piece = self.head + piece
        self.ended = True
        await self.conn.send(piece)

    def abort(self) -> None:
        """Cut the connection off (the answer broke midway: the client must not take it as complete)."""
        self.conn.abort()


Handler = Callable[[Request], Awaitable["Response | Stream"]]


class Router:
    """Exact paths, and prefixes (``/decisions/``, the rest of the path in ``request.tail``), to handlers by
    method; ``HEAD`` is answered wherever ``GET`` is."""

    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Handler]] = {}
        self.prefixes: list[tuple[str, dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        if path.endswith("/"):
            routes = next((r for p, r in self.prefixes if p == path), None)
            if routes is None:
                routes = {}
                self.prefixes.append((path, routes))
        else:
            routes = self.exact.setdefault(path, {})
        routes[method] = handler
        if method == "GET":
            routes.setdefault("HEAD", handler)

    def find(self, request: Request) -> Handler | Response:
        routes = self.exact.get(request.path)
        if routes is None:
            for prefix, candidates in self.prefixes:
                tail = request.path[len(prefix):]
                if request.path.startswith(prefix) and tail and "/" not in tail:
                    routes, request.tail = candidates, tail
                    break
            else:
                return error(404, "Not Found")
        handler = routes.get(request.method)
        if handler is None:
            resp = error(405, "Method Not Allowed")
            resp.headers["Allow"] = ",".join(sorted(routes))
            return resp
        return handler


class Front:
    """Serves a ``Router`` on one address with ``ServerLimits`` and a body limit; ``kit.http.run_server`` drains
    and stops it (``close`` runs ``cleanup`` last)."""

    def __init__(self, router: Router, limits: ServerLimits, max_body: int,
                 cleanup: Callable[[], Awaitable[None]] | None = None):
        self.router, self.limits, self.max_body, self.cleanup = router, limits, max_body, cleanup
        self.connections: set[Connection] = set()
        self.cap, self.backlog = capacity(limits, open_file_limit())
        self.instance = os.environ.get(INSTANCE_ENV, "")
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._empty: asyncio.Future[None] | None = None
        self.trailer = b""  # Date and instance headers, renewed every second

    async def start(self, host: str, port: int) -> None:
        log_to_stderr()
        loop = asyncio.get_running_loop()
        self._every_second()
        self._server = await loop.create_server(lambda: Connection(self), host, port, backlog=self.backlog)

    def _every_second(self) -> None:
        """Renew the Date header; close connections idle longer than the idle timeout."""
        instance = f"{INSTANCE_HEADER}: {self.instance}\r\n" if self.instance else ""
        self.trailer = f"Date: {email.utils.formatdate(usegmt=True)}\r\n{instance}".encode("latin-1")
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):  # idle, or stalled midway through sending a request
            if conn.task is None and now - conn.last_seen > self.limits.idle_timeout:
                conn.close_idle()
        self._tick = loop.call_at(now + min(1.0, self.limits.idle_timeout / 4), self._every_second)

    # ------------------------------------------------------------------------------------ kit.http.Serving
    async def stop_accepting(self) -> None:
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.idle_since is not None:
                conn.close_idle()

    def finished(self) -> Awaitable[None]:
        self._empty = asyncio.get_running_loop().create_future()
        self._forget(None)
        return self._empty

    def open_connections(self) -> int:
        return len(self.connections)

    def cut_off(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    async def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        if self._server is not None:
            self._server.close()
        self.cut_off()
        await asyncio.sleep(0)
        if self.cleanup is not None:
            await self.cleanup()

    def _forget(self, conn: Connection | None) -> None:
        self.connections.discard(conn)  # type: ignore[arg-type]
        if not self.connections and self._empty is not None and not self._empty.done():
            self._empty.set_result(None)


class _Refused(Exception):
    """A request the connection answers itself, without a handler (a protocol error, a limit)."""

    def __init__(self, response: Response):
        super().__init__()
        self.response = response


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, front: Front):
        self.front = front
        self.max_line, self.max_headers = front.limits.max_line_size, front.limits.max_headers
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[Request | Response] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.idle_since: float | None = time.monotonic()
        self.last_seen = self.loop.time()
        self.answering = False  # part of the current answer was sent
        self.refused = False  # over the connection cap: every request gets a 503
        self.broken = False  # the parser gave up: nothing more is read
        self.dropping = False  # reading and dropping the rest of a body already answered
        self.linger_until = 0.0
        self.writable: asyncio.Future[None] | None = None
        # the request being parsed
        self.url: list[bytes] = []
        self.url_size = 0
        self.headers: dict[str, str] = {}
        self.head_size = 0
        self.in_head = self.in_message = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.inflate: Any = None
        self.answer_first: Response | None = None  # answered without a handler once the body is in

    # ---------------------------------------------------------------------------------------- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        no_delay(transport)
        front = self.front
        front.connections.add(self)
        self.refused = not make_room(self, front.connections, front.cap)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.front._forget(self)
        if self.task is not None:
            self.task.cancel()  # the client left: what it asked for is cancelled (upstream too)
        if self.writable is not None and not self.writable.done():
            self.writable.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        self.last_seen = self.loop.time()
        if self.dropping and self.last_seen > self.linger_until:
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except _Refused as exc:
            self._refuse(exc.response)
        except httptools.HttpParserUpgrade:  # answered as an ordinary request; then the connection closes
            self.broken = True
            if not self.queue and self.task is None:
                self._malformed("protocol upgrades are not supported")
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.response)
            else:
                raise
        except httptools.HttpParserError as exc:
            self._malformed(str(exc) or "bad request")
        else:
            if self.in_head:  # the head goes on past this piece: it must stay within the limits
                self.head_size += len(data)
                lim = self.front.limits
                if self.head_size > (lim.max_headers + 2) * (lim.max_line_size + 2):
                    self._malformed(line_too_long(lim))

    def close_idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -------------------------------------------------------------------------------- httptools callbacks
    def on_message_begin(self) -> None:
        self.idle_since = None
        self.in_message = self.in_head = True
        self.head_size = 0
        self.url, self.url_size, self.headers = [], 0, {}
        self.body, self.body_size, self.inflate, self.answer_first = [], 0, None, None

    def on_url(self, url: bytes) -> None:
        self.url.append(url)
        self.url_size += len(url)
        if self.url_size > self.front.limits.max_line_size:
            raise _Refused(self._malformed_response(line_too_long(self.front.limits)))

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(name) + len(value) + 2 > self.max_line or len(headers) >= self.max_headers:
            lim = self.front.limits
            raise _Refused(self._malformed_response(
                "Too many headers received" if len(headers) >= lim.max_headers else line_too_long(lim)))
        key = _NAMES.get(name) or name.decode("latin-1").lower()
        if key not in headers:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.in_head = False
        h = self.headers
        if self.refused:
            return
        if "expect" in h and h["expect"].strip().lower() != "100-continue":
            self.answer_first = error(417, "the Expect header asks for something other than 100-continue")
            return
        length = h.get("content-length")
        if length is not None and int(length) > self.front.max_body:  # llhttp checked it is a number
            self._too_large(before_body="expect" in h)
            return
        encoding = h.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "deflate"):
            self.inflate = _Inflate(encoding)
        elif encoding in ("br", "zstd"):
            raise _Refused(self._malformed_response(f"Content-Encoding {encoding} is not supported (gzip and "
                                                    "deflate are)"))
        if ("expect" in h and self.transport is not None and not self.queue and self.task is None
                and self.parser.get_http_version() == "1.1"):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # (not while earlier answers are due)

    def on_body(self, body: bytes) -> None:
        if self.dropping or self.refused or self.answer_first is not None:
            return
        if self.inflate is not None:
            try:
                body = self.inflate.feed(body, self.front.max_body - self.body_size + 1)
            except zlib.error:
                self._unreadable()
                return
        self.body_size += len(body)
        if self.body_size > self.front.max_body:
            self._too_large(before_body=False)
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.dropping:  # the rest of a body already answered: now the connection can close cleanly
            self.dropping = False
            if self.transport is not None and not self.queue and self.task is None:
                self.transport.close()
            return
        if self.refused:
            resp = error(503, over_cap_message(self.front.cap), close=True)
            resp.headers["Retry-After"] = "1"
            self._queue(resp)
            return
        if self.answer_first is None and self.inflate is not None:
            try:
                self.body.append(self.inflate.end())
            except zlib.error:
                self._unreadable()
        if self.answer_first is not None:
            self._queue(self.answer_first)
            return
        parser = self.parser
        url = self.url[0] if len(self.url) == 1 else b"".join(self.url)
        path, _, query = url.partition(b"?")
        if not path.startswith(b"/"):  # absolute form: http://host/path
            parsed = httptools.parse_url(url)
            path, query = parsed.path or b"/", parsed.query or b""
        text = path.decode("latin-1")
        if "%" in text:
            text = unquote(text, errors="surrogateescape")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self._queue(Request(self, parser.get_method().decode(), text, query.decode("latin-1"), self.headers, body,
                            parser.get_http_version(), parser.should_keep_alive()))

    # ---------------------------------------------------------------------------------------- answering
    def _malformed_response(self, what: str) -> Response:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.warning("malformed HTTP request from %s: %s", peer[0] if peer else "?", what[:200])
        return error(400, f"malformed HTTP request: {what}", close=True)

    def _unreadable(self) -> None:
        what = f"Can not decode content-encoding: {self.inflate.encoding}"
        log.warning("unreadable request body: %s", what)
        self.answer_first = error(400, f"the request body could not be read: {what}", close=True)

    def _malformed(self, what: str) -> None:
        self._refuse(self._malformed_response(what))

    def _too_large(self, before_body: bool) -> None:
        """Answer 413 now. A client waiting for ``100 Continue`` before sending the body is answered and
        closed at once; from any other, the rest of the body is read and dropped (for up to ``LINGER``
        seconds) before closing, so that a client still sending it sees the answer rather than a reset."""
        resp = error(413, f"the request body is larger than {self.front.max_body} bytes", close=True)
        if before_body:
            self._refuse(resp)
            return
        self.dropping = True
        self.linger_until = self.loop.time() + LINGER
        self._queue(resp)

    def _refuse(self, response: Response) -> None:
        """Answer (after any answers due before) and close; read nothing more unless dropping a body."""
        if not self.dropping:
            self.broken = True
        self.in_head = False
        self._queue(response)

    def _queue(self, item: Request | Response) -> None:
        self.queue.append(item)
        if self.task is None:
            self.task = self.loop.create_task(self._serve())
        elif len(self.queue) >= PIPELINE and self.transport is not None:
            self.transport.pause_reading()

    async def _serve(self) -> None:
        """Answer the queued requests in order."""
        try:
            while self.queue and self.transport is not None:
                item = self.queue.popleft()
                if len(self.queue) == PIPELINE - 1:
                    self.transport.resume_reading()
                if isinstance(item, Response):
                    close = True
                    self.transport.write(self._whole(item, "1.1", False, None))
                else:
                    close = not await self._answer(item)
                if close or self.front.draining or (self.broken and not self.queue):
                    self.queue.clear()
                    if not self.dropping and self.transport is not None:
                        self.transport.close()
                    return
        finally:
            self.task = None
            if not self.queue and not self.in_message and self.idle_since is None:
                self.idle_since = time.monotonic()
                self.last_seen = self.loop.time()

    async def _answer(self, request: Request) -> bool:
        """Answer one request; whether the connection stays open."""
        found = self.front.router.find(request)
        self.answering = False
        try:
            if isinstance(found, Response):
                resp: Response | Stream = found
            else:
                resp = await found(request)
        except ConnectionError:  # the client left mid-answer
            self.abort()
            return False
        except HTTPError as err:
            resp = error(err.status, str(err), err.param)
        except Exception:  # a bug must not take the server down, nor show its insides to the client
            log.exception("unexpected error answering %s %s", request.method, request.path)
            if self.answering:  # part of an answer is out: the connection is broken
                self.abort()
                return False
            resp = error(500, "internal error (the server log has the details)")
        if isinstance(resp, Stream):
            if not resp.ended:  # the handler returned mid-answer: cut off
                self.abort()
                return False
            return request.keep_alive and not self.front.draining
        keep = request.keep_alive and not resp.close and not self.front.draining
        if self.transport is not None:
            self.transport.write(self._whole(resp, request.version, keep, request.method))
        return keep

    def head(self, status: int, headers: dict[str, str], framing: bytes, keep: bool, version: str = "1.1") -> bytes:
        """The status line and headers of an answer, up to and including the blank line."""
        reason = REASONS.get(status, b"Unknown")
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1", "replace")
        conn = b"" if keep and version != "1.0" else b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n"
        return b"HTTP/1.1 %d %s\r\n%s%s%s%s\r\n" % (status, reason, lines, framing, self.front.trailer, conn)

    def _whole(self, resp: Response, version: str, keep: bool, method: str | None) -> bytes:
        body = resp.body
        head = self.head(resp.status, resp.headers, b"Content-Length: %d\r\n" % len(body), keep, version)
        return head if method == "HEAD" else head + body

    async def send(self, data: bytes) -> None:
        """Write, then wait while the client's socket buffer is full."""
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        self.transport.write(data)
        if self.writable is not None:
            await self.writable


class _Inflate:
    """A gzip or deflate request body, decoded as it arrives, never past a given size."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self.d: Any = None
        self.data = b""

    def feed(self, data: bytes, limit: int) -> bytes:
        if self.d is None:
            # gzip; deflate as zlib data, or raw deflate (what some clients send), told apart by the first byte
            wbits = 16 + zlib.MAX_WBITS if self.encoding == "gzip" else zlib.MAX_WBITS if data[0] & 0xF == 8 \
                else -zlib.MAX_WBITS
            self.d = zlib.decompressobj(wbits)
        out = self.d.decompress(data, limit)  # at most ``limit`` bytes: past it, the caller answers 413
        return out

    def end(self) -> bytes:
        if self.d is None:
            return b""
        out = self.d.flush()
        if not self.d.eof:
            raise zlib.error("the compressed body ended early")
        return out
