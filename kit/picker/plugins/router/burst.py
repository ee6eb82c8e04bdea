"""``burst-prefix-cache-producer`` (llm-d-router v0.10.0, Alpha): requests arriving together are placed together.

Upstream's package ``requestcontrol/dataproducer/burstprefix``. When many requests that share a prompt arrive at
once (the *n* samples of one prompt in an RL rollout step, a burst of RAG questions over one document), every
server's cache is still cold, so a cache-state producer scores them all zero and load balancing scatters them:
the shared prompt is prefilled on several servers. This producer **holds** each request for a batch window and
assigns the window's requests jointly:

1. each request's tokens (``InferenceRequest.tokens``, from the token producer) are cut into blocks of
   ``blockSizeTokens`` (64; no floor, no auto-tuning) and hashed as the approximate producer hashes them
   (xxhash64 chains from the model and cache salt, the partial tail block included), at most
   ``maxPrefixTokensToMatch / blockSizeTokens`` blocks (0: 2048 blocks);
2. requests with the same hashes form a *group*; a group of two or more is a placement unit, kept whole; a
   single request is a unit only when ``minColocateBlocks`` > 0 and its first ``minColocateBlocks`` blocks
   are shared with another request of the window. Every other request (and one without tokens) gets no
   affinity;
3. units are placed longest prefix first (groups, then single requests), each on the server with the least
   window load (requests, or with ``balanceBy: tokens`` the prefix blocks still to prefill there), ties by
   fewer running requests, then by name; at most ``maxPerReplica`` requests of one group per server (-1: no
   cap) before spilling to the next; with ``minColocateBlocks`` > 0 a unit first prefers the server already
   holding the longest shared prefix (at least that many blocks) among those still below their fair share of
   the window (the window's load over the servers, rounded up);
4. each candidate gets a ``PrefixCacheMatchInfo``: all the request's blocks on its assigned server, 0 elsewhere
   (0 everywhere without an assignment), for ``prefix-cache-scorer`` with ``prefixMatchInfoProducerName`` set
   to this producer.

**The window in the kit.** Upstream's ``Produce`` blocks each request until its window seals (a timer
``windowDurationMs`` after the window's first request), then assigns the whole window over the first request's
candidates. The kit does the same in each place a request waits:

* the gateway awaits ``Scheduler.produce`` before scheduling (as for a rendering token producer): the request
  joins the open window and waits on the event loop until the window's timer seals it;
* the fleet simulator asks ``Scheduler.hold`` at arrival and schedules the request when its window seals, on
  the virtual clock, so the wait is in each request's TTFT as it is upstream;
* a caller that schedules at once (``Scheduler.schedule`` alone: ``kit bench-picker``, tests) holds nothing:
  each request is a window of its own, which upstream gives no affinity either.

The assignment is computed when the first request of a sealed window is scheduled, over that request's
candidates (upstream: over the first request's candidates, at the seal); a request whose assigned server is no
longer a candidate (a retry, a server gone) gets no affinity, as upstream. A window that already holds
``maxBatchSize`` requests refuses the next one: the producer fails for that request, which is scheduled without
the producers after it (upstream returns an error to its director). **Kit-only**: upstream extends its
director's per-producer timeout by the window; the kit's producers have no such timeout.

Parameters: ``windowDurationMs`` (100, 1..10000), ``maxPerReplica`` (-1), ``blockSizeTokens`` (64),
``maxPrefixTokensToMatch`` (0), ``minColocateBlocks`` (0), ``maxBatchSize`` (1000; -1: no cap),
``balanceBy`` (``requests`` or ``tokens``).

Example::

    plugins:
    - type: burst-prefix-cache-producer
      parameters:
        windowDurationMs: 100
        maxPerReplica: -1
        minColocateBlocks: 0
    - type: prefix-cache-scorer
      parameters:
        prefixMatchInfoProducerName: burst-prefix-cache-producer
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase, Post, WindowFull
from kit.picker.plugins.router.approx import token_hashes
from kit.picker.plugins.router.data import PREFIX_MATCH, TOKENIZED_PROMPT, MatchInfo, key

log = logging.getLogger(__name__)

UNLIMITED = -1  # maxPerReplica / maxBatchSize: no cap
DEFAULT_MAX_BLOCKS = 2048
MAX_WINDOW_MS = 10000
LOG_EVERY = 10.0  # seconds between two logged refusals


class BurstParams(Params):
    window_duration_ms: int = Field(100, alias="windowDurationMs",
                                    description="the batch window in milliseconds (1..10000): every request waits "
                                                "up to this long")
    max_per_replica: int = Field(UNLIMITED, alias="maxPerReplica",
                                 description="requests of one group placed on a server before the next is used "
                                             "(-1: the whole group on one server)")
    block_size_tokens: int = Field(64, alias="blockSizeTokens", description="tokens per hashed prefix block")
    max_prefix_tokens_to_match: int = Field(0, alias="maxPrefixTokensToMatch",
                                            description="tokens hashed at most (0: 2048 blocks); at least "
                                                        "blockSizeTokens when set")
    min_colocate_blocks: int = Field(0, alias="minColocateBlocks",
                                     description="leading blocks two units must share to be placed together, and a "
                                                 "single request to get an affinity at all (0: only groups of "
                                                 "identical prompts, spread by load)")
    max_batch_size: int = Field(1000, alias="maxBatchSize",
                                description="requests one window takes at most; the next fails (-1: no cap)")
    balance_by: Literal["requests", "tokens", ""] = Field(
        "requests", alias="balanceBy", description="what a window balances across servers: request counts, or "
                                                   "prefix blocks still to prefill ('' means requests)")

    @field_validator("balance_by", mode="before")
    @classmethod
    def _balance(cls, value: object) -> object:
        if value not in ("requests", "tokens", ""):
            raise ValueError(f"invalid configuration: balanceBy must be \"requests\" or \"tokens\" (current value: "
                             f"{value!r})")
        return value

    @model_validator(mode="after")
    def _checks(self) -> BurstParams:
        def bad(what: str, value: int) -> ValueError:
            return ValueError(f"invalid configuration: {what} (current value: {value})")

        if self.window_duration_ms <= 0:
            raise bad("windowDurationMs must be > 0", self.window_duration_ms)
        if self.window_duration_ms > MAX_WINDOW_MS:
            raise bad(f"windowDurationMs must be <= {MAX_WINDOW_MS}", self.window_duration_ms)
        if self.max_per_replica != UNLIMITED and self.max_per_replica < 1:
            raise bad("maxPerReplica must be -1 (unlimited) or >= 1", self.max_per_replica)
        if self.block_size_tokens <= 0:
            raise bad("blockSizeTokens must be > 0", self.block_size_tokens)
        if self.max_prefix_tokens_to_match < 0:
            raise bad("maxPrefixTokensToMatch must be >= 0", self.max_prefix_tokens_to_match)
        if 0 < self.max_prefix_tokens_to_match < self.block_size_tokens:
            raise ValueError(f"invalid configuration: maxPrefixTokensToMatch ({self.max_prefix_tokens_to_match}) "
                             f"must be 0 or >= blockSizeTokens ({self.block_size_tokens}); a smaller positive value "
                             "yields zero prefix blocks")
        if self.min_colocate_blocks < 0:
            raise bad("minColocateBlocks must be >= 0", self.min_colocate_blocks)
        if self.max_batch_size != UNLIMITED and self.max_batch_size < 1:
            raise bad("maxBatchSize must be -1 (unlimited) or >= 1", self.max_batch_size)
        if not self.balance_by:
            self.balance_by = "requests"
        return self


@dataclass(eq=False)
class Entry:
    """One request in a window: its prefix block hashes and, once the window is assigned, its server."""

    hashes: list[int]
    window: Window | None = None
    assigned: str | None = None  # None: no affinity (scored 0 everywhere)


@dataclass(eq=False)
class Window:
    """Requests that arrived within one window; sealed when its time is up, assigned at the first cycle after."""

    closes: float  # on the plugin's clock
    entries: list[Entry] = field(default_factory=list)
    sealed: bool = False
    assigned: bool = False
    released: asyncio.Event | None = None  # set at the seal (the gateway's waiting requests)


# ------------------------------------------------------------------------------------------ joint assignment
def assign(entries: list[Entry], eps: list[Endpoint], k: int = UNLIMITED, min_colocate: int = 0,
           by_tokens: bool = False) -> None:
    """Set each entry's ``assigned`` server so prompt-sharing requests share servers (the module docstring)."""
    groups: dict[tuple[int, ...], list[Entry]] = {}
    for e in entries:
        if e.hashes:
            groups.setdefault(tuple(e.hashes), []).append(e)
    if not eps or not groups:
        return
    shared = _sharing(groups, min_colocate)
    units = [g for g in groups.values() if len(g) >= 2]
    singles = [g for key_, g in groups.items() if len(g) == 1 and key_ in shared]
    if not units and not singles:
        return
    units.sort(key=lambda g: -len(g[0].hashes))  # stable: the longest prefixes seed the window's index first
    singles.sort(key=lambda g: -len(g[0].hashes))
    total = sum(len(g[0].hashes) if by_tokens else len(g) for g in (*units, *singles))
    fair = -(-total // len(eps))  # each server's fair share of the window, rounded up
    held: dict[int, set[str]] = {}  # block hash → servers assigned a request holding it, in this window
    load: dict[str, int] = {}
    for members in (*units, *singles):
        _place(members, eps, k, min_colocate, fair, held, load, by_tokens)


def _sharing(groups: dict[tuple[int, ...], list[Entry]], min_colocate: int) -> set[tuple[int, ...]]:
    """The groups whose first ``min_colocate`` blocks some other request of the window shares."""
    if min_colocate <= 0:
        return set()
    heads: dict[tuple[int, ...], int] = {}
    for hashes, members in groups.items():
        if len(hashes) >= min_colocate:
            heads[hashes[:min_colocate]] = heads.get(hashes[:min_colocate], 0) + len(members)
    return {h for h in groups if len(h) >= min_colocate and heads[h[:min_colocate]] >= 2}


def _leading(hashes: list[int], held: dict[int, set[str]]) -> dict[str, int]:
    """Per server, the leading blocks of ``hashes`` it already holds in this window."""
    out: dict[str, int] = {}
    for h in hashes:
        holders = held.get(h)
        if not holders:
            break
        for name in holders:
            out[name] = out.get(name, 0) + 1
    return out


def _place(members: list[Entry], eps: list[Endpoint], k: int, min_colocate: int, fair: int,
           held: dict[int, set[str]], load: dict[str, int], by_tokens: bool) -> None:
    """Place one unit: its first server by shared prefix (within the fair share) or least load, the rest of a
    capped group on the least loaded servers; then record its blocks where it went."""
    hashes = members[0].hashes
    prefer = min_colocate > 0
    matches = _leading(hashes, held) if prefer or by_tokens else {}
    here: dict[str, int] = {}  # this unit's requests per server
    i = 0
    while i < len(members):
        target = (_best_match(eps, here, k, load, matches, min_colocate, fair) if prefer else None) \
            or _least_loaded(eps, here, k, load)
        name = target.name
        run = len(members) - i
        if k != UNLIMITED:
            run = min(run, max(1, k - here.get(name, 0)))  # past k × servers: one at a time, rebalanced
        for e in members[i:i + run]:
            e.assigned = name
        first = name not in here
        here[name] = here.get(name, 0) + run
        if not by_tokens:
            load[name] = load.get(name, 0) + run
        elif first:  # the prefix is prefilled once per server, less what it already holds there
            load[name] = load.get(name, 0) + max(0, len(hashes) - matches.get(name, 0))
        i += run
        prefer = False
    for e in members:
        if e.assigned is not None:
            for h in hashes:
                held.setdefault(h, set()).add(e.assigned)


def _before(a: Endpoint, b: Endpoint, load: dict[str, int]) -> bool:
    """Whether ``a`` is preferred to ``b``: less window load, then fewer running requests, then the lower name."""
    return (load.get(a.name, 0), a.metrics.running, a.name) < (load.get(b.name, 0), b.metrics.running, b.name)


def _best_match(eps: list[Endpoint], here: dict[str, int], k: int, load: dict[str, int], matches: dict[str, int],
                min_colocate: int, fair: int) -> Endpoint | None:
    best: Endpoint | None = None
    for ep in eps:
        m = matches.get(ep.name, 0)
        if (k != UNLIMITED and here.get(ep.name, 0) >= k) or load.get(ep.name, 0) >= fair or m < min_colocate:
            continue
        if best is None or m > matches.get(best.name, 0) or (m == matches.get(best.name, 0)
                                                            and _before(ep, best, load)):
            best = ep
    return best


def _least_loaded(eps: list[Endpoint], here: dict[str, int], k: int, load: dict[str, int]) -> Endpoint:
    room = [ep for ep in eps if k == UNLIMITED or here.get(ep.name, 0) < k] or eps
    best = room[0]
    for ep in room[1:]:
        if _before(ep, best, load):
            best = ep
    return best


# ------------------------------------------------------------------------------------------ the plugin
class BurstPrefixProducer(PluginBase):
    """``burst-prefix-cache-producer`` of llm-d-router v0.10.0 (Alpha): holds requests for a batch window and places
    the window's prompt-sharing requests together (module docstring). Parameters: ``windowDurationMs`` (100),
    ``maxPerReplica`` (-1), ``blockSizeTokens`` (64), ``maxPrefixTokensToMatch`` (0), ``minColocateBlocks`` (0),
    ``maxBatchSize`` (1000), ``balanceBy`` (``requests``)."""

    type = "burst-prefix-cache-producer"
    Params = BurstParams

    def __init__(self, name: str | None = None, params: BurstParams | None = None):
        super().__init__(name, params)
        self.p = params or BurstParams()
        self.window_s = self.p.window_duration_ms / 1000
        tokens = self.p.max_prefix_tokens_to_match
        self.max_blocks = tokens // self.p.block_size_tokens if tokens > 0 else DEFAULT_MAX_BLOCKS
        self.key = key(PREFIX_MATCH, self.name)
        self.open: Window | None = None
        self.refused = 0  # requests a full window turned away
        self._last_log, self._dropped = -math.inf, 0

    def data_produced(self) -> set[str]:
        return {self.key}

    def data_consumed(self) -> tuple[set[str], set[str]]:
        return {key(TOKENIZED_PROMPT)}, set()

    def join(self, req: InferenceRequest) -> float:
        """Take ``req`` into the open window (opening one if none is open); the time (plugin clock) it seals.
        ``WindowFull`` when the window holds ``maxBatchSize`` requests already."""
        now = self.clock()
        w = self.open
        if w is None or w.sealed or now >= w.closes:
            if w is not None:
                self.seal(w)
            w = self.open = Window(now + self.window_s)
        if self.p.max_batch_size != UNLIMITED and len(w.entries) >= self.p.max_batch_size:
            self._refuse(now)
            raise WindowFull(f"{self.name}: burst prefix batch full: maxBatchSize {self.p.max_batch_size} reached")
        hashes = token_hashes(req.tokens, req.model + req.cache_salt, self.p.block_size_tokens, self.max_blocks) \
            if req.tokens else []
        entry = Entry(hashes, w)
        w.entries.append(entry)
        if req.held is None:
            req.held = {}
        req.held[self.name] = entry
        return w.closes

    def _refuse(self, now: float) -> None:
        """Count a request a full window turned away; log it, at most once every 10 seconds."""
        self.refused += 1
        if now - self._last_log >= LOG_EVERY:
            more = f" ({self._dropped} more since the last message)" if self._dropped else ""
            log.warning("%s: the batch window holds maxBatchSize (%d) requests; the request is scheduled without "
                        "burst affinity%s", self.name, self.p.max_batch_size, more)
            self._last_log, self._dropped = now, 0
        else:
            self._dropped += 1

    def seal(self, w: Window) -> None:
        """Close ``w`` to newcomers and release the requests waiting on it."""
        w.sealed = True
        if self.open is w:
            self.open = None
        if w.released is not None:
            w.released.set()

    async def produce(self, req: InferenceRequest, post: Post, default_url: str = "") -> bool:
        """Hold ``req`` until its window seals (the gateway, on its event loop). False when the window is full."""
        try:
            closes = self.join(req)
        except WindowFull:
            return False
        w = req.held[self.name].window  # type: ignore[index]
        assert w is not None
        if w.released is None:  # the window's first request starts its timer
            w.released = asyncio.Event()
            asyncio.get_running_loop().call_later(max(0.0, closes - self.clock()), self.seal, w)
        await w.released.wait()
        return True

    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        entry = (req.held or {}).get(self.name)
        if entry is None:  # not held (scheduled at once): a window of its own, which gets no affinity
            size = self.p.block_size_tokens
            total = len(token_hashes(req.tokens, req.model + req.cache_salt, size, self.max_blocks)) \
                if req.tokens else 0
            state[self.key] = {ep.name: MatchInfo(0, total, size) for ep in eps}
            return
        w = entry.window
        if w is not None and not w.assigned:
            if not w.sealed:  # a caller on a virtual clock schedules its held requests when the window closes
                self.seal(w)
            assign(w.entries, eps, self.p.max_per_replica, self.p.min_colocate_blocks, self.p.balance_by == "tokens")
            w.assigned = True
            for e in w.entries:
                e.window = None  # the window is done; each request keeps only its own answer
        total, size, to = len(entry.hashes), self.p.block_size_tokens, entry.assigned
        state[self.key] = {ep.name: MatchInfo(total if ep.name == to else 0, total, size) for ep in eps}
        if to is not None and all(ep.name != to for ep in eps):
            log.debug("%s: request %s was assigned %s, which is not a candidate; no affinity", self.name,
                      req.request_id, to)

    def gauges(self) -> dict[str, float]:
        return {"kit_burst_prefix_batch_full": float(self.refused)}
