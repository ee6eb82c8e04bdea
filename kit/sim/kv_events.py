"""vLLM's KV-cache events: ``--kv-events-config``, vLLM's block hashes, and the wire encoding.

The ZMQ publisher is ``kit.sim.kv_publisher`` (kept apart so the settings load without pyzmq).

Follows vLLM 0.32.0 (``vllm/config/kv_events.py``, ``vllm/distributed/kv_events.py``,
``vllm/v1/core/kv_cache_utils.py``, ``vllm/utils/hashing.py``, ``vllm/v1/core/block_pool.py``), checked against
batches a real vLLM 0.32.0 published (``tests/fixtures/vllm-0.32-kv-events``):

* **Settings**: the keys of vLLM's ``KVEventsConfig`` with its defaults; ``publisher`` is ``zmq`` when
  events are enabled and ``null`` otherwise.
* **Block hashes** (``--prefix-caching-hash-algo``): block *i* hashes ``(parent, tuple(tokens), None)``
  with the chosen function; the first block's parent is ``NONE_HASH``, the function applied to the
  ``PYTHONHASHSEED`` string (32 random bytes when it is unset, as vLLM). ``sha256_cbor`` is canonical
  CBOR then SHA-256, the algorithm upstream's precise guide configures. ``builtin`` (kit-only, the
  default) is Python's tuple hash rooted at the model name: fast, and the same within one process.
* **Wire**: one ZMQ multipart message per engine step with events: ``[topic, seq (8 bytes,
  big-endian), payload]``; the payload is msgpack of ``[ts, [event, ...], data_parallel_rank]`` and each
  event a map whose ``"type"`` names it (msgspec's tagged structs, fields left at their default omitted):
  ``{"type": "BlockStored", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
  "medium", "lora_name", "extra_keys" (one nil per block), "group_idx": 0, "kv_cache_spec_kind":
  "full_attention"}``, one ``{"type": "BlockRemoved", "block_hashes": [hash], "medium", "group_idx": 0}`` per
  evicted block, and ``{"type": "AllBlocksCleared"}``. Releases up to vLLM 0.17 sent each event as an array
  starting with its tag instead. Hashes travel as the last 8 bytes read as an unsigned integer
  (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``, default 1) or as the raw bytes when that variable is 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Literal

import cbor2
import msgpack
import xxhash
from pydantic import Field, model_validator

from kit.config import StrictModel

MEDIUM_GPU = "GPU"
FULL_ATTENTION = "full_attention"  # the KV-cache spec kind of every layer of a Qwen3-like model
_MASK64 = (1 << 64) - 1


class KVEventsConfig(StrictModel):
    """vLLM's ``--kv-events-config`` (a JSON object with these keys)."""

    enable_kv_cache_events: bool = Field(False, description="publish KV-cache events")
    publisher: Literal["null", "zmq"] | None = Field(None, description="zmq when events are enabled, else null")
    endpoint: str = Field("tcp://*:5557", description="ZMQ PUB endpoint: bind with * or ::, else connect")
    replay_endpoint: str | None = Field(None, description="ZMQ ROUTER endpoint answering replay requests")
    buffer_steps: int = Field(10_000, ge=1, description="batches kept for replay")
    hwm: int = Field(100_000, ge=0, description="ZMQ high-water mark of the PUB socket")
    max_queue_size: int = Field(100_000, ge=1, description="batches waiting for the publisher thread")
    topic: str = Field("", description="topic of every message, e.g. kv@<pod-ip:port>@<model>")

    @model_validator(mode="after")
    def _publisher(self) -> KVEventsConfig:
        if self.publisher is None:
            self.publisher = "zmq" if self.enable_kv_cache_events else "null"
        return self

    @property
    def active(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"


def parse_kv_events_config(value: Any) -> Any:
    """vLLM takes the flag as JSON text; a mapping or a config passes through."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as err:
            raise ValueError(f"--kv-events-config: not valid JSON ({err})") from None
    return value


# ------------------------------------------------------------------------------------------ block hashes
class HashAlgo(StrEnum):
    BUILTIN = "builtin"
    SHA256 = "sha256"
    SHA256_CBOR = "sha256_cbor"
    XXHASH = "xxhash"
    XXHASH_CBOR = "xxhash_cbor"


_DIGESTS: dict[str, Callable[[Any], bytes]] = {
    HashAlgo.SHA256: lambda x: hashlib.sha256(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)).digest(),
    HashAlgo.SHA256_CBOR: lambda x: hashlib.sha256(cbor2.dumps(x, canonical=True)).digest(),
    HashAlgo.XXHASH: lambda x: xxhash.xxh3_128_digest(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)),
    HashAlgo.XXHASH_CBOR: lambda x: xxhash.xxh3_128_digest(cbor2.dumps(x, canonical=True)),
}

BlockHash = int | bytes
BlockHasher = Callable[[BlockHash, Sequence[int]], BlockHash]


def block_hasher(algo: str, model: str, seed: str | None = None) -> tuple[BlockHash, BlockHasher | None]:
    """``(root, hash_block)``: the first block's parent and ``hash_block(parent, tokens)``.

    ``builtin`` returns no function: ``kit.sim.kvcache.chain_hashes`` then hashes inline (Python's tuple
    hash, the fast path) from a root derived from the model name. For vLLM's algorithms the root is
    vLLM's ``NONE_HASH``: the function applied to ``seed`` (vLLM reads ``PYTHONHASHSEED``), or 32 random
    bytes without one.
    """
    if algo == HashAlgo.BUILTIN:
        return zlib.crc32(model.encode()), None
    digest = _DIGESTS[algo]
    root = os.urandom(32) if seed is None else digest(seed)
    return root, lambda parent, tokens: digest((parent, tuple(tokens), None))


def external(h: BlockHash, as_int: bool = True) -> int | bytes:
    """A block hash as vLLM puts it on the wire: the low 64 bits as an unsigned int, or the raw bytes."""
    if isinstance(h, bytes):
        return int.from_bytes(h, "big") & _MASK64 if as_int else h
    return h & _MASK64


# ------------------------------------------------------------------------------------------------ wire
def encode_batch(ts: float, events: Sequence[tuple], block_size: int, as_int: bool = True) -> bytes:
    """msgpack of vLLM's ``KVEventBatch`` from the block pool's events (see ``kit.sim.kvcache``)."""
    out: list[dict] = []
    for ev in events:
        if ev[0] == "stored":
            _, hashes, parent, tokens = ev
            out.append({"type": "BlockStored", "block_hashes": [external(h, as_int) for h in hashes],
                        "parent_block_hash": None if parent is None else external(parent, as_int),
                        "token_ids": list(tokens), "block_size": block_size, "lora_id": None, "medium": MEDIUM_GPU,
                        "lora_name": None, "extra_keys": [None] * len(hashes), "group_idx": 0,
                        "kv_cache_spec_kind": FULL_ATTENTION})
        elif ev[0] == "removed":  # vLLM reports each evicted block in its own event
            out += [{"type": "BlockRemoved", "block_hashes": [external(h, as_int)], "medium": MEDIUM_GPU,
                     "group_idx": 0} for h in ev[1]]
        else:
            out.append({"type": "AllBlocksCleared"})
    return msgpack.packb([ts, out, 0], use_bin_type=True)
