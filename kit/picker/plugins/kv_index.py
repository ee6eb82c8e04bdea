"""The precise prefix index: which endpoints hold which KV blocks, learned from vLLM's KV-cache events.

Follows llm-d-kv-cache v0.7.0 (the version llm-d-inference-scheduler v0.7.0 builds on):

* **Request keys** (``kvblock.TokenProcessor``): the index never uses vLLM's block hashes to match
  requests. Tokens are cut into full blocks of ``blockSize`` (a trailing partial block is dropped);
  key *i* is FNV-64a of the canonical CBOR of ``[key i-1, block tokens, null]``, and the chain starts
  at FNV-64a of ``[FNV-64a(hashSeed), null, model]``. A request and the events of the server that
  computed its prompt therefore yield the same keys.
* **Events** (``kvevents.Pool`` with the vLLM adapter): a ``BlockStored`` recomputes the request keys
  from the event's token ids, chained from its parent's request key (found through the map from vLLM
  block hash, the *engine key*, to request key; a parent the index does not know drops the event),
  and adds the endpoint (with the medium as its tier, ``gpu`` by default) under both. ``BlockRemoved``
  removes the endpoint from the key its engine key maps to. ``AllBlocksCleared`` is only logged in
  v0.7.0 (and in every release up to v0.8.1): the index keeps those entries until they are removed or
  pushed out. The topic ``kv@<endpoint>@<model>`` names the endpoint and the model; a ``lora_name``
  replaces the model in the keys.
* **Index** (``kvblock.InMemoryIndex``): an LRU of ``size`` request keys (1e8), each with an LRU of at
  most ``podCacheSize`` (10) entries ``(endpoint, tier, speculative)``, and an LRU map engine key →
  request key of the same size. A lookup walks the request's keys, skipping keys it does not hold and
  stopping at a key whose entries are all gone.
* **Scoring** (``LongestPrefixScorer``): the endpoints holding the first key start with that entry's
  tier weight (``gpu`` 1.0, ``cpu`` 0.8, other tiers 1.0); each further key adds its weight to the
  endpoints still holding it and drops the others; the walk ends when none is left. The result is the
  number of consecutive leading blocks each endpoint holds. The kit walks the index and scores in one
  pass that stops there (upstream looks every key up first: the scores are the same, and the
  ``lookup_hits`` metric counts the best endpoint's held prefix). A lookup does not refresh a key's
  place in the LRU (upstream's does; it matters only once the index holds ``size`` keys).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import cbor2
import fnv_c

from kit.picker.plugins.kv_events import Removed, Stored, decode_batch

DEFAULT_TIER = "gpu"
TIER_WEIGHTS = {"gpu": 1.0, "cpu": 0.8}
fnv1a64 = fnv_c.fnv1a_64  # FNV-1a, 64 bits (Go's hash/fnv New64a), in C


class TokenProcessor:
    """Tokens → request keys (``kvblock.ChunkedTokenDatabase``). Keys of recent blocks are memoised (up to
    ``memo`` of them): a shared prefix is hashed once, not for every request and every event."""

    def __init__(self, block_size: int = 16, hash_seed: str = "", memo: int = 100_000):
        if block_size <= 0:
            raise ValueError(f"blockSize must be greater than 0, got {block_size}")
        self.block_size = block_size
        self.init_hash = fnv1a64(hash_seed.encode())
        self._roots: dict[str, int] = {}
        self._memo: dict[tuple[int, tuple[int, ...]], int] = {}
        self._memo_size = memo

    def _hash(self, parent: int, tokens: Sequence[int] | None, extra: Any = None) -> int:
        return fnv1a64(cbor2.dumps([parent, None if tokens is None else list(tokens), extra], canonical=True))

    def _block(self, parent: int, tokens: tuple[int, ...]) -> int:
        key = (parent, tokens)
        h = self._memo.get(key)
        if h is None:
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            h = self._memo[key] = self._hash(parent, tokens)
        return h

    def root(self, model: str) -> int:
        if model not in self._roots:
            self._roots[model] = self._hash(self.init_hash, None, model)
        return self._roots[model]

    def keys(self, tokens: Sequence[int], model: str, parent: int = 0) -> list[int]:
        """Request keys of the full blocks of ``tokens``, chained from ``parent`` (0: the model's root)."""
        prev = parent or self.root(model)
        bs, out = self.block_size, []
        for i in range(0, len(tokens) - bs + 1, bs):
            prev = self._block(prev, tuple(tokens[i : i + bs]))
            out.append(prev)
        return out


class Entry(NamedTuple):
    """An endpoint holding a block: ``host:port``, the medium (``gpu``, ``cpu``) and whether it is a guess."""

    pod: str
    tier: str = DEFAULT_TIER
    speculative: bool = False


class IndexStats:
    """llm-d-kv-cache's index metrics (``kvcache_index_*``), counted when ``enableMetrics`` is on."""

    def __init__(self) -> None:
        self.admissions = self.evictions = self.lookups = self.hits = self.max_pod_hits = 0.0
        self.lookup_seconds = 0.0

    def gauges(self) -> dict[str, float]:
        return {"kvcache_index_admissions_total": self.admissions,
                "kvcache_index_evictions_total": self.evictions,
                "kvcache_index_lookup_requests_total": self.lookups,
                "kvcache_index_lookup_hits_total": self.hits,
                "kvcache_index_max_pod_hit_count_total": self.max_pod_hits,
                "kvcache_index_lookup_latency_seconds_sum": self.lookup_seconds,
                "kvcache_index_lookup_latency_seconds_count": self.lookups}


class KVBlockIndex:
    """``kvblock.InMemoryIndex``: request key → entries, engine key → request key; thread-safe."""

    def __init__(self, size: int = 100_000_000, pod_cache_size: int = 10, stats: IndexStats | None = None):
        self.size, self.pod_cache_size = size, pod_cache_size
        self.data: OrderedDict[int, list[Entry]] = OrderedDict()  # each list oldest entry first
        self.engine_to_request: OrderedDict[int, int] = OrderedDict()
        self.stats = stats
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.data)

    def add(self, engine_keys: Sequence[int] | None, request_keys: Sequence[int], entries: Sequence[Entry]) -> None:
        if not request_keys or not entries:
            return
        if engine_keys is not None and len(engine_keys) != len(request_keys):
            raise ValueError("mismatch between engine keys and request keys length")
        data, e2r, cap = self.data, self.engine_to_request, self.pod_cache_size
        with self.lock:
            for i, rk in enumerate(request_keys):
                if engine_keys is not None:
                    ek = engine_keys[i]
                    if ek in e2r:
                        e2r.move_to_end(ek)
                    e2r[ek] = rk
                pods = data.get(rk)
                if pods is None:
                    data[rk] = list(entries[-cap:])
                    continue
                data.move_to_end(rk)
                for e in entries:
                    if e in pods:
                        pods.remove(e)
                    pods.append(e)
                    if len(pods) > cap:
                        del pods[0]
            while len(data) > self.size:
                data.popitem(last=False)
            while len(e2r) > self.size:
                e2r.popitem(last=False)
            if self.stats:
                self.stats.admissions += len(request_keys)

    def evict(self, key: int, entries: Sequence[Entry], engine_key: bool = True) -> None:
        """Remove ``entries`` from a key (an engine key, or a request key); a key left empty goes."""
        with self.lock:
            if self.stats:
                self.stats.evictions += len(entries)
            rk = self.engine_to_request.get(key) if engine_key else key
            if rk is None:
                return
            pods = self.data.get(rk)
            if pods is None:
                if engine_key:
                    self.engine_to_request.pop(key, None)
                return
            for e in entries:
                if e in pods:
                    pods.remove(e)
            if not pods:
                del self.data[rk]
                if engine_key:
                    self.engine_to_request.pop(key, None)

    def request_key(self, engine_key: int) -> int | None:
        with self.lock:
            rk = self.engine_to_request.get(engine_key)
            if rk is not None:
                self.engine_to_request.move_to_end(engine_key)
            return rk

    def lookup(self, request_keys: Sequence[int], pods: Iterable[str] | None = None) -> dict[int, list[Entry]]:
        """Entries per request key (only of ``pods`` when given): keys the index lacks are skipped, a key
        whose entries are all gone ends the walk (``InMemoryIndex.Lookup``)."""
        wanted = set(pods) if pods else None
        out: dict[int, list[Entry]] = {}
        with self.lock:
            for rk in request_keys:
                held = self.data.get(rk)
                if held is None:
                    continue
                if not held:
                    break
                entries = [e for e in held if wanted is None or e.pod in wanted]
                if entries:
                    out[rk] = entries
        return out

    def longest_prefix(self, keys: Sequence[int], pods: Iterable[str] | None = None,
                       weights: dict[str, float] | None = None) -> dict[str, float]:
        """Per endpoint, the weighted count of consecutive leading ``keys`` it holds: ``lookup`` and
        ``LongestPrefixScorer`` in one walk that ends when no endpoint is left."""
        weights = TIER_WEIGHTS if weights is None else weights
        wanted = set(pods) if pods else None
        scores: dict[str, float] = {}
        active: set[str] = set()
        with self.lock:
            for i, rk in enumerate(keys):
                held = self.data.get(rk) or {}
                here: dict[str, float] = {}
                for e in held:
                    if wanted is None or e.pod in wanted:
                        w = weights.get(e.tier, 1.0)
                        if w > here.get(e.pod, -1.0):
                            here[e.pod] = w
                if i == 0:
                    scores, active = here, set(here)
                else:
                    for pod in [p for p in active if p not in here]:
                        active.discard(pod)
                    for pod in active:
                        scores[pod] += here[pod]
                if not active:
                    break
            if self.stats:
                self.stats.lookups += 1
                best = max(scores.values(), default=0.0)
                self.stats.max_pod_hits += best
                self.stats.hits += best
        return scores


