"""The endpoint picker's contracts: endpoints, requests, plugin kinds, lifecycle hooks, parameter types.

A scheduling profile runs its filters in order, then every scorer (each returns a score in [0, 1]
per endpoint; anything outside is clamped), sums ``weight × score``, and lets exactly one picker
choose. Around the pick, as upstream's request-control plugins do, any configured plugin may also
implement ``PreRequest`` (the chosen endpoint, before the request is proxied), ``ResponseHeaders``
(headers to add to the answer) and ``ResponseComplete`` (the answer ended), and ``Gauges`` (values
the gateway exports on its ``/metrics``). The scheduler calls them; callers never ask which plugin
does what.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict

from kit.vllm_metrics import EndpointMetrics


@dataclass(eq=False)
class Endpoint:
    """One model server the picker can route to."""

    name: str  # "host:port", as upstream names pods in its index
    url: str
    labels: dict[str, str] = field(default_factory=dict)
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)
    updated: float = 0.0  # monotonic time of the last successful scrape; 0 = never
    healthy: bool = True
    in_flight: int = 0  # requests the gateway has sent and not yet seen finish

    def age(self, now: float | None = None) -> float:
        """Seconds since the metrics were refreshed (inf if never)."""
        return float("inf") if not self.updated else (now or time.monotonic()) - self.updated

    def __repr__(self) -> str:
        return f"Endpoint({self.name})"


@dataclass
class InferenceRequest:
    """What the picker knows about a request: model, the text to hash, headers and priority."""

    model: str
    prompt: str
    headers: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    request_id: str = ""

    @classmethod
    def from_body(cls, body: dict[str, Any], model: str, **kw: Any) -> InferenceRequest:
        """Build from an OpenAI body: completions hash ``prompt``; chat hashes the messages as JSON."""
        if "messages" in body:
            text = json.dumps(body["messages"], separators=(",", ":"), ensure_ascii=False)
        else:
            p = body.get("prompt", "")
            text = p if isinstance(p, str) else json.dumps(p, separators=(",", ":"))
        return cls(model=body.get("model") or model, prompt=text, **kw)


class CycleState(dict):
    """Scratch space shared by the plugins during one scheduling cycle."""


@runtime_checkable
class Plugin(Protocol):
    type: str
    name: str


@runtime_checkable
class Filter(Plugin, Protocol):
    def filter(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> list[Endpoint]: ...


@runtime_checkable
class Scorer(Plugin, Protocol):
    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]: ...


@runtime_checkable
class Picker(Plugin, Protocol):
    def pick(self, state: CycleState, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]: ...


@runtime_checkable
class ProfileHandler(Plugin, Protocol):
    def profiles_to_run(self, names: list[str]) -> list[str]: ...


@runtime_checkable
class PreRequest(Protocol):
    """Told where a request goes, right after the pick and before it is proxied."""

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None: ...


@runtime_checkable
class ResponseHeaders(Protocol):
    """Adds headers to the answer the client receives from ``ep``."""

    def response_headers(self, req: InferenceRequest, ep: Endpoint) -> dict[str, str]: ...


@runtime_checkable
class ResponseComplete(Protocol):
    """Told when the answer from ``ep`` has ended (completed, failed or abandoned)."""

    def response_complete(self, req: InferenceRequest, ep: Endpoint) -> None: ...


@runtime_checkable
class Gauges(Protocol):
    """Values to export as gauges, by metric name (e.g. the prefix index's size)."""

    def gauges(self) -> dict[str, float]: ...


class Params(BaseModel):
    """Base of plugin parameters: camelCase names as upstream spells them; unknown keys ignored
    (the registry reports them as warnings)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from a Go duration string (``"200ms"``, ``"1m30s"``) or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value and _DURATION.sub("", value) == "":
        return sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(value))
    raise ValueError(f"expected a duration such as '200ms' or '2m', got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class PluginBase:
    """Type and instance name; a plugin's name defaults to its type. Plugins without parameters
    need nothing more; others set ``Params`` and read their values in ``__init__``."""

    type = ""
    Params: Any = None  # a pydantic model of the parameters; None means the plugin takes none

    def __init__(self, name: str | None = None, params: Any = None):
        self.name = name or self.type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def min_max(values: dict[Endpoint, float], invert: bool = True) -> dict[Endpoint, float]:
    """Normalise to [0, 1] over the candidates; lower is better when ``invert``; all equal → 1.0."""
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    if hi == lo:
        return dict.fromkeys(values, 1.0)
    span = hi - lo
    return {ep: ((hi - v) if invert else (v - lo)) / span for ep, v in values.items()}
