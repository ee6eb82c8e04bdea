"""Picker replicas in one gateway (kit-only): several schedulers loaded from one config split the requests.

Upstream can run the endpoint picker with several replicas; each keeps its own plugin state, so each
approximate prefix index learns only from the requests that replica routed (the weakness upstream's
design notes name), while every precise index reads all the servers' KV-cache events and they agree.
``ReplicatedScheduler`` puts that situation on one gateway: each request goes to one replica chosen
uniformly at random (seeded), as a load balancer in front of the replicas spreads it, and as the fleet
simulator's ``picker_replicas`` does (``kit.fleet.scenario``). The replicas see the same endpoints, with
the gateway's scrapes and in-flight counts. Replica 0's precise scorers subscribe to the events and
feed the other replicas' indexes each message (one subscription per process; the indexes stay
separate). Decisions go to one shared history; the lifecycle calls of a request reach the replica
that admitted it.
"""

from __future__ import annotations

import random
import weakref
from typing import Any

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Post
from kit.picker.plugins.router.precise import PrecisePrefixProducer, PrecisePrefixScorer
from kit.picker.plugins.scorers.precise_prefix import PrecisePrefixCacheScorer
from kit.picker.scheduler import Decision, Scheduler, summed

EVENT_READERS = (PrecisePrefixCacheScorer, PrecisePrefixProducer, PrecisePrefixScorer)


class ReplicatedScheduler:
    """The ``Scheduler`` interface over ``replicas`` (each loaded from the same config)."""

    def __init__(self, replicas: list[Scheduler], seed: int | None = None):
        if not replicas:
            raise ValueError("picker replicas: need at least one scheduler")
        self.replicas = replicas
        self.rng = random.Random(seed)
        self.clock = replicas[0].clock
        self.recent = replicas[0].recent
        self.chosen: dict[int, int] = {}  # id(request) → its replica, while the request lives
        self.routed = [0] * len(replicas)  # requests each replica took
        for sched in replicas[1:]:
            sched.recent = self.recent
            for mine, theirs in zip(replicas[0].plugins, sched.plugins, strict=True):
                if isinstance(mine, EVENT_READERS) and type(theirs) is type(mine):
                    mine.feed(theirs)

    def _index(self, req: InferenceRequest) -> int:
        r = self.chosen.get(id(req))
        if r is None:
            r = self.chosen[id(req)] = self.rng.randrange(len(self.replicas))
            self.routed[r] += 1
            weakref.finalize(req, self.chosen.pop, id(req), None)
        return r

    def _replica(self, req: InferenceRequest) -> Scheduler:
        return self.replicas[self._index(req)]

    def start(self) -> None:
        for sched in self.replicas:
            sched.start()

    def close(self) -> None:
        for sched in self.replicas:
            sched.close()

    @property
    def renders(self) -> bool:
        return self.replicas[0].renders

    @property
    def holds(self) -> bool:
        return self.replicas[0].holds

    def hold(self, req: InferenceRequest) -> float | None:
        return self._replica(req).hold(req)

    def default_render_url(self, url: str) -> None:
        for sched in self.replicas:
            sched.default_render_url(url)

    def request(self, body: Any, path: str, model: str, headers: dict[str, str] | None = None, priority: int = 0,
                request_id: str = "") -> InferenceRequest:
        return self.replicas[0].request(body, path, model, headers, priority, request_id)  # parsing keeps no state

    async def produce(self, req: InferenceRequest, post: Post) -> None:
        await self._replica(req).produce(req, post)

    def admit(self, req: InferenceRequest, endpoints: list[Endpoint]) -> str | None:
        return self._replica(req).admit(req, endpoints)

    def schedule(self, req: InferenceRequest, endpoints: list[Endpoint],
                 exclude: frozenset[str] = frozenset()) -> tuple[Decision, CycleState]:
        r = self._index(req)
        decision, state = self.replicas[r].schedule(req, endpoints, exclude)
        decision.replica = r
        return decision, state

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        self._replica(req).pre_request(state, req, ep)

    def response_headers(self, req: InferenceRequest, ep: Endpoint) -> dict[str, str]:
        return self._replica(req).response_headers(req, ep)

    def response_start(self, req: InferenceRequest, ep: Endpoint) -> None:
        self._replica(req).response_start(req, ep)

    def response_complete(self, req: InferenceRequest, ep: Endpoint) -> None:
        self._replica(req).response_complete(req, ep)

    def gauges(self) -> dict[str, float]:
        """Every replica's gauges, summed by name."""
        return summed(sched.gauges() for sched in self.replicas)

    def record(self, decision: Decision) -> None:
        self.recent.append(decision)

    def find(self, request_id: str) -> Decision | None:
        return self.replicas[0].find(request_id)
