"""Destroy during load: the gateway stops accepting, lets open streams finish (up to a grace), then the simulators."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kit.manifests.environments import load_environment
from kit.targets.local import LocalTarget
from kit.targets.processes import free_port_block, port_in_use

pytestmark = pytest.mark.slow

STREAMS = 15
TOKENS = 50  # at 200 ms a token: 10 s, longer than the 5 s the kit used to give the gateway before SIGKILL
SLOW = ["--set", "local.simulator.step_overhead_ms=50"]  # × time_scale 4 = 200 ms per engine step


def kit(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


class Streams:
    """``STREAMS`` streamed completions through the gateway, each counting the tokens it received."""

    def __init__(self, port: int):
        self.port, self.first = port, threading.Semaphore(0)

    def one(self) -> tuple[int, bool]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        body = {"model": "Qwen/Qwen3-0.6B", "prompt": "tell me a story", "max_tokens": TOKENS, "stream": True}
        tokens, done = 0, False
        try:
            conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            for line in resp:
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif line.startswith(b"data: "):
                    tokens += 1
                    if tokens == 1:
                        self.first.release()
        except (OSError, http.client.HTTPException):
            pass  # cut off: counted by what arrived
        finally:
            conn.close()
        return tokens, done

    def run_during(self, action) -> tuple[list[tuple[int, bool]], object]:
        """Open every stream, run ``action()`` once all have their first token, and collect the streams."""
        with ThreadPoolExecutor(STREAMS) as pool:
            futures = [pool.submit(self.one) for _ in range(STREAMS)]
            for _ in range(STREAMS):
                assert self.first.acquire(timeout=60), "a stream never started"
            result = action(futures)
            return [f.result() for f in futures], result


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """A state folder and ports of this test's own; ``destroy`` runs in this process, which has the kit loaded
    already (a fresh ``kit destroy`` can take seconds to start on a busy machine, and the streams are timed)."""
    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path / "state"))
    env = {**os.environ, "KIT_STATE_DIR": str(tmp_path / "state")}
    port = free_port_block(4)
    yield env, port
    kit("destroy", "-e", "local", env=env)


def destroy() -> list[str]:
    said: list[str] = []
    LocalTarget(load_environment("local")).destroy(say=said.append)
    return said


def gateway_log(tmp_path: Path) -> str:
    return (tmp_path / "state" / "logs" / "inference-scheduling" / "gateway.log").read_text()


def test_destroy_during_load_lets_open_streams_finish_then_stops_the_simulators(stack, tmp_path):
    env, port = stack
    assert kit("deploy", "-e", "local", "--replicas", "2", "--port", str(port), *SLOW, env=env).returncode == 0

    def destroy_watching_the_port(futures):
        with ThreadPoolExecutor(1) as pool:
            said = pool.submit(destroy)
            deadline = time.monotonic() + 5
            while port_in_use(port) and time.monotonic() < deadline:
                time.sleep(0.02)
            refused_while_open = not port_in_use(port) and not all(f.done() for f in futures)
            return said.result(timeout=120), refused_while_open

    streams, (said, refused_while_open) = Streams(port).run_during(destroy_watching_the_port)
    assert refused_while_open  # the gateway stopped accepting while its streams were still open
    assert streams == [(TOKENS, True)] * STREAMS  # every open stream finished
    stopped = [line.split()[1] for line in said if line.startswith("stopped")]
    assert stopped == ["gateway", "simulator", "simulator"], said  # the gateway first
    assert "kit gateway: stopped" in gateway_log(tmp_path)  # it exited on its own, not by SIGKILL
    assert not [port + i for i in range(3) if port_in_use(port + i)]


def test_streams_still_open_after_the_grace_are_cut_off_and_the_gateway_exits_by_itself(stack, tmp_path):
    env, port = stack
    grace = {**env, "KIT_DRAIN_GRACE": "1"}  # the deploy passes it to the gateway, and records it
    assert kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), *SLOW, env=grace).returncode == 0
    streams, said = Streams(port).run_during(lambda _futures: destroy())
    assert all(0 < n < TOKENS and not done for n, done in streams), streams
    assert sum(line.startswith("stopped") for line in said) == 2, said
    log = gateway_log(tmp_path)
    assert f"cut off {STREAMS} open connection(s) after the 1 s grace" in log and "kit gateway: stopped" in log
    assert not port_in_use(port) and not port_in_use(port + 1)


def test_a_bad_drain_grace_is_a_clear_error(stack):
    env, port = stack
    res = kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env={**env, "KIT_DRAIN_GRACE": "soon"})
    assert res.returncode == 1 and "KIT_DRAIN_GRACE='soon': expected a number of seconds" in res.stderr
    assert not port_in_use(port + 1)


def test_an_idle_keep_alive_connection_does_not_hold_a_stopping_server(tmp_path):
    """A client's idle keep-alive connection (the gateway's pool to a simulator, say) closes at once on SIGTERM:
    restarting the stack, e.g. to switch profiles, must not wait out the drain grace."""
    port = free_port_block(1)
    env = {**os.environ, "KIT_DRAIN_GRACE": "20"}
    sim = subprocess.Popen([sys.executable, "-m", "kit", "sim", "--port", str(port)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while not port_in_use(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 2}),
                     {"Content-Type": "application/json"})
        assert conn.getresponse().read()  # answered; the connection stays open, idle
        started = time.monotonic()
        sim.terminate()
        out, _ = sim.communicate(timeout=30)
        assert time.monotonic() - started < 10, out  # not the 20 s grace
        assert "cut off" not in out and "kit sim: stopped" in out
        conn.close()
    finally:
        if sim.poll() is None:
            sim.kill()
