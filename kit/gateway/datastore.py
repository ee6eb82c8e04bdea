"""Keep each endpoint's metrics fresh: one poller per endpoint scrapes ``/metrics`` on an interval.

As upstream: every ``interval`` (default 50 ms) with a 1 s timeout; a failed scrape keeps the old
values and the endpoint's metrics age (the saturation detector treats them as stale after 200 ms).
The kit adds health: an endpoint whose server refuses connections or answers with an error is taken
out of rotation at once, and put back on its next good scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp

from kit.picker import Endpoint
from kit.vllm_metrics import parse_vllm_metrics


class Datastore:
    """The pool's endpoints and the tasks that refresh them."""

    def __init__(self, endpoints: list[Endpoint], interval: float = 0.05, timeout: float = 1.0):
        self.endpoints = endpoints
        self.interval = interval
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    def get(self, name: str) -> Endpoint | None:
        return next((ep for ep in self.endpoints if ep.name == name), None)

    def healthy(self) -> list[Endpoint]:
        return [ep for ep in self.endpoints if ep.healthy]

    async def refresh(self, ep: Endpoint) -> bool:
        """Scrape one endpoint now; True on success."""
        assert self._session is not None
        try:
            async with self._session.get(ep.url + "/metrics", timeout=self.timeout) as r:
                if r.status != 200:
                    ep.healthy = False
                    return False
                text = await r.text()
        except TimeoutError:
            return False  # slow is not dead: keep the old values, let them age
        except (aiohttp.ClientError, OSError):
            ep.healthy = False
            return False
        ep.metrics = parse_vllm_metrics(text)
        ep.updated = time.monotonic()
        ep.healthy = True
        return True

    async def _poll(self, ep: Endpoint) -> None:
        while True:
            started = time.monotonic()
            await self.refresh(ep)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        await asyncio.gather(*(self.refresh(ep) for ep in self.endpoints))
        self._tasks = [asyncio.create_task(self._poll(ep)) for ep in self.endpoints]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session:
            await self._session.close()

    def mark_failed(self, ep: Endpoint) -> None:
        """The proxy could not reach ``ep``: out of rotation until a scrape succeeds."""
        ep.healthy = False
