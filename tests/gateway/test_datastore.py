"""The datastore's health verdicts, in process against real ``kit sim`` servers, where the gateway's own
event loop can be stalled at will."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from kit.gateway import GatewaySettings, endpoints_from_urls
from kit.gateway.datastore import Datastore

QUIET = GatewaySettings(refresh_interval=60.0)  # the pollers wait: each scrape below is one the test makes


def test_timeouts_while_the_gateway_itself_ran_late_are_not_counted(sim_factory):
    """A gateway starved of CPU finds its attempts timed out however fast the servers answer: such
    a timeout proves nothing; one while the loop runs on time counts."""
    [ep] = endpoints_from_urls([sim_factory().url])

    async def scenario():
        ds = Datastore([ep], QUIET.model_copy(update={"unhealthy_after": 1.0}))
        await ds.start()
        await asyncio.sleep(0.2)  # the pollers made their first scrape; the next is a minute away
        try:
            for _ in range(2):
                since = time.monotonic()
                time.sleep(1.2)  # the event loop is stuck while the attempt waits
                ds.mark_failed(ep, "proxy: no connection within 1 s", since=since)
            late = ep.healthy, ds.problems[ep.name]
            await asyncio.sleep(0.3)  # on time again
            for _ in range(2):
                ds.mark_failed(ep, "proxy: no connection within 1 s", since=time.monotonic())
            return late, ep.healthy
        finally:
            await ds.stop()

    (healthy_while_late, problem), healthy_after = asyncio.run(scenario())
    assert healthy_while_late and problem.endswith("(not counted)")
    assert not healthy_after  # two timeouts in a row, 2 s and more since the last good scrape


async def counted_refresh(ds: Datastore, ep, tries: int = 3) -> tuple[bool, bool]:
    """A scrape and the endpoint's health after it, scraping again while a busy machine stalls this process past
    the loop-lag limit (the timeout is then rightly not counted, and says so)."""
    for _ in range(tries):
        ok = await ds.refresh(ep)
        if not ds.problems.get(ep.name, "").endswith("(not counted)"):
            return ok, ep.healthy
    raise AssertionError(f"every scrape ran while this process was starved: {ds.problems[ep.name]}")


def test_a_server_that_stops_answering_leaves_after_two_timeouts_and_comes_back(sim_factory):
    sim = sim_factory()
    [ep] = endpoints_from_urls([sim.url])

    async def scenario():
        ds = Datastore([ep], QUIET.model_copy(update={"unhealthy_after": 1.5}))
        await ds.start()
        try:
            os.kill(sim.pid, signal.SIGSTOP)
            try:
                first = await counted_refresh(ds, ep)  # 1 s: one timeout, not yet out
                second = await counted_refresh(ds, ep)  # 2 s without a good scrape, two in a row: out
            finally:
                os.kill(sim.pid, signal.SIGCONT)
            back = (await ds.refresh(ep), ep.healthy)
            return first, second, back
        finally:
            await ds.stop()

    assert asyncio.run(scenario()) == ((False, True), (False, False), (True, True))
