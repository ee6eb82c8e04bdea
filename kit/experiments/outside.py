"""Traffic that does not go through the gateway: a client sending long, unrelated prompts straight to the
model servers (a batch job, or another gateway's share). The picker does not route it, but it fills the
servers' KV caches and evicts the prefixes the picker's requests left there."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def outside_traffic(target: Any, rate: float, prompt_tokens: int = 1000, seed: int = 7,
                    timeout: float = 10.0) -> Iterator[dict[str, int]]:
    """While the block runs, send ``rate`` requests per second (each in its own thread, so a slow answer
    does not hold the pace), in turn to each model server ``target`` runs (its status rows with role
    ``simulator``, read again every 2 s), each a fresh prompt of about ``prompt_tokens`` tokens (digits:
    one token each) asking for one token. Yields counters ``{"sent", "failed"}``; a server that is
    restarting counts as failed. ``rate`` 0 sends nothing."""
    counts = {"sent": 0, "failed": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def one(url: str, body: bytes) -> None:
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read()
            key = "sent"
        except OSError:
            key = "failed"
        with lock:
            counts[key] += 1

    def pace() -> None:
        rng = random.Random(seed)
        urls: list[str] = []
        i = 0
        while not stop.wait(1.0 / rate):
            if i % max(1, int(2 * rate)) == 0:
                urls = [r["url"] for r in target.status().rows if r.get("role") == "simulator"] or urls
            if urls:
                body = json.dumps({"prompt": " ".join(f"{rng.random():.15f}" for _ in range(prompt_tokens // 18 + 1)),
                                   "max_tokens": 1}).encode()
                threading.Thread(target=one, args=(urls[i % len(urls)], body), daemon=True).start()
            i += 1

    thread = threading.Thread(target=pace, name="outside-traffic", daemon=True)
    if rate > 0:
        thread.start()
    try:
        yield counts
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(5)
