"""``approx-prefix-cache-producer``: the approximate prefix index, and the match data it produces.

Upstream split the approximate prefix scorer in two from GIE v1.5: this producer hashes the prompt,
matches it against its index and records, per candidate, how many leading blocks each endpoint
probably holds; ``prefix-cache-scorer`` turns that into a score. Up to v1.4 (the version the kit
pins) the scorer did both, and the kit's ``prefix-cache-scorer`` still does when no producer is
configured; when one is, every ``prefix-cache-scorer`` reads this producer's matches instead.

Hashing (GIE v1.4.0 and v1.5.0): the prompt text (completions: ``prompt``; chat: the messages as
compact JSON) is cut into blocks of ``blockSizeTokens × 4`` bytes; only **full** blocks are hashed,
at most ``maxPrefixBlocksToMatch`` of them. The chain's root is the xxhash64 of the model name
followed by the request's ``cache_salt``; block *i*'s hash is the xxhash64 of its bytes followed by
block *i − 1*'s hash (8 bytes, little-endian). A prompt shorter than one block has no hashes.

Index: per endpoint an LRU of block hashes, plus a reverse map hash → endpoints. Right after each
pick (``PreRequest``) every hash of the request is added to the chosen endpoint's LRU, created with
capacity ``num_gpu_blocks`` of that endpoint (``autoTune``, when reported) or ``lruCapacityPerServer``;
a capacity is fixed when the LRU is created. Matching walks the chain from the first block and stops
at the first hash no endpoint holds; an endpoint's match is the number of blocks it holds on the way.

Speed (kit-only, same results as hashing the whole prompt and adding one hash at a time, which
``tests/picker/plugins/test_prefix_reference.py`` checks on random prompts and request sequences):
only the characters that can fall in the hashed bytes are encoded; chains are remembered per prompt
head (``ChainMemo``); holder sets are shared frozensets, so a match counts runs of equal holders at
once; ``PreRequest`` updates an LRU in one batch, and only refreshes recency when the cycle's match
showed the endpoint holding every hash and the index has not changed since.

``autoTune`` (default on): the block size comes from the **first** candidate's
``vllm:cache_config_info{block_size}`` (``blockSizeTokens`` when it reports none); the LRU capacity
from the chosen endpoint's ``num_gpu_blocks``.

Parameters: ``autoTune`` (true), ``blockSizeTokens`` (16), ``maxPrefixBlocksToMatch`` (256),
``lruCapacityPerServer`` (31250), ``maxPrefixTokensToMatch`` (0 = off; when set, the block limit is
tokens / block size; a later upstream parameter), ``blockSize`` (deprecated, in characters: an
error unless ``blockSizeTokens`` is also set). Values ≤ 0 fall back to the defaults, as upstream's do.

Example::

    plugins:
    - type: approx-prefix-cache-producer
      parameters:
        blockSizeTokens: 16
        maxPrefixBlocksToMatch: 256
        lruCapacityPerServer: 31250
    - type: prefix-cache-scorer
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import groupby, islice, repeat
from typing import Annotated, Any

import xxhash
from pydantic import Field, model_validator

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase, positive_or

CHARS_PER_TOKEN = 4
DEFAULT_BLOCK_TOKENS = 16
DEFAULT_MAX_BLOCKS = 256
DEFAULT_LRU_CAPACITY = 31250


class PrefixParams(Params):
    auto_tune: bool = Field(True, alias="autoTune", description="block size from the first candidate's "
                                                                 "server, LRU capacity from each server's KV blocks")
    block_size_tokens: Annotated[int, positive_or(DEFAULT_BLOCK_TOKENS)] = Field(
        DEFAULT_BLOCK_TOKENS, alias="blockSizeTokens", description="tokens per block (4 characters each; ≤ 0: 16)")
    block_size: int | None = Field(None, alias="blockSize", description="deprecated: block size in characters")
    max_prefix_blocks_to_match: Annotated[int, positive_or(DEFAULT_MAX_BLOCKS)] = Field(
        DEFAULT_MAX_BLOCKS, alias="maxPrefixBlocksToMatch", description="blocks hashed at most (≤ 0: 256)")
    max_prefix_tokens_to_match: int = Field(0, alias="maxPrefixTokensToMatch", ge=0,
                                            description="tokens hashed at most (0: maxPrefixBlocksToMatch rules)")
    lru_capacity_per_server: Annotated[int, positive_or(DEFAULT_LRU_CAPACITY)] = Field(
        DEFAULT_LRU_CAPACITY, alias="lruCapacityPerServer",
        description="hashes remembered per server without autoTune (≤ 0: 31250)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_block_size(cls, raw: Any) -> Any:
        def positive(key: str) -> bool:
            v = raw.get(key)
            return isinstance(v, int | float) and not isinstance(v, bool) and v > 0

        if isinstance(raw, dict) and positive("blockSize") and not positive("blockSizeTokens"):
            raise ValueError("blockSize: deprecated (characters); set blockSizeTokens instead")
        return raw


def block_hashes(text: str, seed: str, block_bytes: int, max_blocks: int) -> list[int]:
    """Chained xxhash64 of the full ``block_bytes`` blocks of ``text`` (at most ``max_blocks``), rooted
    at the hash of ``seed`` (the model name followed by the cache salt)."""
    limit = block_bytes * max_blocks
    # A character is one to four bytes in UTF-8, so the first ``limit`` characters hold the first
    # ``limit`` bytes: encoding only them gives the same bytes as encoding the whole prompt.
    return list(_CHAINS.get(text[:limit].encode()[:limit], seed, block_bytes))


def chain(data: bytes, seed: str, block_bytes: int) -> tuple[int, ...]:
    """The hash chain of ``data``'s full blocks (``block_hashes`` after the cut, without the memo)."""
    n = len(data) // block_bytes
    h, pack = xxhash.xxh64_intdigest, _LE64.pack
    prev = h(seed.encode())
    out = []
    for block in _blocks(block_bytes, n).unpack_from(data) if n else ():
        prev = h(block + pack(prev))
        out.append(prev)
    return tuple(out)


