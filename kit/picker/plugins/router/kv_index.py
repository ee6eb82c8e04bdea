"""The precise prefix index of llm-d-router v0.10.0 (``pkg/kvcache``, ``pkg/kvevents``), fed by vLLM's KV-cache events.

What changed from the guide's release (``kit.picker.plugins.kv_index``, llm-d-kv-cache v0.7.0):

* **block sizes may differ.** The index cuts tokens into its own blocks (``tokenProcessorConfig``'s
  ``blockSizeTokens``); a ``BlockStored`` of *n* engine blocks covering *m* of the index's blocks maps the
  engine keys to the request keys by their ratio (1:1, many:1 or 1:many), and an event that covers no full
  index block is dropped (its blocks' children then find no parent and are dropped too);
* **extra keys**: a block's ``extra_keys`` (multimodal ids, the cache salt in block 0, a LoRA name) become part
  of its request key, and a request's cache salt is folded into its first block the same way, so salted
  prompts match only their own blocks;
* **groups** (vLLM's hybrid KV cache): an event's ``group_idx`` is part of the entry; a group whose
  ``kv_cache_spec_kind`` is not full, MLA or sink-full attention is not indexed; a removal for a group never
  seen stored is skipped;
* **duplicate removals** are reference-counted per endpoint, tier and group (a hash stored twice is evicted
  by its second removal);
* **AllBlocksCleared clears the endpoint**: every entry it holds, in every tier, is removed;
* a lookup refreshes the keys it finds in the index's LRU.

Index (``InMemoryIndex``): an LRU of ``size`` request keys (1e8), each with an LRU of at most ``podCacheSize``
(10) entries (endpoint, tier, speculative, group), and an LRU map engine key → request keys. Scoring
(``LongestPrefixScorer``) is unchanged: leading blocks held, weighted by tier (gpu 1.0, cpu 0.8, others 1.0).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from kit.picker.plugins.kv_events import Cleared, Event, Removed, Stored
from kit.picker.plugins.kv_index import IndexStats, TokenProcessor

DEFAULT_TIER = "gpu"
INDEXED_KINDS = {"full_attention", "mla_attention", "sink_full_attention"}


class Entry(NamedTuple):
    """One endpoint holding a block: ``host:port``, tier, whether it is a guess, its KV-cache group (or None)."""

    pod: str
    tier: str = DEFAULT_TIER
    speculative: bool = False
    group: int | None = None


class Tokens(TokenProcessor):
    """Request keys as ``kvblock.ChunkedTokenDatabase``, with each block's extra keys (strings) in its hash."""

    def keys_with(self, tokens: Sequence[int], model: str, parent: int = 0,
                  extras: Sequence[tuple[str, ...] | None] | None = None) -> list[int]:
        if not extras or not any(extras):
            return self.keys(tokens, model, parent)
        prev = parent or self.root(model)
        bs, out = self.block_size, []
        for n, i in enumerate(range(0, len(tokens) - bs + 1, bs)):
            extra = extras[n] if n < len(extras) else None
            block = tuple(tokens[i : i + bs])
            prev = self._hash(prev, block, [{"Hash": h} for h in extra]) if extra else self._block(prev, block)
            out.append(prev)
        return out


def parse_extra_keys(raw: list[Any] | None) -> list[tuple[str, ...] | None] | None:
    """Per engine block, the strings of its ``extra_keys`` (a string entry, or an array's first string)."""
    if raw is None:
        return None
    out: list[tuple[str, ...] | None] = []
    for keys in raw:
        found = []
        for entry in keys or ():
            if isinstance(entry, str):
                found.append(entry)
            elif isinstance(entry, list) and entry and isinstance(entry[0], str):
                found.append(entry[0])
        out.append(tuple(found) or None)
    return out


