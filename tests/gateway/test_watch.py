"""``Datastore.watch`` behaves as ``asyncio.timeout`` did before it replaced it on the request path:
expiring times the block out, a block that ends first is left alone, and a cancellation from elsewhere
stays a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from kit.gateway.datastore import Datastore
from kit.picker import Endpoint


def _store() -> tuple[Datastore, Endpoint]:
    ep = Endpoint(name="a:1", url="http://a:1")
    return Datastore([ep]), ep


def _watches(ds: Datastore) -> list:
    return [w for waiting in ds._waiting.values() for w in waiting]


def test_an_expired_watch_raises_timeout_error_in_its_block_and_the_task_is_not_left_cancelling():
    async def main() -> None:
        ds, ep = _store()
        with pytest.raises(TimeoutError):
            async with ds.watch(ep, 300.0):
                _watches(ds)[0].expire()
                await asyncio.sleep(10)
        assert asyncio.current_task().cancelling() == 0
        assert _watches(ds) == []
        await asyncio.sleep(0)  # the task goes on normally

    asyncio.run(main())


def test_a_block_that_ends_before_the_expiry_is_delivered_is_not_cancelled():
    async def main() -> None:
        ds, ep = _store()
        async with ds.watch(ep, 300.0):
            _watches(ds)[0].expire()  # delivered on the loop's next round, by which time the block has ended
        await asyncio.sleep(0.01)  # no CancelledError arrives later
        assert asyncio.current_task().cancelling() == 0

    asyncio.run(main())


def test_a_cancellation_from_elsewhere_stays_a_cancellation_even_when_the_watch_expired_too():
    async def main() -> None:
        ds, ep = _store()
        entered = asyncio.Event()

        async def block() -> None:
            async with ds.watch(ep, 300.0):
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(block())
        await entered.wait()
        _watches(ds)[0].expire()
        await asyncio.sleep(0)  # the expiry cancels the task
        task.cancel()  # and so does its caller
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_the_watchdog_expires_a_watch_past_its_deadline(monkeypatch):
    monkeypatch.setattr("kit.gateway.datastore.LOOP_TICK", 0.01)

    async def main() -> None:
        ds, ep = _store()
        watchdog = asyncio.create_task(ds._watchdog())
        try:
            with pytest.raises(TimeoutError):
                async with ds.watch(ep, 0.02):
                    await asyncio.sleep(5)
        finally:
            watchdog.cancel()

    asyncio.run(main())
