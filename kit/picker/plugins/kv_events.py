"""vLLM's KV-cache event batches, decoded in both of vLLM's encodings (as llm-d-router v0.10.0's vLLM adapter does).

A batch is a msgpack array ``[ts, events, data_parallel_rank?]`` (msgspec ``array_like``). Each event is either

* the **array** form of vLLM releases before the named-field encoding: ``[tag, field, ...]`` in declaration
  order with trailing defaults omitted (``BlockStored``: block_hashes, parent_block_hash, token_ids,
  block_size, lora_id, medium, lora_name, extra_keys, group_idx, kv_cache_spec_kind,
  kv_cache_spec_sliding_window; ``BlockRemoved``: block_hashes, medium, group_idx; ``AllBlocksCleared``), or
* the **map** form of current vLLM (vllm-project/vllm #42892; what vLLM 0.32 publishes): ``{"type": tag,
  "block_hashes": ..., ...}``, absent fields meaning none; fields a consumer does not know (vLLM 0.32 adds
  ``locality``, ``ownership``, ``session_id``) are ignored.

Block hashes are integers (older vLLM, taken modulo 2⁶⁴) or bytes (current vLLM's sha256: the last 8 bytes,
big-endian). A malformed event (a missing required field, a field of the wrong type, an unknown tag, a
negative group) makes the whole batch unreadable, as upstream drops the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

MASK64 = (1 << 64) - 1
STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name",
                 "extra_keys", "group_idx", "kv_cache_spec_kind", "kv_cache_spec_sliding_window")
REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


@dataclass(slots=True)
class Stored:
    hashes: list[int]  # vLLM's block hashes (engine keys), as uint64
    parent: int | None  # the parent block's hash, None for a first block
    tokens: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None  # "GPU", "CPU", ... (None: unspecified)
    lora_name: str | None = None
    extra_keys: list[list[Any] | None] | None = None  # per block: LoRA name, (mm id, offset) pairs, cache salt
    group_idx: int | None = None
    kind: str | None = None  # kv_cache_spec_kind, e.g. "full_attention"
    sliding_window: int | None = None


@dataclass(slots=True)
class Removed:
    hashes: list[int]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(slots=True)
class Cleared:
    pass


Event = Stored | Removed | Cleared


def as_uint64(h: Any) -> int:
    """A block hash as a uint64: an integer modulo 2⁶⁴, or the last 8 bytes of a bytes hash, big-endian."""
    if isinstance(h, int) and not isinstance(h, bool):
        return h & MASK64
    if isinstance(h, bytes | bytearray) and h:
        return int.from_bytes(bytes(h[-8:]).rjust(8, b"\0"), "big")
    raise ValueError(f"unsupported block hash {h!r}")


def _int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{what}: unsupported numeric type {type(value).__name__}")


def _str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{what} is not a string: {type(value).__name__}")


def _hashes(value: Any, tag: str) -> list[int]:
    if not isinstance(value, list):
        raise ValueError(f"{tag}: block_hashes is not an array: {type(value).__name__}")
    return [as_uint64(h) for h in value]


def _group(value: Any, tag: str) -> int | None:
    if value is None:
        return None
    g = _int(value, f"{tag}: group_idx")
    if g < 0:
        raise ValueError(f"{tag}: group_idx: negative value: {g}")
    return g


def _fields(ev: Any) -> list[Any]:
    """An event as its positional fields, whichever encoding it came in."""
    if isinstance(ev, list):
        return ev
    if isinstance(ev, dict):
        if "type" not in ev:
            raise ValueError('map-encoded event is missing the "type" tag')
        tag = ev["type"]
        if not isinstance(tag, str):
            raise ValueError(f'map-encoded event tag ("type") is not a string: {type(tag).__name__}')
        order = STORED_FIELDS if tag == "BlockStored" else REMOVED_FIELDS if tag == "BlockRemoved" else ()
        return [tag, *(ev.get(name) for name in order)]
    raise ValueError(f"event is neither an array nor a map: {type(ev).__name__}")


def _at(fields: list[Any], i: int) -> Any:
    return fields[i] if i < len(fields) else None


def decode_event(ev: Any) -> Event:
    fields = _fields(ev)
    if not fields:
        raise ValueError("malformed tagged union: no tag")
    tag = fields[0]
    if not isinstance(tag, str):
        raise ValueError(f"event tag is not a string: {type(tag).__name__}")
    if tag == "BlockStored":
        if len(fields) < 5:
            raise ValueError(f"BlockStored: need at least 5 fields, got {len(fields)}")
        tokens = fields[3]
        if not isinstance(tokens, list):
            raise ValueError(f"BlockStored: token_ids is not an array: {type(tokens).__name__}")
        extra = _at(fields, 8)
        if extra is not None and (not isinstance(extra, list)
                                  or any(k is not None and not isinstance(k, list) for k in extra)):
            raise ValueError("BlockStored: extra_keys must be an array of arrays or nil")
        lora_id, window = _at(fields, 5), _at(fields, 11)
        return Stored(
            _hashes(fields[1], tag), None if fields[2] is None else as_uint64(fields[2]),
            [_int(t, "BlockStored: token_ids") & 0xFFFFFFFF for t in tokens],
            _int(fields[4], "BlockStored: block_size"),
            None if lora_id is None else _int(lora_id, "BlockStored: lora_id"),
            _str(_at(fields, 6), "BlockStored: medium"), _str(_at(fields, 7), "BlockStored: lora_name"), extra,
            _group(_at(fields, 9), tag), _str(_at(fields, 10), "BlockStored: kv_cache_spec_kind"),
            None if window is None else _int(window, "BlockStored: kv_cache_spec_sliding_window"))
    if tag == "BlockRemoved":
        if len(fields) < 2:
            raise ValueError(f"BlockRemoved: need at least 2 fields, got {len(fields)}")
        return Removed(_hashes(fields[1], tag), _str(_at(fields, 2), "BlockRemoved: medium"),
                       _group(_at(fields, 3), tag))
    if tag == "AllBlocksCleared":
        return Cleared()
    raise ValueError(f"unknown vLLM event tag: {tag}")


def decode_batch(payload: bytes) -> tuple[float, list[Event]]:
    """``(ts, events)`` of one ``KVEventBatch`` message payload; ValueError if any of it cannot be read."""
    try:
        batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise ValueError(f"failed to decode vLLM event batch: {err}") from None
    if not isinstance(batch, list) or len(batch) < 2 or not isinstance(batch[1], list):
        raise ValueError("failed to decode vLLM event batch: expected [ts, events, data_parallel_rank?]")
    ts = batch[0]
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise ValueError(f"failed to decode vLLM event batch: ts is {type(ts).__name__}")
    return float(ts), [decode_event(ev) for ev in batch[1]]
