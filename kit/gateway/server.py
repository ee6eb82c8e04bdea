"""The gateway: an OpenAI-compatible reverse proxy that asks the endpoint picker where each request goes.

Per request: read and check the body, admit it (sheddable requests get 429 when the pool is
saturated), schedule it, tell the plugins where it went (the prefix index learns), proxy it and
stream the answer through as it arrives. If the chosen endpoint cannot be reached, answers 5xx, or
sends no first byte within ``first_byte_timeout`` (or leaves rotation as hung meanwhile), the
request is scheduled again without it; a 4xx passes through, and once bytes have reached the client
nothing is retried. A client that disconnects cancels the upstream request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kit.gateway.datastore import Datastore
from kit.gateway.settings import GatewaySettings
from kit.http import (
    ENDPOINT_HEADER,
    OBJECTIVE_HEADER,
    REQUEST_ID_HEADER,
    SERVER_LIMITS,
    error,
    json_errors,
    parse_json,
    run_app,
    start_app,
)
from kit.picker import Endpoint, InferenceRequest, LoadedConfig, NoEndpoints

SCHED_BUCKETS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
_RETRY = object()


class _PoolGauges(Collector):
    def __init__(self, gw: Gateway):
        self.gw = gw

    def collect(self):
        in_flight = GaugeMetricFamily("kit_gateway_in_flight", "Requests proxied and not finished.",
                                      labels=["endpoint"])
        healthy = GaugeMetricFamily("kit_gateway_endpoint_healthy", "1 if the endpoint is in rotation.",
                                    labels=["endpoint"])
        for ep in self.gw.datastore.endpoints:
            in_flight.add_metric([ep.name], ep.in_flight)
            healthy.add_metric([ep.name], 1.0 if ep.healthy else 0.0)
        yield in_flight
        yield healthy
        for name, value in sorted(self.gw.scheduler.gauges().items()):
            g = GaugeMetricFamily(name, "Reported by a scheduling plugin.")
            g.add_metric([], value)
            yield g


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
        self.session: aiohttp.ClientSession | None = None
        r = self.registry = CollectorRegistry()
        self.requests = Counter("kit_gateway_requests", "Requests by serving endpoint and status code.",
                                ["endpoint", "code"], registry=r)
        self.retries = Counter("kit_gateway_retries", "Requests re-scheduled after an endpoint failed.",
                               ["endpoint"], registry=r)
        self.attempts = Counter("inference_extension_scheduler_attempts", "Scheduling attempts.", ["status"],
                                registry=r)
        self.sched_latency = Histogram("inference_extension_scheduler_e2e_duration_seconds",
                                       "Time to pick an endpoint.", buckets=SCHED_BUCKETS, registry=r)
        r.register(_PoolGauges(self))
        self.app = web.Application(client_max_size=s.max_body, middlewares=[json_errors(s.max_body)])
        self.app[SERVER_LIMITS] = s.server_limits()
        self.app.add_routes([
            web.post("/v1/completions", self.generate),
            web.post("/v1/chat/completions", self.generate),
            web.get("/v1/models", self.models),
            web.get("/health", self.health),
            web.get("/ready", self.ready),
            web.get("/metrics", self.prometheus),
            web.get("/decisions", self.decisions),
            web.get("/decisions/{request_id}", self.decision),
            web.get("/endpoints", self.endpoints),
            web.get("/config", self.effective_config),
        ])
        self.app.cleanup_ctx.append(self._lifecycle)

    async def _lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout)
        self.session = aiohttp.ClientSession(connector=conn, timeout=timeout)
        await self.datastore.start()
        yield
        await self.datastore.stop()
        await self.session.close()

    # ------------------------------------------------------------------ info routes
    async def health(self, _r: web.Request) -> web.Response:
        """Liveness: the gateway process answers."""
        return web.Response(status=200)

    async def ready(self, _r: web.Request) -> web.Response:
        """Readiness: at least one endpoint is in rotation."""
        if not self.datastore.healthy():
            why = "; ".join(f"{name}: {p}" for name, p in sorted(self.datastore.problems.items()))
            return error(503, f"no healthy endpoint ({why})" if why else "no healthy endpoint")
        return web.Response(status=200)

    async def models(self, _r: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm", "root": self.model}]})

    async def prometheus(self, _r: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def decisions(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return error(400, "limit must be an integer")
        recent = list(self.scheduler.recent)[-limit:] if limit > 0 else []
        return web.json_response([d.to_dict() for d in recent])

    async def decision(self, request: web.Request) -> web.Response:
        d = self.scheduler.find(request.match_info["request_id"])
        if d is None:
            return error(404, "no recent decision for that request id")
        return web.json_response(d.to_dict())

    async def endpoints(self, _r: web.Request) -> web.Response:
        now = time.monotonic()
        return web.json_response([{
            "name": ep.name, "url": ep.url, "healthy": ep.healthy, "in_flight": ep.in_flight,
            "metrics_age_s": None if not ep.updated else round(ep.age(now), 3),
            "problem": self.datastore.problems.get(ep.name),
            "waiting": ep.metrics.waiting, "running": ep.metrics.running, "kv_usage": ep.metrics.kv_usage,
            "prefix_hit_rate": ep.metrics.hit_rate} for ep in self.datastore.endpoints])

    async def effective_config(self, _r: web.Request) -> web.Response:
        return web.json_response({"config": self.config.effective, "warnings": self.config.warnings,
                                  "source": self.config.source})

    # --------------------------------------------------------------------- proxying
    async def generate(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = parse_json(raw)
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
        objective = request.headers.get(OBJECTIVE_HEADER, "")
        req = InferenceRequest.from_body(
            body, self.model, headers={k.lower(): v for k, v in request.headers.items()},
            priority=self.objectives.get(objective, 0),
            request_id=request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)
        refused = self.scheduler.admit(req, self.datastore.endpoints)  # saturation, then any admitter plugin
        if refused:
            self.requests.labels("", "429").inc()
            return error(429, refused)
        tried: set[str] = set()
        for attempt in range(self.settings.max_attempts):
            start = time.perf_counter()
            try:
                decision, state = self.scheduler.schedule(req, self.datastore.endpoints, frozenset(tried))
            except NoEndpoints as exc:
                self.attempts.labels("failure").inc()
                self.requests.labels("", "503").inc()
                why = f"{exc}; tried {', '.join(sorted(tried))}" if tried else str(exc)
                return error(503, why)
            self.attempts.labels("success").inc()
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
            self.retries.labels(ep.name).inc()
        self.requests.labels("", "503").inc()
        return error(503, f"every attempt failed; tried {', '.join(sorted(tried))}")

    async def _proxy(self, request: web.Request, ep: Endpoint, raw: bytes, req: InferenceRequest,
                     last: bool) -> web.StreamResponse | object:
        assert self.session is not None
        upstream = None
        started = time.monotonic()
        try:
            async with self.datastore.watch(ep, self.settings.first_byte_timeout):
                upstream = await self.session.post(ep.url + request.path, data=raw,
                                                   headers={"Content-Type": "application/json"})
                first = await upstream.content.readany()
        except aiohttp.ConnectionTimeoutError:  # as ambiguous as a timed-out scrape (a pause of this process?)
            self.datastore.mark_failed(ep, f"proxy: no connection within {self.settings.connect_timeout} s",
                                       since=started)
            return _RETRY
        except aiohttp.ClientConnectorError as exc:  # refused: nothing listens there
            self.datastore.mark_failed(ep, f"proxy could not connect: {exc}")
            return _RETRY
        except TimeoutError:  # no first byte in time, or the endpoint left rotation meanwhile
            if upstream is not None:
                upstream.close()
            return _RETRY
        except (aiohttp.ClientError, OSError) as exc:  # reset or disconnected before answering
            if upstream is not None:
                upstream.close()
            self.datastore.mark_failed(ep, f"proxy: {exc or type(exc).__name__}")
            return _RETRY
        async with upstream:
            if upstream.status >= 500 and not last:
                return _RETRY  # nothing reached the client yet: try another endpoint
            headers = {"Content-Type": upstream.headers.get("Content-Type", "application/json"),
                       ENDPOINT_HEADER: ep.name, REQUEST_ID_HEADER: req.request_id,
                       **self.scheduler.response_headers(req, ep)}
            if "Cache-Control" in upstream.headers:
                headers["Cache-Control"] = upstream.headers["Cache-Control"]
            resp = web.StreamResponse(status=upstream.status, headers=headers)
            await resp.prepare(request)
            try:
                chunk = first
                while chunk:
                    await resp.write(chunk)
                    chunk = await upstream.content.readany()
            except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                # The endpoint failed mid-answer: bytes already reached the client, so cut it off.
                self.requests.labels(ep.name, "broken").inc()
                if request.transport is not None:
                    request.transport.abort()
                return resp
            await resp.write_eof()
            self.requests.labels(ep.name, str(upstream.status)).inc()
            return resp


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


async def start(gw: Gateway, host: str, port: int) -> web.AppRunner:
    return await start_app(gw.app, host, port)


def serve(gw: Gateway, host: str, port: int) -> None:
    """Run the gateway until SIGTERM or SIGINT (the ``kit gateway`` command)."""

    def banner() -> list[str]:
        names = ", ".join(ep.name for ep in gw.datastore.endpoints)
        return [f"serving {gw.model} on http://{host}:{port} → {names} (scheduler config: {gw.config.source})",
                *(f"warning: {w}" for w in gw.config.warnings)]

    run_app(gw.app, host, port, "kit gateway", banner)
