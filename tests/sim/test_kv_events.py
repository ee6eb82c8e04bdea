"""The simulator's KV-cache events, read as a vLLM consumer reads them.

The decoder here is written from vLLM 0.32.0's event definitions (``vllm/distributed/kv_events.py``:
msgspec tagged structs encoded as maps with a ``"type"`` key, fields left at their default omitted;
``KVEventBatch = [ts, events, dp_rank]``; messages ``[topic, seq, payload]``) and vLLM's block hashes
(``vllm/v1/core/kv_cache_utils.py``), not from the kit's encoder, and is itself checked on batches a real vLLM
0.32.0 published (``tests/fixtures/vllm-0.32-kv-events``). Every block hash in the stream is recomputed from
the event's own token ids, and the set of blocks the stream says a server holds is checked against the cache:
exactly (in-process engine), and through the prefix-cache hits a real ``kit sim`` process reports after
requests, evictions and a reset.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from pathlib import Path

import cbor2
import msgpack
import pytest
import zmq

from kit.sim.config import SimConfig
from kit.sim.engine import Engine
from kit.sim.kv_events import KVEventsConfig, block_hasher, encode_batch, external
from kit.sim.kv_publisher import binds
from kit.targets.processes import free_port
from tests.helpers import post

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vllm-0.32-kv-events"
# vLLM 0.32.0's event structs, in field order: the fields without a default (always sent), then those with one
# (sent only when not at their default, nil).
REQUIRED = {
    "BlockStored": ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name"],
    "BlockRemoved": ["block_hashes", "medium"],
    "AllBlocksCleared": [],
}
OPTIONAL = {
    "BlockStored": ["extra_keys", "group_idx", "kv_cache_spec_kind", "kv_cache_spec_sliding_window", "locality",
                    "ownership", "session_id"],
    "BlockRemoved": ["group_idx", "locality", "ownership"],
    "AllBlocksCleared": [],
}


def decode_event(raw: dict) -> dict:
    assert isinstance(raw, dict), f"vLLM 0.32 sends each event as a map, got {raw!r}"
    tag = raw["type"]
    names = [n for n in raw if n != "type"]
    assert next(iter(raw)) == "type", "the tag comes first, as msgspec writes it"
    known = REQUIRED[tag] + OPTIONAL[tag]
    assert [n for n in names if n in known] == [n for n in known if n in names], f"{tag} fields out of order"
    assert set(names) <= set(known), f"{tag} has fields vLLM does not define: {set(names) - set(known)}"
    assert set(REQUIRED[tag]) <= set(names), f"{tag} omits required fields {set(REQUIRED[tag]) - set(names)}"
    event = {n: raw.get(n) for n in known}
    event["tag"] = tag
    return event


def decode_batch(payload: bytes) -> tuple[float, list[dict], int | None]:
    batch = msgpack.unpackb(payload, raw=False)
    ts, events = batch[0], batch[1]
    rank = batch[2] if len(batch) > 2 else None
    return ts, [decode_event(e) for e in events], rank


def sha256_cbor(obj) -> bytes:
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def low64(digest: bytes) -> int:
    return int.from_bytes(digest[-8:], "big")


class Mirror:
    """What a consumer learns from the stream: the blocks a server holds, every hash re-derived."""

    def __init__(self, seed: str | None, block_size: int):
        self.none_hash = sha256_cbor(seed) if seed is not None else None
        self.block_size = block_size
        self.full: dict[int, bytes] = {}
        self.held: set[int] = set()
        self.tags: list[str] = []

    def apply(self, event: dict) -> None:
        self.tags.append(event["tag"])
        if event["tag"] == "BlockStored":
            assert event["block_size"] == self.block_size and event["medium"] == "GPU"
            assert event["lora_id"] is None and event["lora_name"] is None
            tokens, bs = event["token_ids"], self.block_size
            assert len(tokens) == bs * len(event["block_hashes"])
            if self.none_hash is not None:
                parent = self.none_hash if event["parent_block_hash"] is None else self.full[event["parent_block_hash"]]
                for i, h in enumerate(event["block_hashes"]):
                    parent = sha256_cbor((parent, tuple(tokens[i * bs : (i + 1) * bs]), None))
                    assert low64(parent) == h, "block hash is not vLLM's sha256_cbor of (parent, tokens, None)"
                    self.full[h] = parent
            self.held.update(event["block_hashes"])
        elif event["tag"] == "BlockRemoved":
            assert event["medium"] == "GPU"
            self.held.difference_update(event["block_hashes"])
        else:
            self.held.clear()

    def prompt_hashes(self, tokens: list[int]) -> list[int]:
        out, parent, bs = [], self.none_hash, self.block_size
        for i in range(0, len(tokens) - bs + 1, bs):
            parent = sha256_cbor((parent, tuple(tokens[i : i + bs]), None))
            out.append(low64(parent))
        return out

    def predicted_hit_tokens(self, tokens: list[int]) -> int:
        """What the stream says the server will find cached (vLLM always computes the last token)."""
        usable = (len(tokens) - 1) // self.block_size
        n = 0
        for h in self.prompt_hashes(tokens)[:usable]:
            if h not in self.held:
                break
            n += 1
        return n * self.block_size


def _fixture_batches() -> list[tuple[str, int, list[dict], list[dict]]]:
    """(topic, seq, raw events, decoded events) of each batch a real vLLM 0.32.0 published."""
    out = []
    for m in json.loads((FIXTURES / "messages.json").read_text()):
        payload = (FIXTURES / m["file"]).read_bytes()
        raw = msgpack.unpackb(payload, raw=False)[1]
        out.append((m["topic"], int(m["seq"], 16), raw, decode_batch(payload)[1]))
    return out


def test_the_decoder_reads_what_real_vllm_published_and_its_hashes_are_the_simulators():
    """The decoder accepts every batch of the captured stream; the simulator's ``sha256`` recomputes every
    block hash vLLM sent from the events' token ids (vLLM's default algorithm, ``PYTHONHASHSEED=42``)."""
    batches = _fixture_batches()
    assert [seq for _, seq, _, _ in batches] == list(range(len(batches)))
    tags = [e["tag"] for *_, events in batches for e in events]
    assert {"BlockStored", "BlockRemoved", "AllBlocksCleared"} <= set(tags)
    root, hash_block = block_hasher("sha256", "unused", "42")
    full: dict[int, bytes] = {}
    for _, _, _, events in batches:
        for e in events:
            if e["tag"] != "BlockStored":
                continue
            parent = root if e["parent_block_hash"] is None else full[e["parent_block_hash"]]
            tokens, bs = e["token_ids"], e["block_size"]
            for i, h in enumerate(e["block_hashes"]):
                parent = hash_block(parent, tokens[i * bs : (i + 1) * bs])
                assert external(parent) == h
                full[h] = parent


def test_the_simulator_sends_each_event_with_the_fields_real_vllm_sends():
    """Same keys, in the same order, with the same constant values, as the captured vLLM 0.32.0 events."""
    real = {}
    for _, _, raw, _ in _fixture_batches():
        for e in raw:
            real.setdefault(e["type"], e)
    ours = {}
    sent = msgpack.unpackb(encode_batch(1.0, [("stored", [1, 2], None, list(range(64))), ("removed", [1, 2]),
                                              ("cleared",)], 32), raw=False)
    assert sent[0] == 1.0 and sent[2] == 0  # [ts, events, data-parallel rank 0], as vLLM's batches
    for e in sent[1]:
        ours.setdefault(e["type"], e)
    assert [e["type"] for e in sent[1]] == ["BlockStored", "BlockRemoved", "BlockRemoved", "AllBlocksCleared"]
    for tag, theirs in real.items():
        assert list(ours[tag]) == list(theirs), tag
        for key in ("medium", "lora_id", "lora_name", "group_idx", "kv_cache_spec_kind", "block_size"):
            if key in theirs:
                assert ours[tag][key] == theirs[key], (tag, key)
    assert ours["BlockStored"]["extra_keys"] == [None, None]  # one per block, as vLLM's


def test_the_endpoint_decides_bind_or_connect_as_vllm_does():
    assert binds("tcp://*:5557") and binds("tcp://[::]:5557") and binds("ipc:///tmp/kv") and binds("inproc://kv")
    assert not binds("tcp://gaie-epp.llm-d.svc.cluster.local:5557") and not binds("tcp://127.0.0.1:5557")


def test_the_config_takes_vllms_keys_and_defaults():
    on = KVEventsConfig.model_validate(json.loads('{"enable_kv_cache_events": true}'))
    assert (on.publisher, on.endpoint, on.replay_endpoint, on.buffer_steps, on.hwm, on.max_queue_size, on.topic) == (
        "zmq", "tcp://*:5557", None, 10_000, 100_000, 100_000, "")
    assert KVEventsConfig().publisher == "null" and not KVEventsConfig().active
    cfg = SimConfig(kv_events_config='{"enable_kv_cache_events":true,"topic":"kv@10.0.0.1:8000@m"}')
    assert cfg.kv_events_config.active and cfg.kv_events_config.topic == "kv@10.0.0.1:8000@m"
    with pytest.raises(ValueError, match="not valid JSON"):
        SimConfig(kv_events_config="{enable")
    with pytest.raises(ValueError, match="bufer_steps"):
        SimConfig(kv_events_config='{"enable_kv_cache_events":true,"bufer_steps":3}')


def _drive(engine: Engine, steps: int = 10_000) -> None:
    """Step the engine until idle, handing each step's events on, as ``Engine.run`` does."""
    for _ in range(steps):
        if not (engine.running or engine.waiting):
            return
        engine.complete(engine.schedule())
        engine.flush_events()
    raise AssertionError("engine did not go idle")


