"""``prefix-cache-scorer``: prefer endpoints that probably hold the prompt's prefix in their KV cache.

Approximate, like upstream: the picker never sees the servers' caches. It hashes the prompt text
(completions: ``prompt``; chat: the messages as compact JSON) in blocks of ``blockSizeTokens × 4``
bytes, chaining each block's xxhash64 with the previous hash (the root is the hash of the model
name; a trailing partial block is hashed too), and remembers, per endpoint, the hashes of requests
it routed there, in an LRU of ``lruCapacityPerServer`` entries. Right after each pick the request's
hashes are added to the chosen endpoint's LRU. Score = matched blocks / prompt blocks, walking the
chain from the start and stopping at the first hash no endpoint holds. A prompt shorter than one
block scores 0 everywhere.

With ``autoTune`` (default), the block size and LRU capacity come from the endpoints'
``vllm:cache_config_info`` (``block_size``, ``num_gpu_blocks``) when they report it.

Parameters: ``autoTune`` (true), ``blockSizeTokens`` (16), ``maxPrefixBlocksToMatch`` (256),
``maxPrefixTokensToMatch`` (0 = off; when set it wins), ``lruCapacityPerServer`` (31250),
``blockSize`` (deprecated, in characters: rejected unless ``blockSizeTokens`` is also set).

Example::

    plugins:
    - type: prefix-cache-scorer
      parameters:
        blockSizeTokens: 16
        maxPrefixBlocksToMatch: 256
        lruCapacityPerServer: 31250
"""

from __future__ import annotations

from collections import OrderedDict

import xxhash
from pydantic import Field, model_validator

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase

CHARS_PER_TOKEN = 4


class PrefixParams(Params):
    auto_tune: bool = Field(True, alias="autoTune")
    block_size_tokens: int | None = Field(None, alias="blockSizeTokens", gt=0)
    block_size: int | None = Field(None, alias="blockSize", gt=0)
    max_prefix_blocks_to_match: int = Field(256, alias="maxPrefixBlocksToMatch", gt=0)
    max_prefix_tokens_to_match: int = Field(0, alias="maxPrefixTokensToMatch", ge=0)
    lru_capacity_per_server: int = Field(31250, alias="lruCapacityPerServer", gt=0)

    @model_validator(mode="after")
    def _legacy_block_size(self) -> PrefixParams:
        if self.block_size is not None and self.block_size_tokens is None:
            raise ValueError("blockSize: deprecated (characters); set blockSizeTokens instead")
        return self

    @property
    def tokens_per_block(self) -> int:
        return self.block_size_tokens or 16


def block_hashes(text: str, model: str, block_bytes: int, max_blocks: int) -> list[int]:
    """Chained xxhash64 of ``text`` in ``block_bytes`` blocks (partial tail included), at most ``max_blocks``."""
    data = text.encode()[: block_bytes * max_blocks]
    if len(data) < block_bytes:
        return []
    prev = xxhash.xxh64_intdigest(model.encode())
    out = []
    for i in range(0, len(data), block_bytes):
        prev = xxhash.xxh64_intdigest(data[i : i + block_bytes] + prev.to_bytes(8, "little"))
        out.append(prev)
    return out


class PrefixIndex:
    """Which endpoints were sent which block hashes: one LRU per endpoint plus a reverse map."""

    def __init__(self) -> None:
        self.owners: dict[int, set[str]] = {}
        self.lrus: dict[str, OrderedDict[int, None]] = {}
        self.capacity: dict[str, int] = {}

    def match(self, hashes: list[int]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for h in hashes:
            owners = self.owners.get(h)
            if not owners:
                break
            for name in owners:
                counts[name] = counts.get(name, 0) + 1
        return counts

    def add(self, name: str, hashes: list[int], capacity: int) -> None:
        lru = self.lrus.get(name)
        if lru is None:
            lru = self.lrus[name] = OrderedDict()
            self.capacity[name] = capacity  # fixed when first created, as upstream
        cap = self.capacity[name]
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            self.owners.setdefault(h, set()).add(name)
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


class PrefixCacheScorer(PluginBase):
    type = "prefix-cache-scorer"
    Params = PrefixParams

    def __init__(self, name: str | None = None, params: PrefixParams | None = None):
        super().__init__(name, params)
        self.p = params or PrefixParams()
        self.index = PrefixIndex()

    def _tuned(self, eps: list[Endpoint]) -> tuple[int, int]:
        """(tokens per block, LRU capacity) for these endpoints."""
        tokens, capacity = self.p.tokens_per_block, self.p.lru_capacity_per_server
        if self.p.auto_tune:
            for ep in eps:
                if ep.metrics.block_size:
                    tokens = ep.metrics.block_size
                    if ep.metrics.num_gpu_blocks:
                        capacity = ep.metrics.num_gpu_blocks
                    break
        return tokens, capacity

    def hashes(self, req: InferenceRequest, eps: list[Endpoint]) -> list[int]:
        tokens, _ = self._tuned(eps)
        max_blocks = self.p.max_prefix_blocks_to_match
        if self.p.max_prefix_tokens_to_match:
            max_blocks = max(1, self.p.max_prefix_tokens_to_match // tokens)
        return block_hashes(req.prompt, req.model, tokens * CHARS_PER_TOKEN, max_blocks)

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        hashes = self.hashes(req, eps)
        state[self.name] = hashes
        if not hashes:
            return dict.fromkeys(eps, 0.0)
        counts = self.index.match(hashes)
        total = len(hashes)
        return {ep: counts.get(ep.name, 0) / total for ep in eps}

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        hashes = state.get(self.name)
        if hashes is None:
            hashes = self.hashes(req, [ep])
        if hashes:
            self.index.add(ep.name, hashes, self._tuned([ep])[1])

    def gauges(self) -> dict[str, float]:
        return {"inference_extension_prefix_indexer_size": float(self.index.size)}
