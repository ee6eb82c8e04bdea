"""The ZMQ side of the precise prefix index: SUB sockets that feed vLLM's KV-cache events to the index.

As llm-d-kv-cache v0.7.0 (``kvevents.SubscriberManager`` and ``zmqSubscriber``): one *local* socket
binds ``zmqEndpoint`` when it is set (the central mode the precise guide deploys: every vLLM server
connects to the EPP's port), and with pod discovery one socket per endpoint connects to
``tcp://<endpoint host>:<socketPort>``. Every socket subscribes to ``topicFilter``; each message is
``[topic, seq, payload]`` and its topic names the endpoint. A socket that fails is opened again after
5 seconds.

All sockets live in one background thread (pyzmq sockets are not thread-safe), started with the scorer
and stopped by ``close()`` or when the scorer is garbage-collected; ``ensure`` and ``remove`` queue
requests for that thread. Upstream shards messages over ``concurrency`` workers; the kit applies them
in this one thread, in arrival order per endpoint as upstream's sharding guarantees.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import zmq

log = logging.getLogger(__name__)
RETRY_SECONDS = 5.0

Handler = Callable[[str, int, bytes], None]  # (topic, seq, payload)


class Subscriber:
    """Background SUB sockets (see the module docstring); ``handle`` runs in the subscriber thread."""

    def __init__(self, handle: Handler, topic_filter: str, local_endpoint: str = ""):
        self.handle = handle
        self.topic_filter = topic_filter.encode()
        self.requests: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self.stopping = threading.Event()
        self.errors: dict[str, str] = {}  # endpoint → the last socket error
        self.received = 0
        if local_endpoint:
            self.requests.put(("add", "local-subscriber", local_endpoint))
        self.thread = threading.Thread(target=self._run, name="kv-events-subscriber", daemon=True)
        self.thread.start()

    def ensure(self, name: str, endpoint: str) -> None:
        """Connect to ``endpoint`` for ``name`` (a no-op when it already does)."""
        self.requests.put(("add", name, endpoint))

    def remove(self, name: str) -> None:
        self.requests.put(("remove", name, ""))

    def close(self) -> None:
        self.stopping.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(5)

    # ------------------------------------------------------------------------------- the thread
    def _open(self, ctx: zmq.Context, name: str, endpoint: str) -> zmq.Socket | None:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            (sock.bind if name == "local-subscriber" else sock.connect)(endpoint)
            sock.setsockopt(zmq.SUBSCRIBE, self.topic_filter)
        except zmq.ZMQError as err:
            sock.close(linger=0)
            self.errors[endpoint] = str(err)
            return None
        self.errors.pop(endpoint, None)
        return sock

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        sockets: dict[str, tuple[str, zmq.Socket | None]] = {}
        poller = zmq.Poller()
        waited = 0.0
        while not self.stopping.is_set():
            while not self.requests.empty():
                op, name, endpoint = self.requests.get()
                old = sockets.get(name)
                if op == "add" and old is not None and old[0] == endpoint:
                    continue
                if old is not None:
                    if old[1] is not None:
                        poller.unregister(old[1])
                        old[1].close(linger=0)
                    del sockets[name]
                if op == "add":
                    sock = self._open(ctx, name, endpoint)
                    sockets[name] = (endpoint, sock)
                    if sock is not None:
                        poller.register(sock, zmq.POLLIN)
                    else:
                        log.warning("KV-events subscriber %s cannot open %s: %s (retrying every %.0f s)",
                                    name, endpoint, self.errors.get(endpoint), RETRY_SECONDS)
            ready = poller.poll(100) if poller.sockets else []
            if not poller.sockets:
                self.stopping.wait(0.1)
            for sock, _ in ready:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                if len(frames) != 3:
                    continue
                topic, seq, payload = frames
                self.received += 1
                try:
                    self.handle(topic.decode(errors="replace"), int.from_bytes(seq, "big"), payload)
                except Exception as err:  # a bad message must not stop the subscriber
                    log.warning("KV-events message from %s dropped: %s", topic, err)
            waited += 0.1
            if waited >= RETRY_SECONDS:  # sockets that failed to open: try again
                waited = 0.0
                for name, (endpoint, sock) in list(sockets.items()):
                    if sock is None:
                        self.requests.put(("add", name, endpoint))
                        del sockets[name]
        for _, sock in sockets.values():
            if sock is not None:
                sock.close(linger=0)