@pytest.mark.parametrize("algo,seed", [("sha256_cbor", "42"), ("builtin", None)])
def test_the_stream_matches_the_cache_exactly_through_evictions_and_a_reset(monkeypatch, algo, seed):
    if seed is not None:
        monkeypatch.setenv("PYTHONHASHSEED", seed)
    cfg = SimConfig(num_gpu_blocks=12, block_size=4, max_model_len=48, prefix_caching_hash_algo=algo)
    engine = Engine(cfg)
    payloads: list[bytes] = []
    engine.enable_events(lambda events: payloads.append(encode_batch(1.0, events, cfg.block_size)))
    mirror = Mirror(seed, cfg.block_size)

    def check() -> None:
        for p in payloads:
            for ev in decode_batch(p)[1]:
                mirror.apply(ev)
        payloads.clear()
        assert mirror.held == {external(h) for h in engine.pool.cached}

    shared = list(range(100, 116))
    engine.submit([*shared, 1, 2, 3, 4, 5], 6, None)  # 5 full prompt blocks, 1 more from output
    _drive(engine)
    check()
    engine.submit([*shared, 7, 8, 9, 10, 11], 3, None)  # hits the shared 4 blocks
    _drive(engine)
    check()
    for k in range(3):  # new prefixes push the earlier blocks out of the 12-block cache
        engine.submit([200 + 30 * k + i for i in range(30)], 2, None)
        _drive(engine)
        check()
    assert engine.pool.evictions > 0 and "BlockRemoved" in mirror.tags
    running = engine.submit(list(range(300, 316)), 20, None)
    engine.complete(engine.schedule())
    engine.flush_events()
    check()
    assert not engine.pool.reset()  # a request holds blocks: vLLM refuses the reset, and nothing changes
    engine.flush_events()
    check()
    assert mirror.held and "AllBlocksCleared" not in mirror.tags
    engine.abort(running)
    assert engine.pool.reset()  # nothing runs: the whole cache is cleared, as vLLM's reset reports it
    engine.flush_events()
    check()
    assert mirror.tags[-1] == "AllBlocksCleared" and not mirror.held


