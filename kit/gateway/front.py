"""The gateway's HTTP/1.1 server: an asyncio protocol per client connection, requests parsed by httptools.

aiohttp's server cost the gateway about 70 µs of CPU per request more than a bare httptools protocol
(docs/results/gateway.md), so the gateway serves its clients through this module; the simulator
stays on aiohttp (``kit.http.start_app``). Both keep the same hardening, with the limits and the
drain sequence shared in ``kit.http``:

* keep-alive and pipelining: requests on one connection are answered in order, one at a time, by one
  task, which lets other connections' work run between two answers. What one connection can make the
  server hold is bounded: input is parsed ``SLICE`` bytes at a time (a body of known length at once), and
  once ``PIPELINE`` requests wait, or an answer waits for the client's socket buffer to drain, reading
  pauses and the rest of what was read is held unparsed. A client that disconnects cancels the task.
* ``ServerLimits``: a request's head and body must arrive within ``request_timeout`` of its first byte
  (else a JSON 408 and a close), however steadily it trickles in; a connection idle longer than
  ``idle_timeout`` closes, and so does one whose client has read nothing of its answers for that long.
  Past the connection cap the longest-idle connection (one still sending a request head counts as idle)
  closes to make room, or, if none is idle, the new one gets a JSON 503 (``kit.http.make_room``).
* malformed HTTP (a request line or header line over ``max_line_size``, finished or not; more than
  ``max_headers`` header lines, repeated names counted; a head over ``max_head_size`` bytes; anything
  llhttp refuses; more than one space between the parts of the request line; a missing, repeated or
  invalid ``Host`` (RFC 9112 §3.2; HTTP/1.0 may omit it); an upgrade request) gets a JSON 400, one
  rate-limited log line, and the connection closes. A transfer coding before chunked (``gzip, chunked``)
  gets a JSON 501, ``CONNECT`` a JSON 405; an HTTP/1.0 request with a transfer coding is answered, then the
  connection closes (RFC 9112 §6.1). A body over ``max_body`` bytes (as sent, or once decompressed) gets
  a JSON 413, the rest of it read and dropped for up to ``LINGER`` seconds so the client sees the answer.
* ``Expect: 100-continue`` gets its interim answer as soon as the headers are in; any other expectation
  a JSON 417. Bodies sent ``gzip`` or ``deflate`` encoded are decoded; other encodings pass as sent,
  except ``br`` and ``zstd``, which get a 400.
* every answer carries ``Date`` and, with ``$KIT_INSTANCE`` set, ``x-kit-instance``.

docs/explanation/gateway-http-server.md says why the gateway has its own server rather than a well-kept one.

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
import re
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
SLICE = 4096  # bytes parsed at a time: reading can pause between two slices, the rest of a read held
LINGER = 10.0  # seconds the rest of a refused body is read and dropped before the connection closes
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
JSON = "application/json; charset=utf-8"
_NAMES = {n.encode(): n.lower() for n in ("Host", "Content-Type", "Content-Length", "Accept", "User-Agent",
                                          "Connection", "Accept-Encoding", "Authorization")}  # as clients spell them
_NAMES.update({k.lower(): v for k, v in _NAMES.items()})
_NONE: list = []  # (shared, never appended to: a request's repeated headers until it has some)
# Hosts found valid, and request lines as they must begin, by (method, target): most requests repeat a few
_HOSTS: set[str] = set()
_LINES: dict[tuple[bytes, bytes], bytes] = {}


def _line(method: bytes, url: bytes) -> bytes:
    line = b"%s %s HTTP/" % (method, url)
    if len(_LINES) < 256:
        _LINES[method, url] = line
    return line

# RFC 9112 §3.2 / RFC 3986: a registered name or IP literal, then an optional port (an empty Host is valid)
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~!$&'()*+,;=%]*)(?::[0-9]*)?")


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
        for conn in list(self.connections):
            conn.check(now)
        lim = self.limits
        self._tick = loop.call_at(now + min(1.0, lim.idle_timeout / 4, lim.request_timeout / 4), self._every_second)

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

    # (more attributes than CPython shares dict keys for: with slots, reading and setting them stays fast)
    __slots__ = ("__weakref__", "answer_first", "answering", "begun_in", "blocked_since", "body", "body_left",
                 "body_size",
                 "broken", "close_after", "dropping", "exact", "fresh", "front", "head_raw", "head_raw_size",
                 "head_size", "header_count", "headers", "held", "idle_since", "in_head", "in_message", "inflate",
                 "last_seen", "line_size", "linger_until", "loop", "max_head", "max_headers", "max_line", "method",
                 "parser", "paused", "piece", "pieces", "queue", "refused", "repeated", "started", "task",
                 "transport", "url", "url_size", "version", "writable")

    def __init__(self, front: Front):
        self.front = front
        lim = front.limits
        self.max_line, self.max_headers, self.max_head = lim.max_line_size, lim.max_headers, lim.max_head_size
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[Request | Response] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.idle_since: float | None = time.monotonic()
        self.last_seen = self.loop.time()  # when the connection last became idle
        self.answering = False  # part of the current answer was sent
        self.refused = False  # over the connection cap: every request gets a 503
        self.broken = False  # the parser gave up: nothing more is read
        self.dropping = False  # reading and dropping the rest of a body already answered
        self.linger_until = 0.0
        self.writable: asyncio.Future[None] | None = None  # set while the client's socket buffer is full
        self.blocked_since = 0.0
        self.paused = False  # reading paused: requests wait to be answered, or answers wait to be sent
        self.held: bytes | memoryview = b""  # received but not parsed while reading is paused (part of one read)
        # what the parser is parsing: the piece of what was received, its number, and whether it began between
        # two requests
        self.piece: bytes | memoryview = b""
        self.pieces = 0
        self.fresh = True
        # the request being parsed
        self.started = 0.0  # when its first byte arrived (0: not noted yet)
        self.begun_in = -1  # the piece its first byte was in, and whether it was that piece's first request
        self.exact = False
        self.head_raw: list[bytes] = []  # the start of its head as received, when it spans pieces (bounded)
        self.head_raw_size = 0
        self.line_size = 0  # bytes of the unfinished header line, when the head spans pieces
        self.url: list[bytes] = []
        self.url_size = 0
        self.headers: dict[str, str] = {}
        self.header_count = self.head_size = 0
        self.repeated: list[tuple[str, str]] = []  # repeated headers (the first value is in ``headers``)
        self.version = "1.1"
        self.method = b""
        self.in_head = self.in_message = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_left = 0  # bytes of a body of known length still to come
        self.inflate: Any = None
        self.answer_first: Response | None = None  # answered without a handler once the body is in
        self.close_after = False  # answer this request, then close (its framing cannot be trusted)

    # ---------------------------------------------------------------------------------------- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        no_delay(transport)
        front = self.front
        front.connections.add(self)
        self.refused = not make_room(self, front.connections, front.cap)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.held = b""
        # The parser holds this connection's callbacks: without it, reference counting frees the connection (and
        # the buffers it holds) now, not at the next full collection, which the gateway runs rarely.
        self.parser = None  # type: ignore[assignment]
        self.front._forget(self)
        if self.task is not None:
            self.task.cancel()  # the client left: what it asked for is cancelled (upstream too)
        if self.writable is not None and not self.writable.done():
            self.writable.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        """The client's socket buffer is full: answers wait, and so does reading (the client is not reading)."""
        self.writable = self.loop.create_future()
        self.blocked_since = self.loop.time()
        self._stop_reading()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None
        self._read_more()

    def data_received(self, data: bytes | memoryview) -> None:  # type: ignore[override]
        if self.broken:
            return
        if self.dropping and self.loop.time() > self.linger_until:
            self.abort()
            return
        if len(data) <= SLICE:
            self._parse(data)
            return
        # In slices, so that reading can pause between two (the rest is held): a few requests' worth at a time,
        # or the rest of a body of known length at once.
        view, i, end = memoryview(data), 0, len(data)
        while i < end:
            if self.paused:
                self.held = view[i:]
                return
            if self.body_left > SLICE and self.in_message and not self.in_head:  # the rest of a body, at once
                step = self.body_left
                self._parse(view[i:i + step])
            else:
                step = SLICE
                self._parse(bytes(view[i:i + step]))
            if self.broken:
                return
            i += step

    def _parse(self, piece: bytes | memoryview) -> None:
        self.piece, self.fresh = piece, not self.in_message
        self.pieces = n = self.pieces + 1
        try:
            self.parser.feed_data(piece)
        except _Refused as exc:
            self._refuse(exc.response)
            return
        except httptools.HttpParserUpgrade:  # answered as an ordinary request; then the connection closes
            self.broken = True
            if not self.queue and self.task is None:
                self._malformed("protocol upgrades are not supported")
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.response)
            else:  # a bug in a callback: the request is answered, the server goes on
                log.error("unexpected error parsing a request", exc_info=exc.__context__ or exc)
                self._refuse(error(500, "internal error (the server log has the details)", close=True))
            return
        except httptools.HttpParserError as exc:
            self._malformed(str(exc) or "bad request")
            return
        if self.in_head:  # the head goes on past this piece: what it holds meanwhile stays bounded
            if self.begun_in == n:  # it began in this piece: count from the next one
                self.line_size = 0
                self.head_raw = [bytes(piece)]
                self.head_raw_size = len(piece)
                return
            piece = bytes(piece)
            nl = piece.rfind(b"\n")
            self.line_size = len(piece) - nl - 1 if nl >= 0 else self.line_size + len(piece)
            if self.line_size > self.max_line:
                self._malformed(line_too_long(self.front.limits))
            elif self.head_raw_size < SLICE + self.max_line:  # the request line is in there
                self.head_raw.append(piece)
                self.head_raw_size += len(piece)

    def check(self, now: float) -> None:
        """Deadlines (``Front``'s ticker, every second or so): a request must arrive within ``request_timeout`` of its
        first byte, an idle connection closes after ``idle_timeout``, and so does one whose client stopped
        reading its answers."""
        limits = self.front.limits
        if self.task is None:
            if not self.in_message:
                if now - self.last_seen > limits.idle_timeout:
                    self.close_idle()
            elif not self.started:
                self.started = now
            elif now - self.started > limits.request_timeout:
                if self.dropping:
                    self.abort()
                    return
                peer = self.transport.get_extra_info("peername") if self.transport is not None else None
                log.warning("request from %s not received within %g s: closing", peer[0] if peer else "?",
                            limits.request_timeout)
                self.broken, self.in_message, self.in_head = True, False, False
                self._queue(error(408, f"the request was not received within {limits.request_timeout:g} s of "
                                       "its first byte", close=True))
        elif self.writable is not None and now - self.blocked_since > limits.idle_timeout:
            self.abort()  # the client has read nothing of its answers for that long

    def close_idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _stop_reading(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _read_more(self) -> None:
        """Resume reading once fewer than ``PIPELINE`` requests wait and no answer waits to be sent."""
        if (not self.paused or len(self.queue) >= PIPELINE or self.writable is not None or self.transport is None
                or self.transport.is_closing()):
            return
        self.paused = False
        held, self.held = self.held, b""
        if held:
            self.data_received(held)  # (may pause again)
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -------------------------------------------------------------------------------- httptools callbacks
    def on_message_begin(self) -> None:
        self.in_message = self.in_head = True
        self.started = 0.0  # (noted by ``check``, to within its period)
        self.begun_in, self.exact, self.fresh = self.pieces, self.fresh, False
        self.url, self.url_size, self.headers, self.repeated = [], 0, {}, _NONE
        self.header_count = self.head_size = 0
        self.body, self.body_size, self.inflate, self.answer_first = [], 0, None, None

    def on_url(self, url: bytes) -> None:
        self.url.append(url)
        self.url_size += len(url)
        if self.url_size > self.max_line:
            raise _Refused(self._malformed_response(line_too_long(self.front.limits)))

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        self.header_count += 1
        size = len(name) + len(value) + 2
        self.head_size += size
        if size > self.max_line or self.header_count > self.max_headers or self.head_size > self.max_head:
            lim = self.front.limits
            if self.header_count > lim.max_headers:
                what = "Too many headers received"
            elif size > lim.max_line_size:
                what = line_too_long(lim)
            else:
                what = f"the request's headers are larger than {lim.max_head_size} bytes in all"
            raise _Refused(self._malformed_response(what))
        key = _NAMES.get(name) or name.decode("latin-1").lower()
        if key not in headers:
            headers[key] = value.decode("latin-1")
        else:
            if not self.repeated:
                self.repeated = []
            self.repeated.append((key, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        self.version = version = parser.get_http_version()
        self.method = method = parser.get_method()
        url = self.url[0] if len(self.url) == 1 else b"".join(self.url)
        line = _LINES.get((method, url)) or _line(method, url)
        if not (self.exact and self.begun_in == self.pieces and self.piece.startswith(line)):
            self._check_request_line(method, url, line)
        h = self.headers
        if self.refused:
            return
        self.idle_since = None  # a request is in progress (no longer a connection that may be closed to make room)
        host = h.get("host")
        if self.repeated or host not in _HOSTS or "transfer-encoding" in h:
            self._check_framing(h, version)
        if "expect" in h and h["expect"].strip().lower() != "100-continue":
            self.answer_first = error(417, "the Expect header asks for something other than 100-continue")
            return
        length = h.get("content-length")
        self.body_left = int(length) if length is not None else 0  # (llhttp checked it is a number)
        if self.body_left > self.front.max_body:
            self._too_large(before_body="expect" in h)
            return
        encoding = h.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "deflate"):
            self.inflate = _Inflate(encoding)
        elif encoding in ("br", "zstd"):
            raise _Refused(self._malformed_response(f"Content-Encoding {encoding} is not supported (gzip and "
                                                    "deflate are)"))
        if "expect" in h and self.transport is not None and not self.queue and self.task is None and version == "1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # (not while earlier answers are due)

    def _check_request_line(self, method: bytes, url: bytes, line: bytes) -> None:
        """The request line must be the method, one space, the target, one space and the version (RFC 9112 §3;
        llhttp lets more spaces through). httptools does not say where in the bytes a request began: when it began
        a piece (the common case) the line is checked where it must be; when it began after another request in
        the same piece, the piece must not hold this line with more spaces (so a malformed line is always found;
        only the same client's earlier bytes could hold such a line instead)."""
        if self.begun_in == self.pieces:
            hay = bytes(self.piece)
        else:  # the head spanned pieces
            hay = b"".join(self.head_raw) + bytes(self.piece[:len(line) + 2])
            self.head_raw = []
        if self.exact:
            if hay.startswith(line) or hay.lstrip(b"\r\n").startswith(line):  # (CRLFs may come before a request)
                return
        elif not re.search(b"%s(?: {2,}%s +| %s {2,})HTTP/" % (re.escape(method), re.escape(url), re.escape(url)),
                           hay):
            return
        raise _Refused(self._malformed_response("the request line must be the method, the target and the HTTP "
                                                "version, each one space apart"))

    def _check_framing(self, h: dict[str, str], version: str) -> None:
        """RFC 9112: one valid ``Host`` (§3.2: none at all only in HTTP/1.0); only the chunked transfer coding
        (§6.1: another one before it gets 501), and an HTTP/1.0 message with one is answered, then the connection
        closes."""
        hosts = [v for k, v in self.repeated if k == "host"]
        if hosts:
            raise _Refused(self._malformed_response("the request has more than one Host header"))
        host = h.get("host")
        if host is None:
            if version != "1.0":
                raise _Refused(self._malformed_response("the request has no Host header (HTTP/1.1 requires one)"))
        elif not _HOST.fullmatch(host):
            raise _Refused(self._malformed_response("the Host header is not a host name or address, with an "
                                                    "optional port"))
        elif len(_HOSTS) < 256:
            _HOSTS.add(host)
        te = h.get("transfer-encoding")
        if te is not None:
            codings = [c.strip().lower() for v in (te, *(v for k, v in self.repeated if k == "transfer-encoding"))
                       for c in v.split(",") if c.strip()]
            # (llhttp answers 400 where RFC 9112 §6.3 asks for it: chunked not last, or a Content-Length too)
            if codings[-1:] == ["chunked"] and codings.count("chunked") == 1 and len(codings) > 1 \
                    and "content-length" not in h:
                resp = error(501, f"Transfer-Encoding {', '.join(codings)} is not supported (only chunked is)",
                             close=True)
                log.warning("unsupported transfer coding in a request: %s", ", ".join(codings)[:200])
                raise _Refused(resp)
            if version == "1.0":
                self.close_after = True

    def on_body(self, body: bytes) -> None:
        self.body_left -= len(body)
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
        method = self.method
        if method == b"CONNECT":
            resp = error(405, "CONNECT is not supported: this server is not a forward proxy", close=True)
            resp.headers["Allow"] = "GET,HEAD,POST"
            self._refuse(resp)
            return
        url = self.url[0] if len(self.url) == 1 else b"".join(self.url)
        path, _, query = url.partition(b"?")
        if not path.startswith(b"/"):  # absolute form: http://host/path
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._malformed("the request target is neither a path nor an absolute URL")
                return
            path, query = parsed.path or b"/", parsed.query or b""
        text = path.decode("latin-1")
        if "%" in text:
            text = unquote(text, errors="surrogateescape")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        keep = parser.should_keep_alive() and not self.close_after
        if self.close_after:
            self.broken = True  # nothing after this request is read (RFC 9112 §6.1)
        self._queue(Request(self, method.decode(), text, query.decode("latin-1"), self.headers, body,
                            self.version, keep))

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
            self.held = b""
        self.in_head = False
        self._queue(response)

    def _queue(self, item: Request | Response) -> None:
        self.queue.append(item)
        if self.task is None:
            self.task = self.loop.create_task(self._serve())
        elif len(self.queue) >= PIPELINE:
            self._stop_reading()

    async def _serve(self) -> None:
        """Answer the queued requests in order, one at a time; between two, let other connections' work run,
        and wait while the client's socket buffer is full."""
        try:
            while self.queue and self.transport is not None:
                item = self.queue.popleft()
                if self.paused:
                    self._read_more()
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
                if self.writable is not None:
                    await self.writable
                elif self.queue:
                    await asyncio.sleep(0)
        except ConnectionError:  # the client left while its answers waited
            self.queue.clear()
        finally:
            self.task = None
            now = self.loop.time()
            if self.in_message:  # a request begun while earlier ones were answered gets its full time
                self.started = now
            else:
                self.last_seen = now
            if self.idle_since is None and not self.queue and (not self.in_message or self.in_head):
                self.idle_since = time.monotonic()
            if self.paused:
                self._read_more()

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
