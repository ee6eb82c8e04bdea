"""vLLM's ``ZmqEventPublisher`` for the simulator: KV-cache event batches on a ZMQ PUB socket.

As vLLM v0.17.1 (``vllm/distributed/kv_events.py``): the PUB socket *binds* when the endpoint has ``*``
or ``::`` or is ``ipc://`` or ``inproc://`` and *connects* otherwise (so servers can dial a central
subscriber); each engine step with events is one message ``[topic, seq (8 bytes, big-endian),
payload]`` (``kit.sim.kv_events.encode_batch``), encoded and sent by a thread fed through a bounded
queue; an optional ROUTER ``replay_endpoint`` resends the buffered batches from a requested sequence
number, then ``-1``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import zmq

from kit.sim.kv_events import KVEventsConfig, encode_batch

END_SEQ = (-1).to_bytes(8, "big", signed=True)


def binds(endpoint: str) -> bool:
    """vLLM's rule: bind a wildcard, IPv6-any or local-transport endpoint; connect to anything else."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class ZmqPublisher:
    """vLLM's ``ZmqEventPublisher``: a PUB socket (and optional ROUTER for replay) fed by a thread."""

    def __init__(self, cfg: KVEventsConfig, block_size: int, context: zmq.Context | None = None):
        self.cfg = cfg
        self.block_size = block_size
        self.as_int = os.getenv("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1") != "0"
        self.topic = cfg.topic.encode()
        self.queue: queue.Queue[tuple[float, list] | None] = queue.Queue(maxsize=cfg.max_queue_size)
        self.buffer: deque[tuple[int, bytes]] = deque(maxlen=cfg.buffer_steps)
        self.published = 0
        ctx = context or zmq.Context.instance()
        self.pub = ctx.socket(zmq.PUB)
        self.pub.set_hwm(cfg.hwm)
        self.replay = None
        try:
            (self.pub.bind if binds(cfg.endpoint) else self.pub.connect)(cfg.endpoint)
            if cfg.replay_endpoint:
                self.replay = ctx.socket(zmq.ROUTER)
                self.replay.bind(cfg.replay_endpoint)
        except zmq.ZMQError as err:
            self._close()
            raise ValueError(f"kv_events_config: cannot open {cfg.endpoint!r} "
                             f"({'bind' if binds(cfg.endpoint) else 'connect'}): {err}") from None
        self.thread = threading.Thread(target=self._run, name="kv-events-publisher", daemon=True)
        self.thread.start()

    def publish(self, events: list) -> None:
        """Queue one engine step's events (blocks while the queue is full, as vLLM's publisher does)."""
        self.queue.put((time.time(), events))

    def _run(self) -> None:
        seq = 0
        while True:
            if self.replay is not None and self.replay.poll(0):
                self._serve_replay()
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            payload = encode_batch(item[0], item[1], self.block_size, self.as_int)
            self.pub.send_multipart((self.topic, seq.to_bytes(8, "big"), payload))
            self.buffer.append((seq, payload))
            seq += 1
            self.published = seq

    def _serve_replay(self) -> None:
        frames = self.replay.recv_multipart()
        if len(frames) != 3:
            return
        client, _, start = frames
        first = int.from_bytes(start, "big")
        for seq, payload in list(self.buffer):
            if seq >= first:
                self.replay.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
        self.replay.send_multipart((client, b"", END_SEQ, b""))

    def close(self, timeout: float = 1.0) -> None:
        """Send what is queued (for up to ``timeout``), then close the sockets."""
        self.queue.put(None)
        self.thread.join(timeout)
        self._close()

    def _close(self) -> None:
        self.pub.close(linger=0)
        if self.replay is not None:
            self.replay.close(linger=0)


def lifecycle(engine: Any, cfg: Any) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp cleanup context that publishes ``engine``'s KV events while the server runs (a no-op
    unless ``cfg.kv_events_config`` enables them)."""

    async def run(_app: Any) -> AsyncIterator[None]:
        events = cfg.kv_events_config
        if events is None or not events.active:
            yield
            return
        publisher = ZmqPublisher(events, cfg.block_size)
        engine.enable_events(publisher.publish)
        try:
            yield
        finally:
            engine.enable_events(None)
            with contextlib.suppress(Exception):
                publisher.close()

    return run
