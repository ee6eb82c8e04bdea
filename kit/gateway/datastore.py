"""Keep each endpoint's metrics fresh, and (kit-only) decide which endpoints are in rotation.

Scraping follows upstream: one poller per endpoint gets ``/metrics`` every ``refresh_interval``
(50 ms) with a ``scrape_timeout`` (1 s); a failed scrape keeps the old values, which age.

Health is the kit's own, because the local target has no readiness probes (upstream takes its
candidates from the pods Kubernetes reports ready). A scrape fails when the connection is refused or
reset, when the answer is not 200, or when it takes longer than ``scrape_timeout``. An endpoint
leaves rotation at once when it refuses connections or answers an error (to a scrape or to the
proxy), and when no scrape has succeeded for ``unhealthy_after`` seconds and at least the last two
timed out (a hung server); it comes back with its next good scrape. A timeout proves nothing when
this process's own event loop was late meanwhile (a gateway starved of CPU, or paused, finds every
scrape timed out however fast the servers answer), so such a timeout is not counted: a watchdog
task notes when the loop runs more than ``LOOP_LAG_LIMIT`` late. Requests still waiting for the
first byte from an endpoint that leaves rotation as hung are released (``watch``) so the proxy can
try another. ``health_check=False`` keeps every endpoint in rotation, as upstream does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from kit.gateway.settings import GatewaySettings
from kit.picker import Endpoint
from kit.vllm_metrics import parse_vllm_metrics

LOOP_TICK = 0.05  # the watchdog's period
LOOP_LAG_LIMIT = 0.25  # a loop this late cannot tell a hung server from its own slowness


class Datastore:
    """The pool's endpoints, the tasks that refresh them, and why each one is out of rotation."""

    def __init__(self, endpoints: list[Endpoint], settings: GatewaySettings | None = None):
        self.endpoints = endpoints
        self._by_name = {ep.name: ep for ep in endpoints}
        self.settings = settings or GatewaySettings()
        self.problems: dict[str, str] = {}  # endpoint name → its latest scrape or proxy failure
        self._failures = {ep.name: 0 for ep in endpoints}  # scrapes failed in a row
        # Requests waiting for a first byte, per timeout length, oldest first: timeout → {its Timeout: (deadline,
        # endpoint)}. The watchdog expires them (no timer per request, which cost more than the rest of the wait).
        self._waiting: dict[float, dict[_Watch, tuple[float, str]]] = {}
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        self._tick = self._lagged_at = 0.0  # the watchdog's last tick; when it last found the loop late

    def get(self, name: str) -> Endpoint | None:
        return self._by_name.get(name)

    def healthy(self) -> list[Endpoint]:
        return [ep for ep in self.endpoints if ep.healthy]

    async def refresh(self, ep: Endpoint) -> bool:
        """Scrape one endpoint now; True on success."""
        assert self._session is not None
        timeout = self.settings.scrape_timeout
        started = time.monotonic()
        try:
            async with self._session.get(ep.url + "/metrics", timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if r.status != 200:
                    self._failed(ep, f"/metrics answered {r.status}")
                    return False
                text = await r.text()
        except TimeoutError:
            self._failed(ep, f"/metrics did not answer within {timeout:.3g} s", since=started)
            return False
        except (aiohttp.ClientError, OSError) as exc:
            self._failed(ep, f"/metrics: {exc or type(exc).__name__}")
            return False
        ep.metrics = parse_vllm_metrics(text)
        ep.updated = time.monotonic()
        ep.healthy = True
        self.problems.pop(ep.name, None)
        self._failures[ep.name] = 0
        return True

    def mark_failed(self, ep: Endpoint, why: str, since: float | None = None) -> None:
        """The proxy could not reach ``ep``: out of rotation until a scrape succeeds. With ``since`` (when
        the attempt began) it timed out instead, which counts like a timed-out scrape."""
        self._failed(ep, why, since)

    def own_loop_lagged(self, since: float) -> bool:
        """Whether this process's event loop ran late at some point since ``since`` (monotonic seconds)."""
        return self._lagged_at >= since or time.monotonic() - self._tick > LOOP_TICK + LOOP_LAG_LIMIT

    def _failed(self, ep: Endpoint, why: str, since: float | None = None) -> None:
        """Record a failure: at once (refused, an error answer), or a timeout of an attempt begun ``since``."""
        if since is not None and self.own_loop_lagged(since):
            self.problems[ep.name] = f"{why}, while this gateway itself ran late (not counted)"
            return
        self.problems[ep.name] = why
        self._failures[ep.name] = failures = self._failures.get(ep.name, 0) + 1
        if not self.settings.health_check or not ep.healthy:
            return
        if since is None:  # it answers, with an error, or nothing listens: requests under way fail on their own
            ep.healthy = False
        elif failures >= 2 and time.monotonic() - ep.updated >= self.settings.unhealthy_after:
            ep.healthy = False  # hung: the requests waiting on it would wait until their own timeout
            for watcher in [cm for waiting in self._waiting.values() for cm, (_, name) in waiting.items()
                            if name == ep.name]:
                watcher.expire()

    def watch(self, ep: Endpoint, timeout: float) -> _Watch:
        """``async with``: raise TimeoutError in the block after ``timeout`` seconds (to within the
        watchdog's ``LOOP_TICK``; the watchdog runs once ``start`` has), or as soon as ``ep`` leaves
        rotation as hung."""
        waiting = self._waiting.get(timeout)
        if waiting is None:
            waiting = self._waiting[timeout] = {}
        return _Watch(waiting, time.monotonic() + timeout, ep.name)

    async def _watchdog(self) -> None:
        while True:
            self._tick = time.monotonic()
            await asyncio.sleep(LOOP_TICK)
            now = time.monotonic()
            if now - self._tick > LOOP_TICK + LOOP_LAG_LIMIT:
                self._lagged_at = now
            for waiting in self._waiting.values():  # oldest first: stop at the first one still in time
                expired = []
                for cm, (deadline, _) in waiting.items():
                    if deadline > now:
                        break
                    expired.append(cm)
                for cm in expired:
                    del waiting[cm]
                    cm.expire()

    async def _poll(self, ep: Endpoint) -> None:
        while True:
            started = time.monotonic()
            await self.refresh(ep)
            await asyncio.sleep(max(0.0, self.settings.refresh_interval - (time.monotonic() - started)))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._watchdog())]
        await asyncio.gather(*(self.refresh(ep) for ep in self.endpoints))
        if self.settings.health_check:
            for ep in self.endpoints:
                if not ep.updated:  # never scraped: no evidence it serves
                    ep.healthy = False
        self._tasks += [asyncio.create_task(self._poll(ep)) for ep in self.endpoints]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session:
            await self._session.close()


