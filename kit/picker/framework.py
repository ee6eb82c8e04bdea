"""The endpoint picker's contracts: endpoints, requests, plugin kinds, lifecycle hooks, parameter types.

A scheduling profile runs its filters in order, then every scorer (each returns a score in [0, 1]
per endpoint; anything outside is clamped), sums ``weight × score``, and lets exactly one picker
choose. Around the pick, as upstream's request-control plugins do, any configured plugin may also
implement ``PrepareData`` (before the profile runs, over every candidate), ``AsyncProducer`` and
``Holder`` (before the cycle, awaited by the caller: a render over HTTP, a batch window), ``Admitter``
(may refuse a request before scheduling), ``PreRequest`` (the chosen endpoint, before the request is proxied),
``ResponseHeaders`` (headers to add to the answer) and ``ResponseComplete`` (the answer ended), and
``Gauges`` (values the gateway exports on its ``/metrics``). The scheduler calls them; callers never
ask which plugin does what.

Time: plugins never read a system clock. Each plugin has ``clock`` (seconds, monotonic), which the
loader sets to the clock given to ``load_picker_config`` (the gateway's ``time.monotonic``, or a
fleet simulator's virtual clock); ``Endpoint.updated`` is on the same clock.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from kit.vllm_metrics import EndpointMetrics


@dataclass(eq=False)
class Endpoint:
    """One model server the picker can route to."""

    name: str  # "host:port", as upstream names pods in its index
    url: str
    labels: dict[str, str] = field(default_factory=dict)
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)
    updated: float = 0.0  # time of the last successful scrape on the picker's clock; 0 = never
    healthy: bool = True
    in_flight: int = 0  # requests the gateway has sent and not yet seen finish

    def age(self, now: float) -> float:
        """Seconds from the last metrics refresh to ``now`` (inf if never refreshed)."""
        return float("inf") if not self.updated else now - self.updated

    def __repr__(self) -> str:
        return f"Endpoint({self.name})"


@dataclass
class InferenceRequest:
    """What the picker knows about a request: model, the text to hash, headers, priority, cache salt."""

    model: str
    prompt: str
    headers: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    request_id: str = ""
    cache_salt: str = ""  # vLLM's ``cache_salt``: isolates prefix caches; part of the prefix hash seed
    messages: list[dict[str, Any]] | None = None  # a chat request's messages (tokenizers render them)
    # The prompt's token ids (upstream's TokenizedPrompt): filled once by a token producer (the model server's
    # render endpoint, or the tokenizer-free estimate), or by a caller that tokenizes as the server does (the
    # fleet simulator); anything that hashes tokens reads them here. A producer that finds them set skips.
    tokens: list[int] | None = None
    body: dict[str, Any] | None = None  # the request body as received (the render backend sends it on)
    path: str = ""  # the request's path (upstream's parsers are chosen by it)
    produce_failed: bool = False  # a network producer failed: the producers after it skip this request
    held: dict[str, Any] | None = None  # what a producer that held the request for a batch window keeps, by name

    @classmethod
    def from_body(cls, body: dict[str, Any], model: str, *, headers: dict[str, str] | None = None, priority: int = 0,
                  request_id: str = "") -> InferenceRequest:
        """Build from an OpenAI body: completions hash ``prompt``; chat hashes the messages as JSON."""
        messages = None
        if "messages" in body:
            m = body["messages"]
            text = json.dumps(m, separators=(",", ":"), ensure_ascii=False)
            if isinstance(m, list):
                messages = m
        else:
            p = body.get("prompt", "")
            text = p if isinstance(p, str) else json.dumps(p, separators=(",", ":"))
        salt = body.get("cache_salt")
        return cls(body.get("model") or model, text, {} if headers is None else headers, priority, request_id,
                   salt if isinstance(salt, str) else "", messages, None, body)  # by position: keywords cost more


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
class SaturationDetector(Protocol):
    """The pool's saturation in [0, ∞): at 1.0 or more, sheddable requests are refused."""

    def saturation(self, eps: list[Endpoint]) -> float: ...


@runtime_checkable
class Admitter(Protocol):
    """May refuse a request before it is scheduled: returns the reason, or None to admit."""

    def admit(self, req: InferenceRequest, eps: list[Endpoint]) -> str | None: ...


@runtime_checkable
class PrepareData(Protocol):
    """Computes per-request data over every candidate before the profile runs (upstream's
    PrepareRequestData); writes it into the cycle state."""

    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None: ...


Post = Callable[[str, Any, float], Awaitable[Any]]  # (url, JSON body, timeout in seconds) → the parsed JSON answer