_LE64 = struct.Struct("<Q")


@lru_cache(maxsize=1024)  # one per block size and block count up to maxPrefixBlocksToMatch
def _blocks(block_bytes: int, n: int) -> struct.Struct:
    """Splits ``n × block_bytes`` bytes into ``n`` blocks in one call."""
    return struct.Struct(f"{block_bytes}s" * n)


class ChainMemo:
    """The chains of the last ``size`` distinct prompt heads (whole prompts repeat: a fleet's workload,
    retries, shared system prompts longer than the hashed head).

    Looked up by a fast xxh3 of the bytes, then the bytes themselves are compared, so a hit is always
    the chain of exactly these bytes (hashing the 16 KiB key with Python's own hash cost more than
    the rest of the lookup)."""

    def __init__(self, size: int = 1024):
        self.size = size
        self.entries: OrderedDict[tuple[int, str, int], tuple[bytes, tuple[int, ...]]] = OrderedDict()

    def get(self, data: bytes, seed: str, block_bytes: int) -> tuple[int, ...]:
        key = (xxhash.xxh3_64_intdigest(data), seed, block_bytes)
        entries = self.entries
        hit = entries.get(key)
        if hit is not None and hit[0] == data:
            with suppress(KeyError):  # another thread may have dropped it meanwhile
                entries.move_to_end(key)
            return hit[1]
        hashes = chain(data, seed, block_bytes)
        entries.pop(key, None)  # other bytes under the same key make way
        entries[key] = (data, hashes)
        while len(entries) > self.size:
            entries.popitem(last=False)
        return hashes


_CHAINS = ChainMemo()


@dataclass
class PrefixMatch:
    """One request's prefix data: its block hashes, and per endpoint name the blocks matched;
    ``version``: the index's version when it matched (-1: not from a ``PrefixIndex``)."""

    hashes: list[int]
    servers: dict[str, int] = field(default_factory=dict)
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    version: int = -1

    def score(self, ep: Endpoint) -> float:
        return self.servers.get(ep.name, 0) / len(self.hashes) if self.hashes else 0.0

    def scores(self, eps: list[Endpoint]) -> dict[Endpoint, float]:
        """``score`` for every endpoint at once (the hot path: one dict lookup each)."""
        if not self.hashes or not self.servers:
            return dict.fromkeys(eps, 0.0)
        get, total = self.servers.get, len(self.hashes)
        return {ep: get(ep.name, 0) / total for ep in eps}