class _Watch:
    """``async with``: ``asyncio.timeout``'s behaviour without its cost (with ``asyncio.timeout(None)`` the watch was
    about 7% of the gateway's own instructions per request, counted by valgrind): no timer of its own; the watchdog
    ``expire``s it at its deadline, and ``_failed`` as soon as its endpoint leaves rotation as hung. Expiring
    cancels the task on the loop's next round, unless the block has ended by then; the block then raises
    ``TimeoutError``, unless the task was also cancelled by someone else (as ``asyncio.Timeout`` does)."""

    __slots__ = ("_cancelling", "_deadline", "_expired", "_handle", "_name", "_task", "_waiting")

    def __init__(self, waiting: dict[_Watch, tuple[float, str]], deadline: float, name: str):
        self._waiting, self._deadline, self._name = waiting, deadline, name
        self._task: asyncio.Task | None = None  # while inside the block
        self._handle: asyncio.Handle | None = None  # the cancellation, scheduled
        self._cancelling = 0
        self._expired = False

    def expire(self) -> None:
        """Time the block out now (nothing if it is not running, or is timing out already)."""
        if self._task is not None and self._handle is None and not self._expired:
            self._handle = self._task.get_loop().call_soon(self._on_timeout)

    def _on_timeout(self) -> None:
        self._handle = None
        self._expired = True
        self._task.cancel()  # type: ignore[union-attr]

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a watch must be used inside a task")
        self._task, self._cancelling = task, task.cancelling()
        self._waiting[self] = (self._deadline, self._name)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._waiting.pop(self, None)
        if self._handle is not None:  # expired, not yet delivered: the block ended in time after all
            self._handle.cancel()
            self._handle = None
        task, self._task = self._task, None
        if self._expired and task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:  # type: ignore[union-attr]
            raise TimeoutError from exc
