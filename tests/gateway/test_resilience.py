"""A hung or slow model server behind a real gateway: health, timeouts and retries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from kit.experiments.client import make_body, send
from kit.targets.processes import free_port
from tests.helpers import get_json, metrics_text, post

ROUND_ROBIN = ("--config", "templates/scheduler/round-robin.yaml")


def wait_for(predicate, timeout: float) -> float | None:
    """Seconds until ``predicate()`` held, or None if it never did within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    return None


@contextlib.contextmanager
def paused(proc):
    """SIGSTOP a process this test started (it hangs: accepts connections, answers nothing), then resume it."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def ready_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def endpoint(gw_url: str, name: str) -> dict:
    return next(e for e in get_json(gw_url + "/endpoints") if e["name"] == name)


def paced(url: str, n: int, gap: float, timeout: float = 15.0):
    """``n`` short requests, one every ``gap`` seconds (open loop), each with a client timeout."""

    async def go():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            tasks = []
            for i in range(n):
                tasks.append(asyncio.create_task(send(s, url, make_body(f"q{i}", chat=False, stream=i % 2 == 0,
                                                                      max_tokens=2))))
                await asyncio.sleep(gap)
            return await asyncio.gather(*tasks)

    return asyncio.run(go())


def test_a_hung_server_leaves_rotation_and_its_requests_are_served_elsewhere(sim_factory, gateway_factory):
    hung, live = sim_factory(), sim_factory()
    gw = gateway_factory([hung.url, live.url], *ROUND_ROBIN)
    hung_name, live_name = hung.url.split("//")[1], live.url.split("//")[1]
    with paused(hung):
        results = paced(gw.url, 30, 0.1)  # 3 s at 10 req/s, every other one sent to the hung server at first
        e2e = sorted(r.e2e for r in results)
        print(f"one of two servers hung: {sum(r.ok for r in results)}/30 served, slowest {e2e[-1]:.2f} s, "
              f"median {e2e[15]:.3f} s")
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert {r.endpoint for r in results} == {live_name}
        # Before leaving rotation (2 s without a good scrape) the hung server got requests; each
        # was released when it left and served by the other: none waited much longer than 2 s.
        assert e2e[-1] < 4.0, e2e[-3:]
        gone = endpoint(gw.url, hung_name)
        assert not gone["healthy"] and "did not answer" in gone["problem"]
        assert f'kit_gateway_retries_total{{endpoint="{hung_name}"}}' in metrics_text(gw.url)
    assert wait_for(lambda: endpoint(gw.url, hung_name)["healthy"], 5.0) is not None  # back on its next scrape


def test_with_its_only_server_hung_the_gateway_is_not_ready_and_answers_503(sim_factory, gateway_factory):
    sim = sim_factory()
    gw = gateway_factory([sim.url])
    assert ready_status(gw.url) == 200
    with paused(sim):
        took = wait_for(lambda: ready_status(gw.url) == 503, 6.0)
        assert took is not None and took < 3.5, took  # 2 s without a good scrape (+ one scrape period)
        start = time.monotonic()
        status, body, _ = post(gw.url, "/v1/completions", {"prompt": "anyone?", "max_tokens": 1})
        assert status == 503 and "no healthy endpoint" in body["error"]["message"]
        assert time.monotonic() - start < 1.0
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(gw.url + "/ready", timeout=5)
        assert "did not answer" in err.value.read().decode()
    assert wait_for(lambda: ready_status(gw.url) == 200, 5.0) is not None


def test_a_pause_of_the_gateway_itself_does_not_take_its_endpoints_out(sim_factory, gateway_factory):
    """Found by the soak: after the gateway process stalls (CPU starved, paused), the one scrape in flight
    of every endpoint times out at once; that alone must not take healthy endpoints out of rotation
    and release the requests waiting on them."""
    sim = sim_factory("--extra-latency-ms", "1000")
    gw = gateway_factory([sim.url])

    async def scenario():
        async with aiohttp.ClientSession() as s:
            waiting = asyncio.create_task(send(s, gw.url, make_body("slow", chat=False, stream=False, max_tokens=1)))
            await asyncio.sleep(0.3)
            with paused(gw):
                await asyncio.sleep(3.0)  # longer than --unhealthy-after
            return await waiting

    result = asyncio.run(scenario())
    assert result.ok, result.error
    assert "kit_gateway_retries_total{" not in metrics_text(gw.url)
    assert endpoint(gw.url, sim.url.split("//")[1])["healthy"]


def test_a_request_hung_before_its_first_byte_is_retried_after_the_first_byte_timeout(sim_factory, gateway_factory):
    slow, fast = sim_factory("--extra-latency-ms", "5000"), sim_factory()
    gw = gateway_factory([slow.url, fast.url], *ROUND_ROBIN, "--first-byte-timeout", "0.5")
    results = paced(gw.url, 6, 0.05)
    assert all(r.ok for r in results) and {r.endpoint for r in results} == {fast.url.split("//")[1]}
    assert max(r.e2e for r in results) < 3.0
    slow_name = slow.url.split("//")[1]
    assert f'kit_gateway_retries_total{{endpoint="{slow_name}"}}' in metrics_text(gw.url)
    assert endpoint(gw.url, slow_name)["healthy"]  # slow, but it answers its scrapes: still in rotation


def test_a_4xx_from_a_server_is_passed_through_and_never_retried(sim_factory, gateway_factory):
    gw = gateway_factory([sim_factory().url, sim_factory().url])
    bad_part = {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    status, body, _ = post(gw.url, "/v1/chat/completions", bad_part)
    assert status == 400 and "messages[0].content.parts[0].text" in body["error"]["message"]
    status, body, _ = post(gw.url, "/v1/completions", {"prompt": "x", "max_tokens": 10**9})
    assert status == 400 and "cannot be greater than max_model_len" in body["error"]["message"]
    text = metrics_text(gw.url)
    assert "kit_gateway_retries_total{" not in text
    served = sum(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("kit_gateway_requests_total{") and 'code="400"' in line)
    assert served == 2


def test_without_the_health_check_endpoints_stay_in_rotation_as_upstream(sim_factory, gateway_factory):
    """``--no-health-check``: a dead endpoint is never taken out; each request that picks it is retried."""
    live = sim_factory()
    dead_name = f"127.0.0.1:{free_port()}"
    gw = gateway_factory([f"http://{dead_name}", live.url], *ROUND_ROBIN, "--no-health-check")
    results = paced(gw.url, 6, 0.02)
    assert all(r.ok for r in results) and {r.endpoint for r in results} == {live.url.split("//")[1]}
    dead = endpoint(gw.url, dead_name)
    assert dead["healthy"] and dead["metrics_age_s"] is None and "Cannot connect" in dead["problem"]
    assert ready_status(gw.url) == 200
    assert f'kit_gateway_retries_total{{endpoint="{dead_name}"}}' in metrics_text(gw.url)
