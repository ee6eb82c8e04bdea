"""``approx-prefix-cache-producer`` (llm-d-router v0.10.0): where the picker sent each prompt's blocks, matched per
endpoint (upstream's package ``requestcontrol/dataproducer/approximateprefix``, hashing in ``prefixhash``).

What changed from the guide's release (``kit.picker.plugins.approx_prefix``, GIE v1.4.0):

* it hashes **tokens**, the request's ``TokenizedPrompt`` (``InferenceRequest.tokens``), which a token producer
  fills; when none is configured the loader creates one with no parameters, i.e. the tokenizer-free
  *estimate* backend (the request's bytes packed four to a pseudo-token), so by default the blocks cover
  ``4 × blockSizeTokens`` bytes of the prompt, as before, but are cut and hashed differently;
* a block hash is xxhash64 of (xxhash64 of the block's token ids as little-endian uint32) followed by the
  previous hash (8 bytes, little-endian); the chain's root is xxhash64 of the model name followed by the
  cache salt; the trailing **partial** block is hashed too;
* the block size is ``blockSizeTokens`` (16), or with ``autoTune`` (on) the first candidate's reported
  ``block_size``, but never below **64** tokens (upstream's floor against index memory, llm-d-router #1158);
* at most ``maxPrefixTokensToMatch / block size`` blocks are hashed (**131072** tokens by default); when that
  is 0, ``maxPrefixBlocksToMatch`` (**2048**, deprecated) caps them; both 0 means no cap;
* ``blockSize`` (deprecated, characters) is accepted with a warning and, while ``blockSizeTokens`` is left at
  16, taken as the block size in tokens.

Matching (each endpoint's count of leading hashes it holds, walking until a hash nobody holds), the index
(an LRU per endpoint: ``num_gpu_blocks`` with autoTune, else ``lruCapacityPerServer``, 31250) and the update
after each pick (``PreRequest``) are as before (``PrefixIndex``). Each candidate gets a ``MatchInfo``
(matched blocks, the request's blocks, the block size) under ``PrefixCacheMatchInfoDataKey/<name>``.

Example::

    plugins:
    - type: approx-prefix-cache-producer
      parameters:
        maxPrefixTokensToMatch: 40960
"""

from __future__ import annotations

import struct
from typing import Any

import xxhash
from pydantic import Field, ValidationInfo, model_validator

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase, note
from kit.picker.plugins.approx_prefix import PrefixIndex, PrefixMatch
from kit.picker.plugins.router.data import PREFIX_MATCH, TOKENIZED_PROMPT, MatchInfo, key

DEFAULT_BLOCK_TOKENS = 16
MIN_BLOCK_TOKENS = 64
DEFAULT_MAX_BLOCKS = 2048
DEFAULT_MAX_TOKENS = 131072
DEFAULT_LRU_CAPACITY = 31250
_LE64 = struct.Struct("<Q")
MASK32 = 0xFFFFFFFF


class ApproxParams(Params):
    auto_tune: bool = Field(True, alias="autoTune", description="take the block size from the first candidate's "
                                                                "vllm:cache_config_info and each endpoint's LRU "
                                                                "capacity from its num_gpu_blocks")
    block_size_tokens: int = Field(DEFAULT_BLOCK_TOKENS, alias="blockSizeTokens",
                                   description="tokens per block (never below 64 in use)")
    block_size: int = Field(0, alias="blockSize", description="deprecated: the block size in characters; taken "
                                                              "as blockSizeTokens while that is left at 16")
    max_prefix_blocks_to_match: int = Field(DEFAULT_MAX_BLOCKS, alias="maxPrefixBlocksToMatch",
                                            description="deprecated: block cap, used only when "
                                                        "maxPrefixTokensToMatch is 0 (0 as well: no cap)")
    max_prefix_tokens_to_match: int = Field(DEFAULT_MAX_TOKENS, alias="maxPrefixTokensToMatch", ge=0,
                                            description="tokens of the prompt hashed at most (blocks = tokens / "
                                                        "block size)")
    lru_capacity_per_server: int = Field(DEFAULT_LRU_CAPACITY, alias="lruCapacityPerServer",
                                         description="block hashes remembered per endpoint when autoTune has no "
                                                     "num_gpu_blocks (values ≤ 0: 31250)")

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> ApproxParams:
        if self.block_size > 0:
            note(info, "blockSize: 'blockSize' is deprecated; use 'blockSizeTokens' instead (llm-d-router v0.10.0's "
                       "warning)")
            if self.block_size_tokens == DEFAULT_BLOCK_TOKENS:
                self.block_size_tokens = self.block_size
            self.block_size = 0
        if not self.auto_tune and self.block_size_tokens <= 0:
            raise ValueError(f"blockSizeTokens must be > 0 when autoTune is disabled (got {self.block_size_tokens})")
        explicit = self.model_fields_set & {"block_size_tokens", "block_size"}
        if 0 < self.block_size_tokens < MIN_BLOCK_TOKENS and explicit:
            note(info, f"blockSizeTokens: {self.block_size_tokens} is below the minimum of {MIN_BLOCK_TOKENS}; "
                       f"{MIN_BLOCK_TOKENS} applies, as llm-d-router v0.10.0 overrides it")
        return self