class Subscriber(threading.Thread):
    """A consumer's SUB socket, bound as the EPP's central subscriber binds, receiving all the time (a SUB
    that nobody polls never sends its subscription to a newly connected publisher)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.messages: queue.Queue[list[bytes]] = queue.Queue()
        self.ready, self.stop = threading.Event(), threading.Event()

    def run(self) -> None:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.bind(f"tcp://127.0.0.1:{self.port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
        self.ready.set()
        while not self.stop.is_set():
            if sub.poll(20):
                self.messages.put(sub.recv_multipart())
        sub.close(linger=0)

    def drain(self, quiet: float = 0.4):
        while True:
            try:
                yield self.messages.get(timeout=quiet)
            except queue.Empty:
                return


@pytest.mark.slow
def test_a_real_simulator_publishes_what_its_cache_really_holds(sim_factory, monkeypatch):
    """Real ``kit sim`` process, real ZMQ: the consumer binds (as the EPP's central subscriber does) and
    the simulator connects; the stream's view of the cache predicts every hit the server reports."""
    monkeypatch.setenv("PYTHONHASHSEED", "42")
    events_port, replay_port = free_port(), free_port()
    consumer = Subscriber(events_port)
    consumer.start()
    assert consumer.ready.wait(5)
    model = "Qwen/Qwen3-0.6B"
    try:
        sim = sim_factory(
            "--num-gpu-blocks", "24", "--block-size", "4", "--max-model-len", "96",
            "--prefix-caching-hash-algo", "sha256_cbor",
            "--kv-events-config", json.dumps({
                "enable_kv_cache_events": True, "publisher": "zmq",
                "endpoint": f"tcp://127.0.0.1:{events_port}",
                "replay_endpoint": f"tcp://127.0.0.1:{replay_port}", "topic": f"kv@SIM@{model}"}))
        mirror = Mirror("42", 4)
        seqs: list[int] = []

        def drain() -> None:
            for topic, seq, payload in consumer.drain():
                assert topic == f"kv@SIM@{model}".encode()
                seqs.append(int.from_bytes(seq, "big"))
                ts, events, rank = decode_batch(payload)
                assert rank == 0 and ts > 1.6e9
                for ev in events:
                    mirror.apply(ev)

        def send(text: str) -> None:
            status, tok, _ = post(sim.url, "/tokenize", {"prompt": text})
            assert status == 200
            expected = mirror.predicted_hit_tokens(tok["tokens"])
            status, body, _ = post(sim.url, "/v1/completions",
                                   {"prompt": text, "max_tokens": 5, "ignore_eos": True})
            assert status == 200
            assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == expected, text
            drain()

        system = "You are a careful assistant. Answer briefly and cite the manual. "
        send(system + "How do I reset the router?")
        assert mirror.held, "the first request stored blocks"
        send(system + "Where is the power switch?")  # hits the shared system prompt
        for topic in ("volcanoes erupt with lava", "tides follow the moon", "bees make honey in hives",
                      "glaciers carve deep valleys"):
            send(f"Tell me a long story about how {topic} and why it matters to everyone today.")
        assert "BlockRemoved" in mirror.tags, "the 24-block cache evicted blocks"
        send(system + "How do I reset the router?")  # what is left of it after the evictions
        status, _, _ = post(sim.url, "/reset_prefix_cache", {})
        assert status == 200
        drain()
        assert mirror.tags[-1] == "AllBlocksCleared" and not mirror.held
        send(system + "Where is the power switch?")  # cold again
        assert seqs == list(range(len(seqs))), "sequence numbers count up from 0 without gaps"

        # The replay socket resends every buffered batch from a sequence number, then -1.
        req = zmq.Context.instance().socket(zmq.DEALER)
        req.connect(f"tcp://127.0.0.1:{replay_port}")
        req.send_multipart([b"", (2).to_bytes(8, "big")])
        replayed = []
        while req.poll(3000):
            _, seq, payload = req.recv_multipart()
            if int.from_bytes(seq, "big", signed=True) == -1:
                break
            replayed.append(int.from_bytes(seq, "big"))
            decode_batch(payload)
        req.close(linger=0)
        assert replayed == seqs[2:]
    finally:
        consumer.stop.set()
        consumer.join(5)