@runtime_checkable
class AsyncProducer(Protocol):
    """Computes per-request data over the network before scheduling (the token producer's render backend). The
    caller that owns an HTTP client awaits ``produce`` with its ``post``; the picker itself opens no connection."""

    async def produce(self, req: InferenceRequest, post: Post, default_url: str = "") -> bool: ...


@runtime_checkable
class Holder(AsyncProducer, Protocol):
    """Holds each request for a batch window before its cycle, so that requests arriving together are placed
    together (``burst-prefix-cache-producer``). ``join`` takes the request into the open window and returns the
    time, on the plugin's clock, the window seals; ``produce`` joins and waits for the seal (the gateway awaits
    it); a caller on a virtual clock schedules the request at that time instead (the fleet simulator)."""

    def join(self, req: InferenceRequest) -> float: ...


class WindowFull(RuntimeError):
    """A holding producer's open window takes no more requests (the request goes on without its data)."""


@runtime_checkable
class ResponseStart(Protocol):
    """Told when the first chunk of the answer from ``ep`` arrives (upstream's ResponseBody with StartOfStream:
    for a streamed answer the first token, for a whole one the answer)."""

    def response_start(self, req: InferenceRequest, ep: Endpoint) -> None: ...


@runtime_checkable
class KVEventsConsumer(Protocol):
    """Reads vLLM's KV-cache events (``precise-prefix-cache-scorer``). With ``in_process`` set it opens no
    socket and its caller hands it each message through ``receive`` (the fleet simulator does)."""

    in_process: bool
    block_size: int  # tokens per KV block the events must use

    def receive(self, topic: str, payload: bytes) -> None: ...


@runtime_checkable
class DataSource(Protocol):
    """A data-layer source; ``produces`` names what its extractors receive."""

    def produces(self) -> str: ...


@runtime_checkable
class Extractor(Protocol):
    """A data-layer extractor; ``consumes`` names the kind of source it reads."""

    def consumes(self) -> str: ...


@runtime_checkable
class Consumer(Protocol):
    """Reads what a configured ``PrepareData`` producer computes; ``consume`` links it when the
    producer is of the kind it reads and says whether it did."""

    def consume(self, producer: object) -> bool: ...


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
class Lifecycle(Protocol):
    """Background work (the precise prefix scorer's event subscriber): ``start`` when the scheduler starts
    (``kit gateway`` does it before serving; otherwise at the plugin's first scheduling cycle), ``close``
    when it stops. Loading a config never starts anything, so validating one opens no socket."""

    def start(self) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class Gauges(Protocol):
    """Values to export as gauges, by metric name (e.g. the prefix index's size)."""

    def gauges(self) -> dict[str, float]: ...


class Params(BaseModel):
    """Base of plugin parameters: camelCase names as upstream spells them; unknown keys ignored
    (the registry reports them as warnings)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def note(info: ValidationInfo, message: str) -> None:
    """Report a parameter value that was accepted but changed; the registry makes it a warning."""
    if isinstance(info.context, dict) and isinstance(info.context.get("notes"), list):
        info.context["notes"].append((info.field_name, message))


def positive_or(default: float) -> BeforeValidator:
    """A number ≤ 0 becomes ``default`` (with a warning), as upstream's plugins fall back."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            note(info, f"{value} is not positive; the default {default} applies, as upstream falls back")
            return default
        return value

    return BeforeValidator(check)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from a Go duration string (``"200ms"``, ``"1m30s"``, ``"-10s"``) or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        sign, body = (-1.0, value[1:]) if value.startswith("-") else (1.0, value.removeprefix("+"))
        if body and _DURATION.sub("", body) == "":
            return sign * sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(body))
    raise ValueError(f"expected a duration such as '200ms' or '2m', got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]


Clock = Callable[[], float]


class PluginBase:
    """Type and instance name; a plugin's name defaults to its type. Plugins without parameters
    need nothing more; others set ``Params`` and read their values in ``__init__``. Time comes from
    ``self.clock()``, which the loader sets (see the module docstring)."""

    type = ""
    Params: Any = None  # a pydantic model of the parameters; None means the plugin takes none
    clock: Clock = time.monotonic

    def __init__(self, name: str | None = None, params: Any = None):
        self.name = name or self.type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def min_max(values: dict[Endpoint, float], invert: bool = True) -> dict[Endpoint, float]:
    """Normalise to [0, 1] over the candidates; lower is better when ``invert``; all equal → 1.0."""
    if not values:
        return {}
    it = iter(values.values())
    lo = hi = next(it)
    for v in it:  # min() and max() in one pass: the same comparisons, so the same result (NaN too)
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    if hi == lo:
        return dict.fromkeys(values, 1.0)
    span = hi - lo
    return {ep: ((hi - v) if invert else (v - lo)) / span for ep, v in values.items()}