class PrefixIndex:
    """Which endpoints were sent which block hashes: one LRU per endpoint plus a reverse map.

    The reverse map's values are frozensets, shared between hashes with the same holders (``_shared``),
    so a match compares neighbouring hashes' holders by identity. ``version`` counts the changes."""

    SHARED = 4096  # distinct holder sets remembered for sharing; forgetting them only costs speed

    def __init__(self) -> None:
        self.owners: dict[int, frozenset[str]] = {}
        self.lrus: dict[str, OrderedDict[int, None]] = {}
        self.capacity: dict[str, int] = {}
        self.version = 0
        self._shared: dict[frozenset[str], frozenset[str]] = {}

    def _share(self, owners: frozenset[str]) -> frozenset[str]:
        shared = self._shared
        if len(shared) >= self.SHARED:
            shared.clear()
        return shared.setdefault(owners, owners)

    def _gain(self, name: str, hashes: list[int]) -> None:
        """``name`` now holds ``hashes`` (new to its LRU)."""
        owners_of = self.owners
        before = list(map(owners_of.get, hashes))
        if before.count(None) == len(before):  # nobody held them (requests that share nothing)
            owners_of.update(zip(hashes, repeat(self._share(frozenset((name,))))))
            return
        after: dict[frozenset[str] | None, frozenset[str]] = {}
        for h, old in zip(hashes, before, strict=True):
            new = after.get(old)
            if new is None:
                new = after[old] = self._share(frozenset((name,)) if old is None else old | {name})
            owners_of[h] = new

    def _lose(self, name: str, hashes: list[int]) -> None:
        """``name`` no longer holds ``hashes``."""
        owners_of = self.owners
        before = list(map(owners_of.__getitem__, hashes))
        if before.count(frozenset((name,))) == len(before):  # nobody else held them
            deque(map(owners_of.__delitem__, hashes), 0)
            return
        after: dict[frozenset[str], frozenset[str]] = {}
        for h, old in zip(hashes, before, strict=True):
            new = after.get(old)
            if new is None:
                new = after[old] = self._share(old - {name})
            if new:
                owners_of[h] = new
            else:
                del owners_of[h]

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Per endpoint, how many of the hashes it holds, walking the chain until a hash nobody holds."""
        counts: dict[str, int] = {}
        # Neighbouring hashes mostly have the same holders: count each run of them at once.
        for owners, run in groupby(map(self.owners.get, hashes)):
            if owners is None:
                break
            k = len(list(run))
            for name in owners:
                counts[name] = counts.get(name, 0) + k
        return counts

    def add(self, name: str, hashes: Sequence[int], capacity: int, held: bool = False) -> None:
        """Touch or insert each hash in ``name``'s LRU, in order, evicting the least recently used past
        its capacity (fixed when the LRU is created, as upstream). ``held``: the caller knows ``name``
        holds every hash already (only their recency changes)."""
        lru = self.lrus.get(name)
        if lru is None:
            lru = self.lrus[name] = OrderedDict()
            self.capacity[name] = capacity
        self.version += 1
        # An LRU holds the most recently used hashes up to its capacity, in order of last use, however
        # they arrive: inserting the missing hashes, moving all of them to the recent end in order and
        # then evicting the oldest down to the capacity leaves what one hash at a time would.
        if not held:
            size = len(lru)
            deque(map(lru.setdefault, hashes), 0)  # the missing ones, at the recent end in order
            if len(lru) > size:
                self._gain(name, list(islice(reversed(lru), len(lru) - size))[::-1])
        deque(map(lru.move_to_end, hashes), 0)
        if len(lru) > self.capacity[name]:
            popitem = lru.popitem
            self._lose(name, [popitem(last=False)[0] for _ in range(len(lru) - self.capacity[name])])

    def remove(self, name: str) -> None:
        self.version += 1
        self._lose(name, list(self.lrus.pop(name, ())))
        self.capacity.pop(name, None)

    @property
    def size(self) -> int:
        return sum(len(lru) for lru in self.lrus.values())


class ApproxPrefixCacheProducer(PluginBase):
    """``approx-prefix-cache-producer`` of GIE v1.5 as the guide's release reads it: where the picker sent each prompt's
    blocks, matched before the profile runs (module docstring). Parameters: those of ``prefix-cache-scorer``
    (``autoTune`` true, ``blockSizeTokens`` 16, ``maxPrefixBlocksToMatch`` 256, ``maxPrefixTokensToMatch`` 0,
    ``lruCapacityPerServer`` 31250)."""

    type = "approx-prefix-cache-producer"
    Params = PrefixParams

    def __init__(self, name: str | None = None, params: PrefixParams | None = None):
        super().__init__(name, params)
        self.p = params or PrefixParams()
        self.index = PrefixIndex()

    def block_tokens(self, eps: list[Endpoint]) -> int:
        """Tokens per block: the first candidate's ``block_size`` with autoTune, else the parameter."""
        if self.p.auto_tune and eps and (eps[0].metrics.block_size or 0) > 0:
            return eps[0].metrics.block_size  # type: ignore[return-value]
        return self.p.block_size_tokens

    def capacity(self, ep: Endpoint) -> int:
        """LRU entries for ``ep``: its ``num_gpu_blocks`` with autoTune, else ``lruCapacityPerServer``."""
        if self.p.auto_tune and (ep.metrics.num_gpu_blocks or 0) > 0:
            return ep.metrics.num_gpu_blocks  # type: ignore[return-value]
        return self.p.lru_capacity_per_server

    def match(self, req: InferenceRequest, eps: list[Endpoint]) -> PrefixMatch:
        tokens = self.block_tokens(eps)
        max_blocks = self.p.max_prefix_blocks_to_match
        if self.p.max_prefix_tokens_to_match:
            max_blocks = max(1, self.p.max_prefix_tokens_to_match // tokens)
        hashes = block_hashes(req.prompt, req.model + req.cache_salt, tokens * CHARS_PER_TOKEN, max_blocks)
        return PrefixMatch(hashes, self.index.match(hashes), tokens, self.index.version)

    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        state[self.name] = self.match(req, eps)

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        """Teach the index where the request went (nothing if this cycle computed no match, as upstream)."""
        match = state.get(self.name)
        if isinstance(match, PrefixMatch) and match.hashes:
            # Matched every hash, and the index has not changed since: only their recency changes.
            held = match.version == self.index.version and match.servers.get(ep.name) == len(match.hashes)
            self.index.add(ep.name, match.hashes, self.capacity(ep), held)

    def gauges(self) -> dict[str, float]:
        return {"inference_extension_prefix_indexer_size": float(self.index.size)}