# ----------------------------------------------------------------------------------------- vLLM events
def parse_topic(topic: str) -> tuple[str, str]:
    """``kv@<endpoint>@<model>`` → (endpoint, model); any other topic names the endpoint alone."""
    parts = topic.split("@")
    return (parts[1], parts[2]) if len(parts) == 3 else (topic, "")


def parse_batch(payload: bytes) -> list[tuple]:
    """vLLM's msgpack ``KVEventBatch``, in either of vLLM's encodings (``kit.picker.plugins.kv_events``) →
    ``("stored", hashes, parent, tokens, tier, lora_name)``, ``("removed", hashes, tier)`` or ``("cleared",)``
    (the vLLM adapter of llm-d-kv-cache v0.7.0; the map encoding of current vLLM is read as llm-d-router
    v0.10.0 reads it)."""
    out: list[tuple] = []
    for ev in decode_batch(payload)[1]:
        if isinstance(ev, Stored):
            tier = ev.medium.lower() if ev.medium else DEFAULT_TIER
            out.append(("stored", ev.hashes, ev.parent or 0, ev.tokens, tier, ev.lora_name or None))
        elif isinstance(ev, Removed):
            out.append(("removed", ev.hashes, ev.medium.lower() if ev.medium else DEFAULT_TIER))
        else:
            out.append(("cleared",))
    return out


def apply_events(index: KVBlockIndex, processor: TokenProcessor, pod: str, model: str,
                 events: Iterable[tuple]) -> None:
    """Update ``index`` with one endpoint's events (``kvevents.Pool.processEventBatch``)."""
    for ev in events:
        if ev[0] == "stored":
            _, engine_keys, parent, tokens, tier, lora = ev
            parent_key = 0
            if parent:
                parent_key = index.request_key(parent)
                if parent_key is None:
                    continue  # the parent is unknown: upstream drops the event
            keys = processor.keys(tokens, lora or model, parent_key)
            if engine_keys and len(keys) == len(engine_keys):
                index.add(engine_keys, keys, [Entry(pod, tier)])
        elif ev[0] == "removed":
            entry = [Entry(pod, ev[2])]
            for h in ev[1]:
                index.evict(h, entry)
        # ("cleared",): logged only, as upstream v0.7.0
