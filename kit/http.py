"""HTTP plumbing shared by the simulator and the gateway: OpenAI-style errors, JSON bodies, and serving.

Both servers (the simulator's aiohttp app through ``start_app``, the gateway through its own server,
``kit.gateway.front``) are hardened alike for a server that anyone on the machine can reach: idle
connections are closed after ``ServerLimits.idle_timeout``; past ``max_connections`` the longest-idle
connection is closed to make room, or, if none is idle, the new one gets a JSON 503 (``make_room``),
so the process never runs out of file descriptors; malformed HTTP (an over-long header line, a bad
Content-Length, too many headers) gets a JSON 400 and one log line; repeated log lines are
rate-limited; and ``run_server`` drains either on SIGTERM. The gateway's server also gives each request a
deadline from its first byte (``request_timeout``) and bounds its head in all (``max_head_size``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import http_exceptions, web

from kit.errors import KitError

# Headers the gateway and its clients share (the first is the Inference Extension's name).
ENDPOINT_HEADER = "x-gateway-destination-endpoint"
REQUEST_ID_HEADER = "x-request-id"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
# A server started by the kit gets a random token in $KIT_INSTANCE and returns it on every response, so
# the kit can tell its own process from another one answering on the same port.
INSTANCE_ENV = "KIT_INSTANCE"
INSTANCE_HEADER = "x-kit-instance"
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 408: "RequestTimeout",
               413: "RequestEntityTooLarge", 417: "ExpectationFailed", 429: "RateLimitError",
               500: "InternalServerError", 501: "NotImplementedError", 503: "ServiceUnavailableError",
               504: "GatewayTimeoutError"}
MAX_JSON_DEPTH = 64  # deeper request bodies are refused (OpenAI bodies nest a handful of levels)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger("kit.http")


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The body of an OpenAI/vLLM-shaped JSON error."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "APIError"), "param": param,
                      "code": status}}


def error(status: int, message: str, param: str | None = None) -> web.Response:
    """An OpenAI/vLLM-shaped JSON error response."""
    return web.json_response(error_body(status, message, param), status=status)


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Send small writes at once (TCP_NODELAY): a streamed token must not wait for the peer's ACK."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class HTTPError(Exception):
    """Raised by a handler to answer with a JSON error (400 unless another status is given)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param

    def response(self) -> web.Response:
        return error(self.status, str(self), self.param)


# ------------------------------------------------------------------------------------------ JSON bodies
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(raw: bytes) -> Any:
    """Decode a JSON request body. Anything a client can get wrong is an HTTPError (400) that says
    what: not UTF-8, not JSON, nested deeper than ``MAX_JSON_DEPTH``, or a lone UTF-16 surrogate
    (``"\\ud800"``), which no UTF-8 text can hold."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HTTPError(f"the request body is not UTF-8 text (invalid byte at offset {err.start})") from None
    too_deep = False
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise HTTPError(f"the request body is not valid JSON: {err.msg} (line {err.lineno}, "
                        f"column {err.colno})") from None
    except RecursionError:  # deeper than the interpreter's stack
        too_deep = True
    # Only a body with many brackets can be deep: the walk runs on odd bodies alone.
    if too_deep or (raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _too_deep(data)):
        raise HTTPError(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(data):
        raise HTTPError("the request body has a lone UTF-16 surrogate escape (such as \\ud800), "
                        "which is not valid Unicode text")
    return data


def _too_deep(data: Any) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _has_lone_surrogate(data: Any) -> bool:
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):  # a valid pair decodes to one code point above U+FFFF
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


async def read_json(request: web.Request) -> Any:
    """The request body, parsed by ``parse_json``."""
    return parse_json(await request.read())


def _payload_problem(exc: BaseException) -> str:
    """aiohttp's payload errors read "400, message:\\n  <what>": keep the what."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else "the body ended early"


def json_errors(max_body: int) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Middleware: every failure becomes a JSON error, and nothing a client sends stops the server.

    An unexpected exception is logged once with its traceback and answered 500 without its text."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except HTTPError as err:
            return err.response()
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"the request body is larger than {max_body} bytes")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.reason)
        except web.RequestPayloadError as exc:  # e.g. a body that claims gzip and is not
            resp = error(400, f"the request body could not be read: {_payload_problem(exc)}")
            resp.force_close()  # the rest of the body cannot be parsed either
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:  # a bug must not take the server down, nor show its insides to the client
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return error(500, "internal error (the server log has the details)")

    return middleware


