"""The gateway: an OpenAI-compatible reverse proxy that asks the endpoint picker where each request goes.

Per request: read and check the body, admit it (sheddable requests get 429 when the pool is
saturated), schedule it, tell the plugins where it went (the prefix index learns), proxy it and
stream the answer through as it arrives. If the chosen endpoint cannot be reached, answers 5xx, or
sends no first byte within ``first_byte_timeout`` (or leaves rotation as hung meanwhile), the
request is scheduled again without it; a 4xx passes through, and once bytes have reached the client
nothing is retried. A client that disconnects cancels the upstream request.

The hop is kept cheap (docs/results/gateway.md has the profile): uvloop runs the event loop,
clients are served by the gateway's own HTTP/1.1 server (``kit.gateway.front``: httptools, with the
simulator's limits), the body is parsed by orjson and forwarded as received, the endpoints are reached
through kept-alive connections of the gateway's own client (``kit.gateway.upstream``), an answer that
is complete when its first bytes arrive goes out in one write with its length, a streamed one chunk
by chunk as it arrives, and counters are plain numbers read when ``/metrics`` is.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from kit.gateway.datastore import Datastore
from kit.gateway.front import Front, Request, Response, Router, Stream, error, json_response
from kit.gateway.metrics import EPP_NAMES, Buckets, PoolGauges, Tally
from kit.gateway.settings import GatewaySettings
from kit.gateway.upstream import Answer, ConnectError, ConnectTimeout, Pool, ReadTimeout, UpstreamError
from kit.http import (
    ENDPOINT_HEADER,
    MAX_JSON_DEPTH,
    OBJECTIVE_HEADER,
    REQUEST_ID_HEADER,
    error_body,
    parse_json,
    run_server,
)
from kit.picker import Endpoint, InferenceRequest, LoadedConfig, NoEndpoints, Unparseable

_RETRY = object()
GC_THRESHOLD = 20_000  # allocations between young-generation collections (Python's default: 700)
# Passed on from the endpoint's answer besides Content-Type: (name, as the upstream client keys it).
PASSED_HEADERS = (("Cache-Control", "cache-control"), ("Content-Encoding", "content-encoding"))


class Gateway:
    """Routes and proxies requests for one model over a pool of endpoints."""

    def __init__(self, config: LoadedConfig, endpoints: list[Endpoint], model: str, *,
                 objectives: dict[str, int] | None = None, settings: GatewaySettings | None = None):
        self.config = config
        self.scheduler = config.scheduler
        self.settings = s = settings or GatewaySettings()
        self.datastore = Datastore(endpoints, s)
        self.model = model
        self.objectives = objectives or {}
        self.upstream = Pool(s.connect_timeout, read_timeout=s.inter_token_timeout)
        r = self.registry = CollectorRegistry()
        self.requests = Tally("kit_gateway_requests", "Requests by serving endpoint and status code.",
                              ["endpoint", "code"])
        self.retries = Tally("kit_gateway_retries", "Requests re-scheduled after an endpoint failed.", ["endpoint"])
        (attempts, attempt_aliases), (latency, latency_aliases), bounds = EPP_NAMES[config.release]
        self.attempts = Tally(attempts, "Scheduling attempts.", ["status"], attempt_aliases)
        for collector in (self.requests, self.retries, self.attempts,
                          PoolGauges(self.datastore.endpoints, self.scheduler.gauges)):
            r.register(collector)
        self.sched_latency = Buckets(latency, "Time to pick an endpoint.", bounds, latency_aliases)
        r.register(self.sched_latency)
        self.router = r = Router()
        for method, path, handler in (
                ("POST", "/v1/completions", self.generate), ("POST", "/v1/chat/completions", self.generate),
                ("GET", "/v1/models", self.models), ("GET", "/health", self.health), ("GET", "/ready", self.ready),
                ("GET", "/metrics", self.prometheus), ("GET", "/decisions", self.decisions),
                ("GET", "/decisions/", self.decision), ("GET", "/endpoints", self.endpoints),
                ("GET", "/config", self.effective_config)):
            r.add(method, path, handler)

    async def start(self, host: str, port: int) -> Front:
        """Start scraping the endpoints and serving on ``host:port``; the ``Front``'s ``close`` stops both."""
        await self.datastore.start()
        front = Front(self.router, self.settings.server_limits(), self.settings.max_body, cleanup=self._stop)
        await front.start(host, port)
        return front

    async def _stop(self) -> None:
        await self.datastore.stop()
        await self.upstream.close()

    # ------------------------------------------------------------------ info routes
    async def health(self, _r: Request) -> Response:
        """Liveness: the gateway process answers."""
        return Response(200)

    async def ready(self, _r: Request) -> Response:
        """Readiness: at least one endpoint is in rotation."""
        if not self.datastore.healthy():
            why = "; ".join(f"{name}: {p}" for name, p in sorted(self.datastore.problems.items()))
            return error(503, f"no healthy endpoint ({why})" if why else "no healthy endpoint")
        return Response(200)

    async def models(self, _r: Request) -> Response:
        return json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm", "root": self.model}]})

    async def prometheus(self, _r: Request) -> Response:
        return Response(200, generate_latest(self.registry), {"Content-Type": "text/plain; charset=utf-8"})

    async def decisions(self, request: Request) -> Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return error(400, "limit must be an integer")
        recent = list(self.scheduler.recent)[-limit:] if limit > 0 else []
        return json_response([d.to_dict() for d in recent])

    async def decision(self, request: Request) -> Response:
        d = self.scheduler.find(request.tail)
        if d is None:
            return error(404, "no recent decision for that request id")
        return json_response(d.to_dict())

    async def endpoints(self, _r: Request) -> Response:
        now = time.monotonic()
        return json_response([{
            "name": ep.name, "url": ep.url, "healthy": ep.healthy, "in_flight": ep.in_flight,
            "metrics_age_s": None if not ep.updated else round(ep.age(now), 3),
            "problem": self.datastore.problems.get(ep.name),
            "waiting": ep.metrics.waiting, "running": ep.metrics.running, "kv_usage": ep.metrics.kv_usage,
            "prefix_hit_rate": ep.metrics.hit_rate} for ep in self.datastore.endpoints])

    async def effective_config(self, _r: Request) -> Response:
        return json_response({"config": self.config.effective, "warnings": self.config.warnings,
                              "source": self.config.source})

    # --------------------------------------------------------------------- proxying
    async def generate(self, request: Request) -> Response | Stream:
        raw = request.body
        body = _parse_body(raw)
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")
        chat = request.path.endswith("/chat/completions")
        if chat and not isinstance(body.get("messages"), list):
            return error(400, "messages: a list of messages is required", "messages")
        if not chat and "prompt" not in body:
            return error(400, "prompt: Field required", "prompt")
        model = body.get("model")
        if model is not None and model != self.model:
            return error(404, f"The model `{model}` does not exist.", "model")
        headers = request.headers
        try:  # v0.7: the OpenAI body as InferenceRequest.from_body reads it; v0.10: the configured parsers
            req = self.scheduler.request(
                body, request.path, self.model, headers=headers,
                priority=self.objectives.get(headers.get(OBJECTIVE_HEADER, ""), 0),
                request_id=headers.get(REQUEST_ID_HEADER) or f"{random.getrandbits(128):032x}")
        except Unparseable as exc:
            return error(400, str(exc))
        refused = self.scheduler.admit(req, self.datastore.endpoints)  # saturation, then any admitter plugin
        if refused:
            self.requests.inc("", "429")
            return error(429, refused)
        if self.scheduler.renders or self.scheduler.holds:  # tokens rendered by a model server; a batch window
            await self.scheduler.produce(req, self._render)
        tried: set[str] = set()
        for attempt in range(self.settings.max_attempts):
            start = time.perf_counter()
            try:
                decision, state = self.scheduler.schedule(req, self.datastore.endpoints, frozenset(tried))
            except NoEndpoints as exc:
                self.attempts.inc("failure")
                self.requests.inc("", "503")
                why = f"{exc}; tried {', '.join(sorted(tried))}" if tried else str(exc)
                return error(503, why)
            self.attempts.inc("success")
            ep = self.datastore.get(decision.picked[0])
            self.scheduler.pre_request(state, req, ep)
            self.sched_latency.observe(time.perf_counter() - start)
            self.scheduler.record(decision)
            ep.in_flight += 1
            try:
                result = await self._proxy(request, ep, raw, req, last=attempt == self.settings.max_attempts - 1)
            finally:
                ep.in_flight -= 1
                self.scheduler.response_complete(req, ep)
            if result is not _RETRY:
                return result
            tried.add(ep.name)
            self.retries.inc(ep.name)
        self.requests.inc("", "503")
        return error(503, f"every attempt failed; tried {', '.join(sorted(tried))}")

    async def _proxy(self, request: Request, ep: Endpoint, raw: bytes, req: InferenceRequest,
                     last: bool) -> Response | Stream | object:
        answer: Answer | None = None
        started = time.monotonic()
        try:
            async with self.datastore.watch(ep, self.settings.first_byte_timeout):
                answer = await self.upstream.post(ep.url, request.path, raw)
                first = await answer.read()
        except ConnectTimeout:  # as ambiguous as a timed-out scrape (a pause of this process?)
            self.datastore.mark_failed(ep, f"proxy: no connection within {self.settings.connect_timeout} s",
                                       since=started)
            return _RETRY
        except ConnectError as exc:  # refused: nothing listens there
            self.datastore.mark_failed(ep, f"proxy could not connect: {exc}")
            return _RETRY
        except TimeoutError:  # no first byte in time, or the endpoint left rotation meanwhile
            if answer is not None:
                answer.close()
            return _RETRY
        except UpstreamError as exc:  # reset or disconnected before answering
            if answer is not None:
                answer.close()
            self.datastore.mark_failed(ep, f"proxy: {exc}")
            return _RETRY
        except BaseException:  # cancelled: the client left
            if answer is not None:
                answer.close()
            raise
        try:
            if answer.status >= 500 and not last:
                return _RETRY  # nothing reached the client yet: try another endpoint
            self.scheduler.response_start(req, ep)  # the answer's first bytes (v0.10's in-flight load lets go)
            up = answer.headers
            headers = {"Content-Type": up.get("content-type", "application/json"), ENDPOINT_HEADER: ep.name,
                       REQUEST_ID_HEADER: req.request_id, **self.scheduler.response_headers(req, ep)}
            for name, key in PASSED_HEADERS:
                if key in up:
                    headers[name] = up[key]
            if answer.complete:  # the whole answer is in: pass it on in one write, with its length
                self.requests.inc(ep.name, str(answer.status))
                return Response(answer.status, first, headers)
            resp = request.stream(answer.status, headers)  # its headers go out with the first piece
            try:
                chunk = first
                while chunk and not answer.complete:  # each piece as it arrives; the last one with the end
                    await resp.write(chunk)
                    chunk = await answer.read()
            except ReadTimeout as exc:
                # The endpoint stalled mid-stream: end the client's stream cleanly, saying why, as vLLM ends a
                # stream that fails (an error event, then [DONE]); any other body can only be cut off.
                self.requests.inc(ep.name, "timeout")
                if not headers["Content-Type"].startswith("text/event-stream"):
                    resp.abort()
                    return resp
                await resp.end(_stream_error(504, f"the endpoint {ep.name} stalled mid-stream: {exc}"))
                return resp
            except UpstreamError:
                # The endpoint failed mid-answer: bytes already reached the client, so cut it off.
                self.requests.inc(ep.name, "broken")
                resp.abort()
                return resp
            await resp.end(chunk)
            self.requests.inc(ep.name, str(answer.status))
            return resp
        finally:
            answer.close()

    async def _render(self, url: str, body: Any, timeout: float) -> Any:
        """POST ``body`` as JSON to ``url`` through the gateway's client; the JSON answer (a token producer's
        render call). Raises on a status other than 200 or when the whole answer takes over ``timeout``."""
        u = urlsplit(url)
        base, path = f"{u.scheme}://{u.netloc}", u.path + (f"?{u.query}" if u.query else "")
        async with asyncio.timeout(timeout):
            answer = await self.upstream.post(base, path, orjson.dumps(body))
            try:
                parts = []
                while chunk := await answer.read():
                    parts.append(chunk)
            finally:
                answer.close()
        data = b"".join(parts)
        if answer.status != 200:
            raise UpstreamError(f"HTTP {answer.status}: {data[:200].decode(errors='replace')}")
        return orjson.loads(data)


