"""``active-request-scorer`` (llm-d): prefer endpoints with fewer requests in flight from this gateway.

Consumes the gateway's own count of requests sent to each endpoint and not yet finished (raised when
the endpoint is picked, lowered when the response ends), not a server metric, so it reacts before
the next scrape. Score = 1.0 when count ≤ ``idleThreshold``, else
(max − count) / max × ``maxBusyScore``, where max is the largest count among the candidates.

Parameters: ``requestTimeout`` (accepted for compatibility; the kit's counts are exact, so nothing
expires; default 2m), ``idleThreshold`` (default 0), ``maxBusyScore`` (default 1.0).

Example::

    plugins:
    - type: active-request-scorer
      parameters:
        idleThreshold: 2
        maxBusyScore: 0.8
"""

from __future__ import annotations

from pydantic import Field

from kit.picker.framework import CycleState, Duration, Endpoint, InferenceRequest, Params, PluginBase


class ActiveRequestParams(Params):
    request_timeout: Duration = Field(120.0, alias="requestTimeout", gt=0,
                                      description="how long a request counts as in flight at most (a Go duration)")
    idle_threshold: int = Field(0, alias="idleThreshold", ge=0,
                                description="in-flight requests at or under which an endpoint scores 1.0")
    max_busy_score: float = Field(1.0, alias="maxBusyScore", ge=0, le=1,
                                  description="the highest score of an endpoint above the idle threshold")


class ActiveRequestScorer(PluginBase):
    """``active-request-scorer`` of llm-d-inference-scheduler v0.7.0: fewer of the gateway's in-flight requests score
    higher (module docstring). Parameters: ``requestTimeout`` (2m), ``idleThreshold`` (0), ``maxBusyScore`` (1.0)."""

    type = "active-request-scorer"
    Params = ActiveRequestParams

    def __init__(self, name: str | None = None, params: ActiveRequestParams | None = None):
        super().__init__(name, params)
        self.p = params or ActiveRequestParams()

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        top = max((ep.in_flight for ep in eps), default=0)
        out = {}
        for ep in eps:
            if ep.in_flight <= self.p.idle_threshold or top == 0:
                out[ep] = 1.0
            else:
                out[ep] = (top - ep.in_flight) / top * self.p.max_busy_score
        return out