# ------------------------------------------------------------------------------------------------ serving
@dataclass(frozen=True)
class ServerLimits:
    """How a kit server treats its client connections; an app may carry its own under ``SERVER_LIMITS``."""

    # Longer than clients keep idle connections (aiohttp 15 s, the gateway's pool 30 s), so that a
    # client closes first and never reuses a connection the server is closing.
    idle_timeout: float = 60.0
    max_connections: int = 0  # 0: from the open-file limit (see capacity)
    max_line_size: int = 8190  # request line and each header line, in bytes (aiohttp's defaults)
    max_headers: int = 128
    # The gateway's own server only (aiohttp has its own rules): a request's head and body must arrive within
    # ``request_timeout`` seconds of its first byte (nginx's client header and body timeouts are 60 s each), and
    # its head may hold ``max_head_size`` bytes in all (nginx: 4 × 8 KiB; Node.js: 16 KiB).
    request_timeout: float = 60.0
    max_head_size: int = 65536


SERVER_LIMITS = web.AppKey("kit_server_limits", ServerLimits)


def open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit, as Go servers do; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def capacity(limits: ServerLimits, fd_limit: int) -> tuple[int, int]:
    """(connection cap, listen backlog) for a process that may open ``fd_limit`` files.

    asyncio accepts up to ``backlog`` connections in one go before any of them can be looked at, so
    the backlog is kept to an eighth of the limit; the cap is ``max_connections``, else half of what
    is left after 64 descriptors for the process and one backlog's burst (a proxied request holds a
    second descriptor upstream). 256 open files give a backlog of 32 and a cap of 80.
    """
    backlog = max(16, min(2048, fd_limit // 8))
    return limits.max_connections or max(16, (fd_limit - 64 - backlog) // 2), backlog


class Idle(Protocol):
    """A client connection as the connection cap sees it."""

    # Monotonic time since when no request is in progress (the connection waits for one, or is still reading
    # its head); None while a request's body is read or the request is answered.
    idle_since: float | None

    def close_idle(self) -> None: ...


def make_room(new: Idle, connections: Collection[Idle], cap: int) -> bool:
    """Whether ``new`` may be served with ``connections`` open (``new`` among them): past ``cap`` the
    longest-idle other connection is closed to make room; if none is idle, False (answer 503)."""
    if len(connections) <= cap:
        return True
    idle = [c for c in connections if c is not new and c.idle_since is not None]
    if not idle:
        log.warning("%d connections are open, the limit, and none is idle: answering 503", cap)
        return False
    victim = min(idle, key=lambda c: c.idle_since)  # type: ignore[arg-type, return-value]
    victim.idle_since = None
    victim.close_idle()
    return True


def over_cap_message(cap: int) -> str:
    return f"the server has {cap} connections open, its limit; retry shortly"


def line_too_long(limits: ServerLimits) -> str:
    return f"the request line or a header line is longer than {limits.max_line_size} bytes"


class RateLimit(logging.Filter):
    """At most one record of a kind (logger, message, exception type) every ``interval`` seconds;
    the next one that passes says how many were dropped."""

    def __init__(self, interval: float = 10.0, kinds: int = 1024):
        super().__init__()
        self.interval, self.kinds = interval, kinds
        self._seen: dict[tuple, list] = {}  # kind → [time last logged, dropped since]

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.getMessage()[:200], record.exc_info[0] if record.exc_info else None)
        now = time.monotonic()
        seen = self._seen.pop(kind, None)  # re-inserted below: the dict stays in least-recent order
        if seen and now - seen[0] < self.interval:
            seen[1] += 1
            self._seen[kind] = seen
            return False
        if seen and seen[1]:
            record.msg = f"{record.msg} [{seen[1]} more like this in the last {now - seen[0]:.0f} s not logged]"
        self._seen[kind] = [now, 0]
        if len(self._seen) > self.kinds:
            del self._seen[next(iter(self._seen))]
        return True


def log_to_stderr() -> None:
    """A server process logs warnings to stderr, one line each (tracebacks only for bugs), rate-limited."""
    root = logging.getLogger()
    if not root.handlers:  # leave a host that configured logging (pytest, a notebook) alone
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        handler.addFilter(RateLimit())
        root.addHandler(handler)


def _protocol_problem(exc: BaseException | None, message: str | None, limits: ServerLimits) -> str:
    """What was wrong with a request aiohttp's parser refused, in one line without the raw bytes."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return line_too_long(limits)
    text = getattr(exc, "message", None) or message or str(exc or "")
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "bad request")
    return re.split(r":\s*b['\"]", line)[0].rstrip(" :.")[:200]


class _Connection(web.RequestHandler):
    """aiohttp's per-connection handler, plus: it knows when it is idle (to be closed to make room),
    it is refused once the server holds ``cap`` connections and none is idle, and it answers
    requests the HTTP parser rejects with a JSON error and one log line (aiohttp answers text and
    logs a traceback each time; it has no hook for this: aio-libs/aiohttp#3287)."""

    def __init__(self, server: web.Server, *, cap: int, limits: ServerLimits, **kwargs: Any):
        super().__init__(server, keepalive_timeout=limits.idle_timeout, max_line_size=limits.max_line_size,
                         max_field_size=limits.max_line_size, max_headers=limits.max_headers, **kwargs)
        self.server, self.cap, self.limits = server, cap, limits
        self.idle_since: float | None = None  # monotonic time since when no request is in progress
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.idle_since = time.monotonic()
        self.refused = not make_room(self, self.server.connections, self.cap)  # type: ignore[arg-type]

    def close_idle(self) -> None:
        self.force_close()

    def data_received(self, data: bytes) -> None:
        self.idle_since = None
        super().data_received(data)

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time_: float | None) -> None:
        super().log_access(request, response, time_)
        self.idle_since = time.monotonic()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, web.RequestPayloadError | http_exceptions.HttpProcessingError):
            # A body that cannot be decoded, found while aiohttp drains it after the answer: bad
            # input, not a bug, so one line without the traceback.
            log.warning("unreadable request body: %s", _payload_problem(exc))
            return
        super().log_exception(*args, **kwargs)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):  # the client left mid-answer: nothing to send, nothing to report
            raise ConnectionError("the client closed the connection") from exc
        if status >= 500:  # an exception escaped the app's middleware: a bug
            log.error("unexpected error answering %s %s", request.method, request.path, exc_info=exc)
            resp = error(status, "internal error (the server log has the details)")
        else:
            what = _protocol_problem(exc, message, self.limits)
            log.warning("malformed HTTP request from %s: %s", request.remote, what)
            resp = error(status, f"malformed HTTP request: {what}")
        if request.writer.output_size > 0:  # part of an answer is out: the connection is broken
            raise ConnectionError("cannot send an error after the response started")
        if os.environ.get(INSTANCE_ENV):
            resp.headers[INSTANCE_HEADER] = os.environ[INSTANCE_ENV]
        resp.force_close()
        return resp


