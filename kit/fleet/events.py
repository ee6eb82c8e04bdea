"""vLLM's KV-cache events on the virtual clock: the servers feed the precise prefix scorer's index in process.

On the local stack each simulator publishes its block pool's changes over ZMQ (``kit sim
--kv-events-config``) and the picker's subscriber applies them to the index of
``precise-prefix-cache-scorer``. The fleet runs the same pieces without sockets:

* every node records the events its block pool produces, one batch per engine step (``kit.fleet.node``:
  fast-forwarded decode stretches publish what stepping publishes);
* each batch is encoded as on the wire (``kit.sim.kv_events.encode_batch``: vLLM's msgpack
  ``KVEventBatch`` stamped with the step's end, topic ``kv@<endpoint>@<model>``) and becomes visible to the
  picker ``lag`` seconds of virtual time later (default 3 ms: the median measured from a real ``kit sim``
  to the index having applied the batch, docs/results/precise.md);
* before each scheduling decision at time *t*, every busy server is brought to *t* − ``lag`` and every batch
  due by *t* goes, in publication order, to ``receive`` of each precise scorer of every picker replica
  (``parse_batch`` then ``apply_events``: the code the ZMQ subscriber thread runs).

The scorer tokenizes each request itself, in process with ``kit.tokenizer``, as on the local stack, and
reads the run's virtual clock (speculative entries expire on it). Profiles without a precise scorer
record no events and run exactly as before.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from typing import Any

from kit.errors import KitError
from kit.fleet.node import Node
from kit.picker import KVEventsConsumer
from kit.sim.kv_events import encode_batch

DEFAULT_LAG = 0.003  # seconds; median measured from a real kit sim, publish → index updated (bench/precise_index.py)


def precise_scorers(schedulers: Iterable[Any]) -> list[KVEventsConsumer]:
    """Every precise prefix scorer of these schedulers (one per replica and plugin instance)."""
    return [p for s in schedulers for p in s.plugins if isinstance(p, KVEventsConsumer)]


class EventFeed:
    """The nodes' KV-cache event batches, in flight to the precise scorers for ``lag`` seconds."""

    def __init__(self, scorers: list[KVEventsConsumer], nodes: list[Node], lag: float = DEFAULT_LAG):
        if lag < 0:
            raise KitError(f"event_lag: a delay cannot be negative, got {lag}")
        cfg = nodes[0].cfg
        for s in scorers:
            if s.block_size != cfg.block_size:
                raise KitError(f"{getattr(s, 'name', s)}: tokenProcessorConfig.blockSize is {s.block_size} but the "
                               f"simulated servers use blocks of {cfg.block_size} tokens; the two must be equal "
                               "(set --block-size or the profile's blockSize)")
            s.in_process = True
        if not cfg.enable_prefix_caching:
            raise KitError("the precise prefix scorer needs the servers' prefix caching (and its KV events): "
                           "prefix caching is off")
        self.scorers, self.lag, self.nodes = scorers, lag, nodes
        self.block_size = cfg.block_size
        self.queue: list[tuple[float, int, str, bytes]] = []  # (visible at, order published, topic, payload)
        self.order = itertools.count()
        self.published = self.delivered = 0
        for node in nodes:
            node.engine.pool.events = []
            topic = f"kv@{node.name}@{cfg.model}"
            node.on_events = lambda t, events, topic=topic: self.publish(topic, t, events)

    def publish(self, topic: str, t: float, events: list) -> None:
        """One engine step's events from the server named in ``topic``, the step having ended at ``t``."""
        heapq.heappush(self.queue, (t + self.lag, next(self.order), topic, encode_batch(t, events, self.block_size)))
        self.published += 1

    def catch_up(self, run: Any, t: float) -> None:
        """Before a decision at ``t``: bring the busy servers to ``t - lag`` and deliver what is due by ``t``."""
        until = t - self.lag
        for i, node in enumerate(self.nodes):
            if node.plan is not None and node.now < until:
                run.sync(i, until)
        queue = self.queue
        while queue and queue[0][0] <= t:
            _, _, topic, payload = heapq.heappop(queue)
            for s in self.scorers:
                s.receive(topic, payload)
            self.delivered += 1


def attach(schedulers: Iterable[Any], nodes: list[Node], lag: float) -> EventFeed | None:
    """A feed when some scheduler has a precise prefix scorer, else None (and no event is recorded)."""
    scorers = precise_scorers(schedulers)
    return EventFeed(scorers, nodes, lag) if scorers else None