def token_hashes(tokens: list[int], root: str, block_tokens: int, max_blocks: int) -> list[int]:
    """The chained block hashes of ``tokens`` (partial tail included), at most ``max_blocks`` of them."""
    h64, pack = xxhash.xxh64_intdigest, _LE64.pack
    prev = h64(root.encode())
    out: list[int] = []
    n = len(tokens)
    for start in range(0, n, block_tokens):
        if len(out) >= max_blocks:
            break
        block = tokens[start : start + block_tokens]
        try:
            raw = struct.pack(f"<{len(block)}I", *block)
        except struct.error:  # an id outside uint32: as Go's conversion wraps it
            raw = struct.pack(f"<{len(block)}I", *(t & MASK32 for t in block))
        prev = h64(pack(h64(raw)) + pack(prev))
        out.append(prev)
    return out


class ApproxPrefixProducer(PluginBase):
    """``approx-prefix-cache-producer`` of llm-d-router v0.10.0 (see the module docstring). Parameters: ``autoTune``
    (true), ``blockSizeTokens`` (16, at least 64 in use), ``blockSize`` (deprecated), ``maxPrefixTokensToMatch``
    (131072), ``maxPrefixBlocksToMatch`` (2048, deprecated), ``lruCapacityPerServer`` (31250)."""

    type = "approx-prefix-cache-producer"
    Params = ApproxParams

    def __init__(self, name: str | None = None, params: ApproxParams | None = None):
        super().__init__(name, params)
        self.p = params or ApproxParams()
        self.index = PrefixIndex()
        self.key = key(PREFIX_MATCH, self.name)

    def data_produced(self) -> set[str]:
        return {self.key}

    def data_consumed(self) -> tuple[set[str], set[str]]:
        return {key(TOKENIZED_PROMPT)}, set()

    def block_tokens(self, eps: list[Endpoint]) -> int:
        size = self.p.block_size_tokens
        if self.p.auto_tune and eps and (eps[0].metrics.block_size or 0) > 0:
            size = eps[0].metrics.block_size  # type: ignore[assignment]
        return max(size, MIN_BLOCK_TOKENS)

    def max_blocks(self, block_tokens: int) -> int:
        if self.p.max_prefix_tokens_to_match > 0:
            return self.p.max_prefix_tokens_to_match // block_tokens
        return self.p.max_prefix_blocks_to_match or (1 << 62)

    def capacity(self, ep: Endpoint) -> int:
        if self.p.auto_tune and (ep.metrics.num_gpu_blocks or 0) > 0:
            return ep.metrics.num_gpu_blocks  # type: ignore[return-value]
        return self.p.lru_capacity_per_server if self.p.lru_capacity_per_server > 0 else DEFAULT_LRU_CAPACITY

    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        size = self.block_tokens(eps)
        hashes = token_hashes(req.tokens, req.model + req.cache_salt, size, self.max_blocks(size)) \
            if req.tokens else []
        matched = self.index.match(hashes) if hashes else {}
        total = len(hashes)
        get = matched.get
        state[self.key] = {ep.name: MatchInfo(get(ep.name, 0), total, size) for ep in eps}
        state[self.name] = PrefixMatch(hashes, matched, size, self.index.version)

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        match: Any = state.get(self.name)
        if isinstance(match, PrefixMatch) and match.hashes:
            held = match.version == self.index.version and match.servers.get(ep.name) == len(match.hashes)
            self.index.add(ep.name, match.hashes, self.capacity(ep), held)

    def gauges(self) -> dict[str, float]:
        size = float(self.index.size)
        return {"llm_d_epp_prefix_indexer_size": size, "inference_extension_prefix_indexer_size": size}