class _Site(web.BaseSite):
    """A TCP site whose connections are ``_Connection``s."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limits: ServerLimits):
        cap, backlog = capacity(limits, open_file_limit())
        super().__init__(runner, backlog=backlog)
        self.host, self.port, self.limits, self.cap = host, port, limits, cap

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def connection() -> _Connection:
            return _Connection(server, cap=self.cap, limits=self.limits, loop=loop, access_log=None)

        self._server = await loop.create_server(connection, self.host, self.port, backlog=self._backlog)


@web.middleware
async def _refuse_over_cap(request: web.Request, handler: Handler) -> web.StreamResponse:
    conn = request.protocol
    if isinstance(conn, _Connection) and conn.refused:
        resp = error(503, over_cap_message(conn.cap))
        resp.headers["Retry-After"] = "1"
        resp.force_close()
        return resp
    return await handler(request)


async def _instance_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers[INSTANCE_HEADER] = os.environ[INSTANCE_ENV]


def _with_own_expectations(handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]):
    """Wrap the app's entry point: an ``Expect`` other than 100-continue gets a JSON 417 here, where
    aiohttp would answer text before the app's middleware runs (or a 500, for a non-UTF-8 value)."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get("Expect")
        if expect is not None and expect.strip().lower() != "100-continue":
            resp = error(417, "the Expect header asks for something other than 100-continue")
            if os.environ.get(INSTANCE_ENV):
                resp.headers[INSTANCE_HEADER] = os.environ[INSTANCE_ENV]
            return resp
        return await handle(request)

    return handler


