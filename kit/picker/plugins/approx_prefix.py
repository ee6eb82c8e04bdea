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

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import groupby, takewhile
from typing import Annotated, Any

import xxhash
from pydantic import Field, model_validator

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase, positive_or

CHARS_PER_TOKEN = 4
DEFAULT_BLOCK_TOKENS = 16
DEFAULT_MAX_BLOCKS = 256
DEFAULT_LRU_CAPACITY = 31250


class PrefixParams(Params):
    auto_tune: bool = Field(True, alias="autoTune")
    block_size_tokens: Annotated[int, positive_or(DEFAULT_BLOCK_TOKENS)] = Field(
        DEFAULT_BLOCK_TOKENS, alias="blockSizeTokens")
    block_size: int | None = Field(None, alias="blockSize")
    max_prefix_blocks_to_match: Annotated[int, positive_or(DEFAULT_MAX_BLOCKS)] = Field(
        DEFAULT_MAX_BLOCKS, alias="maxPrefixBlocksToMatch")
    max_prefix_tokens_to_match: int = Field(0, alias="maxPrefixTokensToMatch", ge=0)
    lru_capacity_per_server: Annotated[int, positive_or(DEFAULT_LRU_CAPACITY)] = Field(
        DEFAULT_LRU_CAPACITY, alias="lruCapacityPerServer")

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
    return list(_chain(text.encode()[: block_bytes * max_blocks], seed, block_bytes))


@lru_cache(maxsize=1024)  # whole prompts repeat (a fleet's workload, retries); keys are at most 16 KiB by default
def _chain(data: bytes, seed: str, block_bytes: int) -> tuple[int, ...]:
    prev = xxhash.xxh64_intdigest(seed.encode())
    out = []
    for i in range(0, len(data) - block_bytes + 1, block_bytes):
        prev = xxhash.xxh64_intdigest(data[i : i + block_bytes] + prev.to_bytes(8, "little"))
        out.append(prev)
    return tuple(out)


@dataclass
class PrefixMatch:
    """One request's prefix data: its block hashes, and per endpoint name the blocks matched."""

    hashes: list[int]
    servers: dict[str, int] = field(default_factory=dict)
    block_tokens: int = DEFAULT_BLOCK_TOKENS

    def score(self, ep: Endpoint) -> float:
        return self.servers.get(ep.name, 0) / len(self.hashes) if self.hashes else 0.0

    def scores(self, eps: list[Endpoint]) -> dict[Endpoint, float]:
        """``score`` for every endpoint at once (the hot path: one dict lookup each)."""
        if not self.hashes or not self.servers:
            return dict.fromkeys(eps, 0.0)
        get, total = self.servers.get, len(self.hashes)
        return {ep: get(ep.name, 0) / total for ep in eps}


class PrefixIndex:
    """Which endpoints were sent which block hashes: one LRU per endpoint plus a reverse map."""

    def __init__(self) -> None:
        self.owners: dict[int, set[str]] = {}
        self.lrus: dict[str, OrderedDict[int, None]] = {}
        self.capacity: dict[str, int] = {}

    def match(self, hashes: list[int]) -> dict[str, int]:
        """Per endpoint, how many of the hashes it holds, walking the chain until a hash nobody holds."""
        counts: dict[str, int] = {}
        # Consecutive hashes mostly have the same holders: count each run of equal holder sets at once.
        for owners, run in groupby(takewhile(bool, map(self.owners.get, hashes))):
            k = len(list(run))
            for name in owners:
                counts[name] = counts.get(name, 0) + k
        return counts

    def add(self, name: str, hashes: list[int], capacity: int) -> None:
        lru = self.lrus.get(name)
        if lru is None:
            lru = self.lrus[name] = OrderedDict()
            self.capacity[name] = capacity  # fixed when first created, as upstream
        cap = self.capacity[name]
        owners_of, move = self.owners, lru.move_to_end
        for h in hashes:
            if h in lru:
                move(h)
                continue
            lru[h] = None
            owners = owners_of.get(h)
            if owners is None:
                owners_of[h] = {name}
            else:
                owners.add(name)
            if len(lru) > cap:
                old, _ = lru.popitem(last=False)
                owners = self.owners[old]
                owners.discard(name)
                if not owners:
                    del self.owners[old]

    def remove(self, name: str) -> None:
        for h in self.lrus.pop(name, {}):
            owners = self.owners.get(h)
            if owners is not None:
                owners.discard(name)
                if not owners:
                    del self.owners[h]
        self.capacity.pop(name, None)

    @property
    def size(self) -> int:
        return sum(len(lru) for lru in self.lrus.values())


class ApproxPrefixCacheProducer(PluginBase):
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
        return PrefixMatch(hashes, self.index.match(hashes), tokens)

    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        state[self.name] = self.match(req, eps)

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        """Teach the index where the request went (nothing if this cycle computed no match, as upstream)."""
        match = state.get(self.name)
        if isinstance(match, PrefixMatch) and match.hashes:
            self.index.add(ep.name, match.hashes, self.capacity(ep))

    def gauges(self) -> dict[str, float]:
        return {"inference_extension_prefix_indexer_size": float(self.index.size)}
