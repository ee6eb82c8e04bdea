"""HTTP plumbing shared by the simulator and the gateway: OpenAI-style errors and serving an app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from kit.errors import KitError

# Headers the gateway and its clients share (the first is the Inference Extension's name).
ENDPOINT_HEADER = "x-gateway-destination-endpoint"
REQUEST_ID_HEADER = "x-request-id"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
# A server started by the kit gets a random token in $KIT_INSTANCE and returns it on every response, so
# the kit can tell its own process from another one answering on the same port.
INSTANCE_ENV = "KIT_INSTANCE"
INSTANCE_HEADER = "x-kit-instance"
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 413: "RequestEntityTooLarge",
               429: "RateLimitError", 500: "InternalServerError", 503: "ServiceUnavailableError"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, param: str | None = None) -> web.Response:
    """An OpenAI/vLLM-shaped JSON error response."""
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "APIError"), "param": param,
                      "code": status}}
    return web.json_response(body, status=status)


class HTTPError(Exception):
    """Raised by a handler to answer with a JSON error (400 unless another status is given)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param

    def response(self) -> web.Response:
        return error(self.status, str(self), self.param)


def json_errors(max_body: int) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Middleware: every failure becomes a JSON error, and nothing a client sends stops the server."""

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
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # a bug must not take the server down
            return error(500, f"internal error: {type(exc).__name__}: {exc}")

    return middleware


async def _instance_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers[INSTANCE_HEADER] = os.environ[INSTANCE_ENV]


async def start_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` in the running loop; a client that disconnects cancels its handler. With
    ``$KIT_INSTANCE`` set, every response carries it in ``x-kit-instance``."""
    if os.environ.get(INSTANCE_ENV) and _instance_header not in app.on_response_prepare:
        app.on_response_prepare.append(_instance_header)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=2048).start()
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


def run_app(app: web.Application, host: str, port: int, name: str, banner: Callable[[], list[str]]) -> None:
    """Serve until SIGTERM or SIGINT, printing ``banner()`` lines once up, then drain and stop.

    Draining: stop accepting connections, close idle keep-alive ones, and let the requests in progress finish
    for up to ``drain_grace()`` seconds; whatever is still open then (or at a second signal) is cut off.
    """
    grace = drain_grace()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = await start_app(app, host, port)
        for line in banner():
            print(f"{name}: {line}", flush=True)
        await stop.wait()
        stop.clear()
        for site in list(runner.sites):
            await site.stop()
        server = runner.server
        if server is not None:
            for conn in server.connections:
                conn.close()  # an idle connection closes now, a busy one once its answer is complete
            await asyncio.sleep(0)
            if server.connections:
                print(f"{name}: stopping: no new connections; {len(server.connections)} open connection(s) have "
                      f"up to {grace:g} s to finish", flush=True)
            deadline = loop.time() + grace
            while server.connections and loop.time() < deadline and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)
            if left := server.connections:
                for conn in left:
                    conn.force_close()
                why = "at a second signal" if stop.is_set() else f"after the {grace:g} s grace"
                print(f"{name}: cut off {len(left)} open connection(s) {why}", flush=True)
        await runner.cleanup()
        print(f"{name}: stopped", flush=True)

    asyncio.run(main())
