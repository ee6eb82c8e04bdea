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
def outside_traffic(target: Any, rate: float, prompt_tokens: int = 1000, seed: int = 7) -> Iterator[dict[str, int]]:
    """While the block runs, send ``rate`` requests per second, in turn to each model server ``target`` runs
    (its status rows with role ``simulator``), each a fresh prompt of about ``prompt_tokens`` tokens
    (digits: one token each) asking for one token. Yields counters ``{"sent", "failed"}``; a server that is
    restarting just counts as failed. ``rate`` 0 sends nothing."""
    counts = {"sent": 0, "failed": 0}
    stop = threading.Event()

    def send() -> None:
        rng = random.Random(seed)
        i = 0
        while not stop.wait(1.0 / rate):
            urls = [r["url"] for r in target.status().rows if r.get("role") == "simulator"]
            if not urls:
                continue
            body = {"prompt": " ".join(f"{rng.random():.15f}" for _ in range(prompt_tokens // 18 + 1)),
                    "max_tokens": 1}
            req = urllib.request.Request(urls[i % len(urls)] + "/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            i += 1
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    r.read()
                counts["sent"] += 1
            except OSError:
                counts["failed"] += 1

    thread = threading.Thread(target=send, name="outside-traffic", daemon=True)
    if rate > 0:
        thread.start()
    try:
        yield counts
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(35)