def realign(extras: list[tuple[str, ...] | None], blocks: int) -> list[tuple[str, ...] | None]:
    """Per-engine-block extras at the index's block granularity (replicated 1:many, merged many:1)."""
    n = len(extras)
    if blocks == 0 or n == 0 or n == blocks:
        return extras
    if n < blocks:
        return [extras[i * n // blocks] for i in range(blocks)]
    merged: list[list[str] | None] = [None] * blocks
    for i, e in enumerate(extras):
        if e:
            slot = merged[i * blocks // n]
            merged[i * blocks // n] = [*(slot or []), *e]
    return [tuple(m) if m else None for m in merged]


class Index:
    """``kvblock.InMemoryIndex`` of llm-d-router v0.10.0; thread-safe (the subscriber thread writes it)."""

    def __init__(self, size: int = 100_000_000, pod_cache_size: int = 10, stats: IndexStats | None = None):
        self.size, self.pod_cache_size, self.stats = size, pod_cache_size, stats
        self.data: OrderedDict[int, OrderedDict[Entry, None]] = OrderedDict()
        self.engine_to_request: OrderedDict[int, list[int]] = OrderedDict()
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.data)

    def add(self, engine_keys: Sequence[int] | None, request_keys: Sequence[int], entries: Sequence[Entry]) -> None:
        if not request_keys or not entries:
            return
        with self.lock:
            if engine_keys:
                e2r, n = self.engine_to_request, max(len(engine_keys), len(request_keys))
                mapping: dict[int, list[int]] = {}
                for i in range(n):
                    mapping.setdefault(engine_keys[i * len(engine_keys) // n], []).append(
                        request_keys[i * len(request_keys) // n])
                for ek, rks in mapping.items():
                    e2r.pop(ek, None)
                    e2r[ek] = rks
                while len(e2r) > self.size:
                    e2r.popitem(last=False)
            data, cap = self.data, self.pod_cache_size
            for rk in request_keys:
                pods = data.get(rk)
                if pods is None:
                    pods = data[rk] = OrderedDict()
                else:
                    data.move_to_end(rk)
                for e in entries:
                    pods.pop(e, None)
                    pods[e] = None
                    while len(pods) > cap:
                        pods.popitem(last=False)
            while len(data) > self.size:
                data.popitem(last=False)
            if self.stats:
                self.stats.admissions += len(request_keys)

    def _evict_request(self, rk: int, entries: Iterable[Entry]) -> None:
        pods = self.data.get(rk)
        if pods is None:
            return
        for e in entries:
            pods.pop(e, None)
        if not pods:
            del self.data[rk]

    def evict(self, key: int, entries: Sequence[Entry], engine_key: bool = True) -> None:
        """Remove ``entries`` from the request keys an engine key maps to (or from one request key)."""
        with self.lock:
            if self.stats:
                self.stats.evictions += len(entries)
            if not engine_key:
                self._evict_request(key, entries)
                return
            rks = self.engine_to_request.get(key)
            if rks is None:
                return
            for rk in rks:
                self._evict_request(rk, entries)
            if all(rk not in self.data for rk in rks):
                del self.engine_to_request[key]

    def clear(self, pod: str) -> None:
        """Every entry ``pod`` holds, in every tier, is removed (the engine-key map is left to age out)."""
        with self.lock:
            for rk in list(self.data):
                pods = self.data[rk]
                gone = [e for e in pods if e.pod == pod]
                if gone:
                    self._evict_request(rk, gone)

    def request_key(self, engine_key: int) -> int | None:
        with self.lock:
            rks = self.engine_to_request.get(engine_key)
            if not rks:
                return None
            self.engine_to_request.move_to_end(engine_key)
            return rks[-1]

    def lookup(self, keys: Sequence[int], pods: set[str] | None) -> dict[int, list[Entry]]:
        """Entries per request key, only of ``pods`` when given: keys the index lacks are skipped, the walk ends
        at a key left without entries (``InMemoryIndex.Lookup``)."""
        out: dict[int, list[Entry]] = {}
        with self.lock:
            data = self.data
            for rk in keys:
                held = data.get(rk)
                if held is None:
                    continue
                if not held:
                    break
                data.move_to_end(rk)
                entries = [e for e in held if pods is None or e.pod in pods]
                if entries:
                    out[rk] = entries
            if self.stats:
                self.stats.lookups += 1
        return out


def longest_prefix(keys: Sequence[int], found: dict[int, list[Entry]],
                   weights: dict[str, float]) -> dict[str, float]:
    """``LongestPrefixScorer``: per endpoint, the tier-weighted count of leading keys it holds."""
    scores: dict[str, float] = {}
    active: set[str] = set()
    for i, rk in enumerate(keys):
        here: dict[str, float] = {}
        for e in found.get(rk, ()):
            w = weights.get(e.tier, 1.0)
            if w > here.get(e.pod, -1.0):
                here[e.pod] = w
        if i == 0:
            scores, active = dict(here), set(here)
        else:
            active &= here.keys()
            for pod in active:
                scores[pod] += here[pod]
        if not active:
            break
    return scores


def held_blocks(keys: Sequence[int], found: dict[int, list[Entry]], pod: str) -> tuple[int, dict[str, int]]:
    """The leading blocks ``pod`` holds, unweighted, and per tier (a speculative entry's tier is 'speculative')."""
    count = 0
    for rk in keys:
        if not any(e.pod == pod for e in found.get(rk, ())):
            break
        count += 1
    by_tier: dict[str, int] = {}
    alive: set[str] | None = None
    for rk in keys:
        tiers = {"speculative" if e.speculative else e.tier for e in found.get(rk, ()) if e.pod == pod}
        alive = tiers if alive is None else alive & tiers
        if not alive:
            break
        for t in alive:
            by_tier[t] = by_tier.get(t, 0) + 1
    return count, by_tier


class Dedup:
    """Reference counts of stored hashes per (endpoint, tier, group): a removal is passed on when the last store
    of the hash is released, or when the hash was never seen stored."""

    def __init__(self) -> None:
        self.refs: dict[str, dict[tuple[str, int, int], int]] = {}

    def stored(self, pod: str, tier: str, group: int | None, hashes: Iterable[int]) -> None:
        bucket = self.refs.setdefault(pod, {})
        g = -1 if group is None else group
        for h in hashes:
            k = (tier, g, h)
            bucket[k] = bucket.get(k, 0) + 1

    def removed(self, pod: str, tier: str, group: int | None, hashes: Iterable[int]) -> list[int]:
        bucket = self.refs.get(pod)
        g = -1 if group is None else group
        kept = []
        for h in hashes:
            k = (tier, g, h)
            n = bucket.get(k, 0) if bucket is not None else 0
            if n <= 0:
                kept.append(h)
            elif n == 1:
                del bucket[k]  # type: ignore[union-attr]
                kept.append(h)
            else:
                bucket[k] = n - 1  # type: ignore[index]
        if bucket is not None and not bucket:
            del self.refs[pod]
        return kept

    def clear(self, pod: str) -> None:
        self.refs.pop(pod, None)


class Pool:
    """``kvevents.Pool``'s processing of one endpoint's event batches into the index (in arrival order)."""

    def __init__(self, index: Index, tokens: Tokens):
        self.index, self.tokens = index, tokens
        self.groups: dict[tuple[str, int], str] = {}  # (endpoint, group) → kv_cache_spec_kind
        self.dedup = Dedup()
        self.lock = threading.Lock()
        self.skipped = 0  # events not indexed (unsupported group kind, unaligned blocks, unknown parent)

    def apply(self, pod: str, model: str, events: Iterable[Event]) -> None:
        with self.lock:
            for ev in events:
                if isinstance(ev, Stored):
                    self._stored(pod, model, ev)
                elif isinstance(ev, Removed):
                    self._removed(pod, ev)
                elif isinstance(ev, Cleared):
                    self.clear(pod)

    def clear(self, pod: str) -> None:
        self.index.clear(pod)
        self.dedup.clear(pod)

    def _stored(self, pod: str, model: str, ev: Stored) -> None:
        tier = (ev.medium or DEFAULT_TIER).lower()
        kind = ev.kind
        if ev.group_idx is not None:
            if not kind:
                kind = self.groups.get((pod, ev.group_idx))
            else:
                self.groups[(pod, ev.group_idx)] = kind
            if kind not in INDEXED_KINDS or (ev.tokens and (ev.block_size <= 0 or len(ev.tokens) % ev.block_size
                                                             or len(ev.tokens) // ev.block_size != len(ev.hashes))):
                self.skipped += 1
                return
        entry = Entry(pod, tier, False, ev.group_idx)
        parent = 0
        if ev.parent:
            found = self.index.request_key(ev.parent)
            if found is None:
                self.skipped += 1
                return  # the parent is unknown: upstream drops the event
            parent = found
        extras = parse_extra_keys(ev.extra_keys)
        blocks = len(ev.tokens) // self.tokens.block_size
        if extras is not None:
            extras = realign(extras, blocks) if blocks else None
        keys = self.tokens.keys_with(ev.tokens, ev.lora_name or model, parent, extras)
        if not keys:
            if not ev.tokens and ev.hashes:  # a tier update (an offload): the blocks' keys gain this tier
                rks = list(dict.fromkeys(rk for h in ev.hashes if (rk := self.index.request_key(h)) is not None))
                if rks:
                    self.index.add(None, rks, [entry])
                    self.dedup.stored(pod, tier, ev.group_idx, ev.hashes)
            else:
                self.skipped += 1
            return
        self.index.add(ev.hashes, keys, [entry])
        self.dedup.stored(pod, tier, ev.group_idx, ev.hashes)

    def _removed(self, pod: str, ev: Removed) -> None:
        tier = (ev.medium or DEFAULT_TIER).lower()
        if ev.group_idx is not None and self.groups.get((pod, ev.group_idx)) not in INDEXED_KINDS:
            self.skipped += 1
            return
        entry = [Entry(pod, tier, False, ev.group_idx)]
        for h in self.dedup.removed(pod, tier, ev.group_idx, ev.hashes):
            self.index.evict(h, entry)
