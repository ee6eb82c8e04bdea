"""KV-cache events: what a server publishes when it stores, evicts and clears blocks, read by a bound SUB socket
as the picker reads them, on the simulator and on real vLLM (both hash blocks with vLLM's ``sha256`` seeded by
``PYTHONHASHSEED=42``, so every hash is recomputed here from the event's token ids)."""

from __future__ import annotations

import msgpack
import pytest

from kit.sim.kv_events import block_hasher, external
from tests.contract.conftest import BLOCK_SIZE, HASH_SEED, MODEL, Server
from tests.helpers import post
from tests.sim.test_kv_events import decode_event

pytestmark = pytest.mark.slow  # each binds a port and waits for the publisher to connect

WORDS = "system policy customer order return refund shipping warranty account billing support product".split()


def text(seed: int, words: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * (seed + 3)) % len(WORDS)] for i in range(words))


def events(server: Server, sub, quiet: float = 1.5) -> list[dict]:
    """The decoded events of the batches received for the server's topic, checking each batch's frame."""
    out = []
    for _, payload in sub.take(server.topic, quiet=quiet):
        batch = msgpack.unpackb(payload, raw=False)
        assert len(batch) == 3 and batch[2] == 0 and batch[0] > 1.6e9  # [ts, events, data-parallel rank 0]
        out += [decode_event(e) for e in batch[1]]
    return out


def test_stored_blocks_carry_the_prompts_tokens_and_vllms_hashes(server: Server):
    prompt = f"{server.kind} " + text(1, 150)
    tokens = post(server.url, "/tokenize", {"model": MODEL, "prompt": prompt})[1]["tokens"]
    with server.events() as sub:
        status, body, _ = post(server.url, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 2})
        assert status == 200 and body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        got = events(server, sub)
        stored = [e for e in got if e["tag"] == "BlockStored"]
        assert stored, got
        first = stored[0]
        full = len(tokens) // BLOCK_SIZE
        assert first["parent_block_hash"] is None and len(first["block_hashes"]) == full
        assert first["token_ids"] == tokens[: full * BLOCK_SIZE] and first["block_size"] == BLOCK_SIZE
        assert (first["medium"], first["group_idx"], first["kv_cache_spec_kind"]) == ("GPU", 0, "full_attention")
        assert first["extra_keys"] == [None] * full and first["lora_id"] is None and first["lora_name"] is None
        root, hash_block = block_hasher("sha256", MODEL, HASH_SEED)
        parent = root
        for i, h in enumerate(first["block_hashes"]):
            parent = hash_block(parent, tokens[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
            assert external(parent) == h

        # The same prompt again: its blocks hit, and nothing new is stored for them.
        body = post(server.url, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 1})[1]
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == (len(tokens) - 1) // BLOCK_SIZE * BLOCK_SIZE
        again = [e for e in events(server, sub, quiet=1.0) if e["tag"] == "BlockStored"]
        assert not any(set(e["block_hashes"]) & set(first["block_hashes"]) for e in again), again


def test_evicted_blocks_are_removed_one_by_one_and_a_reset_clears_all(server: Server):
    """256 blocks of 32 tokens: three prompts of ~3,000 tokens push the oldest blocks out."""
    with server.events() as sub:
        for k in range(3):
            status, _, _ = post(server.url, "/v1/completions",
                                {"model": MODEL, "prompt": f"{server.kind} {k} " + text(10 + k, 1500), "max_tokens": 1})
            assert status == 200
        got = events(server, sub)
        removed = [e for e in got if e["tag"] == "BlockRemoved"]
        assert removed, [e["tag"] for e in got]
        for e in removed:
            assert len(e["block_hashes"]) == 1 and (e["medium"], e["group_idx"]) == ("GPU", 0)
        assert post(server.url, "/reset_prefix_cache", None, raw=b"")[:2] == (200, {"success": True})
        # vLLM reports the reset with its next engine step; one more request makes one.
        post(server.url, "/v1/completions", {"model": MODEL, "prompt": text(99, 80), "max_tokens": 1})
        tags = [e["tag"] for e in events(server, sub)]
        assert "AllBlocksCleared" in tags and tags.index("AllBlocksCleared") < tags.index("BlockStored"), tags