def _parse_body(raw: bytes) -> Any:
    """``parse_json``'s result, from orjson where it can (3-4 times as fast on long prompts). orjson refuses
    whatever ``parse_json`` refuses (text that is not UTF-8, lone surrogates, bad JSON) and a few things it
    accepts (NaN, numbers out of a double's range); those, and any body that might nest too deep, go to
    ``parse_json``, which says what is wrong or parses them as before. (orjson reads an integer beyond 64
    bits as a float: only the prefix hash of a token-id prompt holding one would differ.)"""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return parse_json(raw)
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        return parse_json(raw)
    return data


def _stream_error(status: int, message: str) -> bytes:
    """An error event and the end of a server-sent event stream, as vLLM ends a stream that fails."""
    return b"data: %s\n\ndata: [DONE]\n\n" % orjson.dumps(error_body(status, message))


def endpoints_from_urls(urls: list[str]) -> list[Endpoint]:
    """Endpoints named ``host:port`` from base URLs."""
    out = []
    for u in urls:
        u = u.strip().rstrip("/")
        if not u:
            continue
        if "://" not in u:
            u = "http://" + u
        out.append(Endpoint(name=u.split("://", 1)[1], url=u))
    return out


async def start(gw: Gateway, host: str, port: int) -> Front:
    """Serve ``gw`` in the running loop until ``await front.close()``."""
    return await gw.start(host, port)


def serve(gw: Gateway, host: str, port: int) -> None:
    """Run the gateway until SIGTERM or SIGINT (the ``kit gateway`` command)."""

    def banner() -> list[str]:
        names = ", ".join(ep.name for ep in gw.datastore.endpoints)
        return [f"serving {gw.model} on http://{host}:{port} → {names} (scheduler config: {gw.config.source})",
                *(f"warning: {w}" for w in gw.config.warnings)]

    async def start() -> Front:
        front = await gw.start(host, port)
        # The cyclic garbage collector took ~7% of the gateway's CPU under load (perf), rescanning what
        # was loaded at start (modules, the picker) and running every 700 allocations: leave the former out of its
        # scans and run it less often (requests free nearly everything they allocate by reference counting).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 20)
        return front

    run_server(start, "kit gateway", banner, loop_factory=event_loop_factory())


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (it is a dependency except on Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
