"""``session-affinity-scorer`` (llm-d-router v0.10.0, ``scheduling/scorer/sessionaffinity``): keep a session on one
endpoint. Two strategies (``strategy``):

* ``encoded_endpoint_header`` (default): the answer carries the serving endpoint, base64-encoded, in a header
  (``encodedEndpointHeaderConfig.header``, default ``x-session-token``); a request that sends it back scores
  1.0 on that endpoint and 0 elsewhere;
* ``session_id``: the client names its session (``sessionIdConfig.sources``, the first of them found: a request
  ``header``, or an ``attribute`` another plugin publishes, none in the kit; default the header
  ``x-session-id``); the endpoint a session was last sent to scores 1.0 while the session is not idle for
  ``evictionTtlSeconds`` (300; bindings are swept every ``evictionSweepSeconds``, 10); an unbound session, or one
  whose endpoint is not a candidate, scores 0 everywhere and binds where it goes.

``profileName`` picks which profile's endpoint is pinned (the kit runs one profile). Exactly one of ``header``
and ``attribute`` per source; both eviction times must be > 0.

Example::

    plugins:
    - type: session-affinity-scorer
      parameters:
        strategy: session_id
        sessionIdConfig:
          sources: [{header: x-session-id}]
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import Field, model_validator

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase

DEFAULT_HEADER, DEFAULT_SESSION_HEADER = "x-session-token", "x-session-id"


class HeaderConfig(Params):
    header: str = Field("", description="the header carrying the encoded endpoint (x-session-token when empty)")


class Source(Params):
    header: str = Field("", description="a request header holding the session id")
    attribute: str = Field("", description="a request attribute holding it (published by another plugin)")

    @model_validator(mode="after")
    def _one(self) -> Source:
        if bool(self.header) == bool(self.attribute):
            raise ValueError("exactly one of header or attribute must be set")
        return self


class SessionIDConfig(Params):
    sources: list[Source] = Field(default_factory=list, description="where the session id is read, in order "
                                                                    "(x-session-id when empty)")
    eviction_ttl_seconds: float = Field(0.0, alias="evictionTtlSeconds", description="idle time before a binding "
                                                                                    "ends (300 when 0)")
    eviction_sweep_seconds: float = Field(0.0, alias="evictionSweepSeconds", description="between sweeps (10 when "
                                                                                        "0)")

    @model_validator(mode="after")
    def _positive(self) -> SessionIDConfig:
        if self.eviction_ttl_seconds < 0 or self.eviction_sweep_seconds < 0:
            raise ValueError("evictionTtlSeconds and evictionSweepSeconds must be > 0")
        return self


class SessionParams(Params):
    strategy: Literal["encoded_endpoint_header", "session_id"] = Field("encoded_endpoint_header",
                                                                       description="how a session is recognised")
    encoded_endpoint_header_config: HeaderConfig = Field(default_factory=HeaderConfig,
                                                         alias="encodedEndpointHeaderConfig",
                                                         description="the encoded_endpoint_header strategy")
    session_id_config: SessionIDConfig = Field(default_factory=SessionIDConfig, alias="sessionIdConfig",
                                               description="the session_id strategy")
    profile_name: str = Field("", alias="profileName", description="whose pick is pinned (the primary when empty)")


class SessionAffinityScorer(PluginBase):
    """``session-affinity-scorer`` of llm-d-router v0.10.0 (module docstring). Parameters: ``strategy``,
    ``encodedEndpointHeaderConfig`` (``header``), ``sessionIdConfig`` (``sources``, ``evictionTtlSeconds``,
    ``evictionSweepSeconds``), ``profileName``."""

    type = "session-affinity-scorer"
    Params = SessionParams

    def __init__(self, name: str | None = None, params: SessionParams | None = None):
        super().__init__(name, params)
        p = self.p = params or SessionParams()
        self.header = (p.encoded_endpoint_header_config.header or DEFAULT_HEADER).lower()
        sid = p.session_id_config
        self.sources = sid.sources or [Source(header=DEFAULT_SESSION_HEADER)]
        self.ttl = sid.eviction_ttl_seconds or 300.0
        self.sweep = sid.eviction_sweep_seconds or 10.0
        self.bindings: dict[str, tuple[str, float]] = {}  # session → (endpoint, last used)
        self._swept = 0.0

    def _session(self, req: InferenceRequest) -> str:
        lower = {k.lower(): v for k, v in req.headers.items()}
        for s in self.sources:
            value = lower.get(s.header.lower(), "") if s.header else ""
            if value:
                return value
        return ""

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        if self.p.strategy == "encoded_endpoint_header":
            token = next((v for k, v in req.headers.items() if k.lower() == self.header), "")
            try:
                wanted = base64.b64decode(token, validate=True).decode() if token else ""
            except (binascii.Error, UnicodeDecodeError):
                wanted = ""
            return {ep: 1.0 if ep.name == wanted else 0.0 for ep in eps}
        now = self.clock()
        if now - self._swept >= self.sweep:
            self._swept = now
            self.bindings = {s: b for s, b in self.bindings.items() if now - b[1] <= self.ttl}
        session = self._session(req)
        bound = self.bindings.get(session) if session else None
        state[self.name] = session
        target = bound[0] if bound and now - bound[1] <= self.ttl else ""
        return {ep: 1.0 if ep.name == target else 0.0 for ep in eps}

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        session = state.get(self.name)
        if self.p.strategy == "session_id" and session:
            self.bindings[session] = (ep.name, self.clock())

    def response_headers(self, req: InferenceRequest, ep: Endpoint) -> dict[str, str]:
        if self.p.strategy != "encoded_endpoint_header":
            return {}
        return {self.header: base64.b64encode(ep.name.encode()).decode()}