async def start_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` in the running loop with its ``SERVER_LIMITS`` (module docstring); a client that
    disconnects cancels its handler. With ``$KIT_INSTANCE`` set, every response carries it in
    ``x-kit-instance``."""
    log_to_stderr()
    limits = app.get(SERVER_LIMITS) or ServerLimits()
    if os.environ.get(INSTANCE_ENV) and _instance_header not in app.on_response_prepare:
        app.on_response_prepare.append(_instance_header)
    if _refuse_over_cap not in app.middlewares:
        app.middlewares.insert(0, _refuse_over_cap)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    assert runner.server is not None
    runner.server.request_handler = _with_own_expectations(runner.server.request_handler)
    await _Site(runner, host, port, limits).start()
    return runner


# Seconds a stopping server lets the requests it is answering finish (SIGTERM: stop accepting, drain, stop).
DRAIN_ENV = "KIT_DRAIN_GRACE"
DEFAULT_DRAIN_GRACE = 30.0


def drain_grace(raw: str | None = None) -> float:
    """The drain grace in seconds given as ``raw`` (default: ``$KIT_DRAIN_GRACE``); 30 when unset or empty."""
    raw = (os.environ.get(DRAIN_ENV, "") if raw is None else raw).strip()
    if not raw:
        return DEFAULT_DRAIN_GRACE
    try:
        grace = float(raw)
    except ValueError:
        grace = -1.0
    if not 0 <= grace < float("inf"):
        raise KitError(f"${DRAIN_ENV}={raw!r}: expected a number of seconds, 0 or more")
    return grace


class Serving(Protocol):
    """A started server, as ``run_server`` stops it."""

    async def stop_accepting(self) -> None:
        """Close the listening socket and the idle keep-alive connections; the others close after their answer."""

    def finished(self) -> Awaitable[Any]:
        """Done once no connection is left open."""

    def open_connections(self) -> int: ...

    def cut_off(self) -> None:
        """Close every connection still open, cancelling what it was doing."""

    async def close(self) -> None:
        """Release everything else (the app's own background work)."""


def run_server(start: Callable[[], Awaitable[Serving]], name: str, banner: Callable[[], list[str]],
               loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, printing ``banner()`` lines once up, then drain and stop; on an event
    loop from ``loop_factory`` if given (the gateway runs on uvloop).

    Draining: stop accepting connections, close idle keep-alive ones, and let the requests in progress finish
    for up to ``drain_grace()`` seconds; whatever is still open then (or at a second signal) is cut off.
    """
    grace = drain_grace()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await start()
        for line in banner():
            print(f"{name}: {line}", flush=True)
        await stop.wait()
        stop.clear()
        await server.stop_accepting()
        draining = asyncio.ensure_future(server.finished())
        second = asyncio.ensure_future(stop.wait())
        deadline = loop.time() + grace
        await asyncio.wait({draining, second}, timeout=min(0.1, grace), return_when=asyncio.FIRST_COMPLETED)
        if not draining.done() and not second.done():
            print(f"{name}: stopping: no new connections; {server.open_connections()} open connection(s) have "
                  f"up to {grace:g} s to finish", flush=True)
            await asyncio.wait({draining, second}, timeout=max(0.0, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
        if not draining.done():
            left = server.open_connections()
            server.cut_off()
            draining.cancel()
            why = "at a second signal" if stop.is_set() else f"after the {grace:g} s grace"
            print(f"{name}: cut off {left} open connection(s) {why}", flush=True)
        second.cancel()
        await server.close()
        print(f"{name}: stopped", flush=True)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


class _AppServing:
    """An aiohttp app started by ``start_app``, as ``run_server`` stops it."""

    def __init__(self, runner: web.AppRunner, grace: float):
        self.runner, self.grace = runner, grace
        self.server = runner.server
        assert self.server is not None

    async def stop_accepting(self) -> None:
        for site in list(self.runner.sites):
            await site.stop()
        # aiohttp's own shutdown closes idle keep-alive connections at once and waits for the requests in progress.
        self.server.pre_shutdown()
        await asyncio.sleep(0)
        self._shutdown = asyncio.ensure_future(self.server.shutdown(self.grace))

    def finished(self) -> Awaitable[Any]:
        return self._shutdown

    def open_connections(self) -> int:
        return len(self.server.connections)

    def cut_off(self) -> None:
        for conn in list(self.server.connections):
            conn.force_close()
        self._shutdown.cancel()

    async def close(self) -> None:
        await self.runner.cleanup()


def run_app(app: web.Application, host: str, port: int, name: str, banner: Callable[[], list[str]],
            loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    """``run_server`` for an aiohttp app (the simulator)."""

    async def start() -> Serving:
        return _AppServing(await start_app(app, host, port), drain_grace())

    run_server(start, name, banner, loop_factory)
