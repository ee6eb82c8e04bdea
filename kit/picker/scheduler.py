"""Run a scheduling cycle: prepare data → filters → weighted scorers → picker, and explain the decision.

Admission (``Scheduler.admit``) runs before it, as upstream's request control does without flow
control: a sheddable request (priority < 0) is refused while the saturation detector says the pool is
saturated, and any configured admitter may refuse a request too.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kit.picker.framework import (
    Admitter,
    AsyncProducer,
    Clock,
    CycleState,
    Endpoint,
    Filter,
    Gauges,
    Holder,
    InferenceRequest,
    Lifecycle,
    Picker,
    Post,
    PrepareData,
    PreRequest,
    ProfileHandler,
    ResponseComplete,
    ResponseHeaders,
    ResponseStart,
    SaturationDetector,
    Scorer,
    WindowFull,
)

log = logging.getLogger(__name__)


class Unparseable(ValueError):
    """The request cannot be read by the configured parsers (the gateway answers 400)."""


class NoEndpoints(Exception):
    """No endpoint is left to route to (the gateway answers 503)."""


@dataclass
class Profile:
    name: str
    filters: list[Filter]
    scorers: list[tuple[Scorer, float]]
    picker: Picker


@dataclass
class Decision:
    """Why a request went where it went: every candidate's per-plugin scores and weighted total.

    The cycle keeps its raw inputs; ``candidates`` (one row per endpoint, scores rounded) is built only when
    someone asks, so explaining costs nothing on the requests nobody looks at."""

    request_id: str
    profile: str
    picked: list[str]
    weights: dict[str, float]
    duration_s: float
    at: float = field(default_factory=time.time)  # wall-clock time, for display only
    endpoints: list[Endpoint] = field(default_factory=list, repr=False)  # every candidate, before filters
    filtered_by: dict[str, str] = field(default_factory=dict, repr=False)  # endpoint → the filter that dropped it
    scores: list[tuple[str, dict[Endpoint, float]]] = field(default_factory=list, repr=False)  # per scorer
    totals: list[tuple[Endpoint, float]] = field(default_factory=list, repr=False)  # every candidate's, in order
    replica: int | None = None  # which picker replica decided (kit.picker.replicas), when there are several

    @cached_property
    def candidates(self) -> list[dict[str, Any]]:
        rows = {ep: {"endpoint": ep.name, "scores": {}, "total": 0.0, "filtered_by": self.filtered_by.get(ep.name)}
                for ep in self.endpoints}
        for name, scores in self.scores:
            for ep, s in scores.items():
                rows[ep]["scores"][name] = round(min(1.0, max(0.0, s)), 6)
        for ep, t in self.totals:
            rows[ep]["total"] = round(t, 6)
        return list(rows.values())

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "profile": self.profile, "picked": self.picked,
                "weights": self.weights, "candidates": self.candidates, "duration_s": self.duration_s,
                "at": self.at, **({} if self.replica is None else {"replica": self.replica})}


def summed(gauges: Iterable[dict[str, float]]) -> dict[str, float]:
    """Gauges added up by name."""
    out: dict[str, float] = {}
    for g in gauges:
        for name, value in g.items():
            out[name] = out.get(name, 0.0) + value
    return out


def _weighted_totals(eps: list[Endpoint], scored: list[tuple[float, dict[Endpoint, float]]]) \
        -> list[tuple[Endpoint, float]]:
    """Each endpoint's Σ weight × score, in ``eps`` order; a score outside [0, 1] is clamped (NaN counts 0).

    While the scorers return one score per endpoint in ``eps`` order (all of the kit's do), the sums run
    over a list, one pass per scorer without building anything; otherwise they run by endpoint from the
    start. Each endpoint's additions are the same, in scorer order, either way."""
    n = len(eps)
    acc = [0.0] * n
    for w, sc in scored:
        if len(sc) != n:
            return _totals_by_endpoint(eps, scored)
        for i, (ep, s) in enumerate(sc.items()):
            if ep is not eps[i]:  # a scorer skipped or reordered endpoints
                return _totals_by_endpoint(eps, scored)
            acc[i] += w * (s if 0.0 <= s <= 1.0 else float(s > 1.0))
    return list(zip(eps, acc, strict=True))


def _totals_by_endpoint(eps: list[Endpoint], scored: list[tuple[float, dict[Endpoint, float]]]) \
        -> list[tuple[Endpoint, float]]:
    """``_weighted_totals`` for scorers that leave endpoints out or return them in another order."""
    totals = dict.fromkeys(eps, 0.0)
    for weight, scores in scored:
        for ep, s in scores.items():
            totals[ep] += weight * (s if 0.0 <= s <= 1.0 else float(s > 1.0))
    return list(totals.items())


class Scheduler:
    """Holds the configured profiles and plugins; ``schedule`` returns the decision, and the lifecycle
    calls (``pre_request``, ``response_headers``, ``response_complete``) reach every configured plugin
    that implements them, as upstream's request-control layer does."""

    def __init__(self, profiles: list[Profile], handler: ProfileHandler, saturation: SaturationDetector,
                 history: int = 2000, plugins: list[object] | None = None, clock: Clock = time.monotonic,
                 parsers: Any = None, release: str = "v0.7"):
        self.release = release
        self.parsers = parsers  # v0.10: the request parsers (``requestHandler``); v0.7 reads OpenAI bodies itself
        self.render_url = ""  # where token producers without a vllm.url render (the gateway's --render-url)
        self.profiles = {p.name: p for p in profiles}
        self.handler = handler
        self.saturation = saturation
        self.clock = clock  # the plugins' clock; ``Endpoint.updated`` is on it too
        self.recent: deque[Decision] = deque(maxlen=history)
        if plugins is None:  # every plugin the profiles use
            plugins = [handler, *(pl for p in profiles for pl in (*p.filters, *(s for s, _ in p.scorers), p.picker))]
        self.plugins = list({id(p): p for p in plugins}.values())
        self._prepare = [p for p in self.plugins if isinstance(p, PrepareData)]
        self._admitters = [p for p in self.plugins if isinstance(p, Admitter)]
        self._pre = [p for p in self.plugins if isinstance(p, PreRequest)]
        self._headers = [p for p in self.plugins if isinstance(p, ResponseHeaders)]
        self._complete = [p for p in self.plugins if isinstance(p, ResponseComplete)]
        self._gauges = [p for p in self.plugins if isinstance(p, Gauges)]
        self._lifecycle = [p for p in self.plugins if isinstance(p, Lifecycle)]
        self._start = [p for p in self.plugins if isinstance(p, ResponseStart)]
        # v0.10: producers that ask the network (the token producer's render backend) before the cycle; a failure
        # skips every producer after them in the request's cycle, as upstream stops at a failing producer
        self._async = [p for p in self.plugins if isinstance(p, AsyncProducer) and getattr(p, "renders", True)]
        # v0.10: producers that hold each request for a batch window; what they read (the prompt's tokens) is
        # produced before they take the request in, by the producers they depend on (the estimate backend)
        self._holders = [p for p in self._async if isinstance(p, Holder)]
        needs = {k for h in self._holders for k in h.data_consumed()[0]} if self._holders else set()
        self._before_hold = [p for p in self._prepare if not isinstance(p, Holder)
                             and needs & set(getattr(p, "data_produced", set)())]
        self._guarded = release != "v0.7"
        self._after_render: set[int] = set()
        if self._async:
            first = self.plugins.index(self._async[0])
            self._after_render = {id(p) for p in self.plugins[first + 1:]}
        # Each profile's weights by scorer name, as every decision shows them (shared: a decision is a record).
        self._weights = {p.name: {s.name: w for s, w in p.scorers} for p in profiles}

    def start(self) -> None:
        """Start the plugins' background work (event subscribers) before the first request."""
        for p in self._lifecycle:
            p.start()

    def close(self) -> None:
        """Stop the plugins' background work."""
        for p in self._lifecycle:
            p.close()

    @property
    def renders(self) -> bool:
        """Whether a token producer renders the prompt on a model server: requests need ``await produce(req, post)``
        before ``schedule`` (a caller without HTTP, the fleet simulator, fills ``req.tokens`` itself instead)."""
        return any(p not in self._holders for p in self._async)

    @property
    def holds(self) -> bool:
        """Whether a producer holds each request for a batch window: requests need ``await produce(req, post)``
        before ``schedule``, or, on a virtual clock, ``hold(req)`` and ``schedule`` at the time it returns."""
        return bool(self._holders)

    @property
    def starts(self) -> bool:
        """Whether some plugin wants ``response_start`` (the first bytes of each answer)."""
        return bool(self._start)

    def default_render_url(self, url: str) -> None:
        """Where token producers whose config leaves ``vllm.url`` unset render (instead of upstream's
        ``http://localhost:8000``, which on the kit's local stack is the gateway itself)."""
        self.render_url = url

    async def produce(self, req: InferenceRequest, post: Post) -> None:
        """Run the producers that ask the network (with the caller's ``post``) or hold the request for a batch window
        (until it seals), in data order; a producer that fails leaves its data unset and the request is scheduled
        without it."""
        for p in self._async:
            if p in self._holders:
                self._ready_to_hold(req)
            if await p.produce(req, post, self.render_url) is False:
                req.produce_failed = True
                return

    def hold(self, req: InferenceRequest) -> float | None:
        """For a caller on a virtual clock (the fleet simulator; it fills ``req.tokens`` when a token producer
        renders): take ``req`` into every holding producer's batch window. The time, on the picker's clock, to
        ``schedule`` it (when its windows seal), or None to schedule it now (nothing holds it, or a full window
        refused it: scheduled without the producers after it)."""
        if not self._holders or req.produce_failed:
            return None
        self._ready_to_hold(req)
        until = None
        for h in self._holders:
            try:
                closes = h.join(req)
            except WindowFull:
                req.produce_failed = True
                return None
            until = closes if until is None else max(until, closes)
        return until

    def _ready_to_hold(self, req: InferenceRequest) -> None:
        for p in self._before_hold:
            p.prepare_request_data(CycleState(), req, [])

    def request(self, body: Any, path: str, model: str, headers: dict[str, str] | None = None, priority: int = 0,
                request_id: str = "") -> InferenceRequest:
        """The request as the picker reads it: release v0.7 reads an OpenAI body (``InferenceRequest.from_body``);
        v0.10 hands it to the parser its ``requestHandler`` resolves for ``path`` (``Unparseable`` if none can)."""
        headers = {} if headers is None else headers
        if self.parsers is None:
            return InferenceRequest.from_body(body, model, headers=headers, priority=priority, request_id=request_id)
        try:
            return self.parsers.resolve(path).parse(path, body, model, headers, priority, request_id)
        except ValueError as err:
            raise Unparseable(str(err)) from None

    def admit(self, req: InferenceRequest, endpoints: list[Endpoint]) -> str | None:
        """Why ``req`` is refused (the gateway answers 429), or None to admit it."""
        if req.priority >= 0 and not self._admitters:  # nothing to ask: admitted
            return None
        eps = [ep for ep in endpoints if ep.healthy]
        if req.priority < 0 and self.saturation.saturation(eps) >= 1.0:
            return "the pool is saturated and this request is sheddable"
        for admitter in self._admitters:
            reason = admitter.admit(req, eps)
            if reason:
                return reason
        return None

    def schedule(self, req: InferenceRequest, endpoints: list[Endpoint],
                 exclude: frozenset[str] = frozenset()) -> tuple[Decision, CycleState]:
        start = time.perf_counter()
        state = CycleState()
        eps = [ep for ep in endpoints if ep.healthy and ep.name not in exclude] if exclude else \
            [ep for ep in endpoints if ep.healthy]
        if not eps:
            raise NoEndpoints("no healthy endpoint is available")
        if self._guarded:
            self._produce(state, req, eps)
        else:
            for producer in self._prepare:
                producer.prepare_request_data(state, req, eps)
        name = self.handler.profiles_to_run(list(self.profiles))[0]
        profile = self.profiles[name]
        candidates, filtered_by = eps, {}
        for f in profile.filters:
            kept = f.filter(state, req, eps)
            if len(kept) != len(eps):
                keep = set(kept)
                filtered_by.update((ep.name, f.name) for ep in eps if ep not in keep)
            eps = kept
            if not eps:
                raise NoEndpoints(f"filter {f.name} left no endpoint")
        scores = [(scorer.name, scorer.score(state, req, eps)) for scorer, _ in profile.scorers]
        totals = _weighted_totals(eps, [(w, sc) for (_, w), (_, sc) in zip(profile.scorers, scores, strict=True)])
        picked = profile.picker.pick(state, list(totals))
        decision = Decision(  # by position (request_id, profile, picked, weights, duration_s, at, endpoints,
            # filtered_by, scores, totals): keywords cost half as much again
            req.request_id, name, [ep.name for ep in picked], self._weights[name], time.perf_counter() - start,
            time.time(), candidates, filtered_by, scores, totals)
        state["picked"] = picked
        state["profile"] = profile
        return decision, state

    def _produce(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        """v0.10's producers in data-dependency order; the first to fail ends them for this request (logged), as
        upstream's director stops at a failing producer and schedules without the rest."""
        skip = self._after_render if req.produce_failed else ()
        for producer in self._prepare:
            if id(producer) in skip:
                continue
            try:
                producer.prepare_request_data(state, req, eps)
            except Exception as err:
                log.warning("data producer %s failed, the rest are skipped for this request: %s",
                            getattr(producer, "name", producer), err)
                return

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        """Tell plugins where the request is going (the prefix index learns here)."""
        for p in self._pre:
            p.pre_request(state, req, ep)

    def response_headers(self, req: InferenceRequest, ep: Endpoint) -> dict[str, str]:
        """Headers the plugins add to the answer (session affinity writes its token here)."""
        out: dict[str, str] = {}
        for p in self._headers:
            out.update(p.response_headers(req, ep))
        return out

    def response_start(self, req: InferenceRequest, ep: Endpoint) -> None:
        """Tell plugins the answer's first chunk arrived (the in-flight load releases the prompt's tokens)."""
        for p in self._start:
            p.response_start(req, ep)

    def response_complete(self, req: InferenceRequest, ep: Endpoint) -> None:
        """Tell plugins the answer from ``ep`` has ended."""
        for p in self._complete:
            p.response_complete(req, ep)

    def gauges(self) -> dict[str, float]:
        """Every plugin's gauges, summed by name."""
        return summed(p.gauges() for p in self._gauges)

    def record(self, decision: Decision) -> None:
        self.recent.append(decision)

    def find(self, request_id: str) -> Decision | None:
        return next((d for d in reversed(self.recent) if d.request_id == request_id), None)
