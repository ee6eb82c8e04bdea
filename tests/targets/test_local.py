"""``kit deploy / status / destroy -e local``: real processes, a state file, and only our own processes touched."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from kit.targets.processes import free_port_block, port_in_use
from tests.helpers import running

pytestmark = pytest.mark.slow  # every test here starts and stops several processes

def kit(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


@pytest.fixture
def local_env(tmp_path):
    """An isolated state folder and a free block of ports; destroys whatever a test left."""
    env = {"KIT_STATE_DIR": str(tmp_path / "state")}
    port = free_port_block(6)
    yield env, port
    kit("destroy", "-e", "local", env=env)


def status(env) -> dict:
    return json.loads(kit("status", "-e", "local", "--json", env=env).stdout)


def test_deploy_status_destroy(local_env):
    env, port = local_env
    res = kit("deploy", "-e", "local", "--replicas", "3", "--port", str(port), env=env)
    assert res.returncode == 0, res.stderr
    assert f"local stack ready: http://127.0.0.1:{port}" in res.stdout
    st = status(env)
    assert st["ready"] and st["gateway"] == f"http://127.0.0.1:{port}"
    assert [p["role"] for p in st["processes"]] == ["gateway", "simulator", "simulator", "simulator"]
    assert [p["url"] for p in st["processes"][1:]] == [f"http://127.0.0.1:{port + i}" for i in (1, 2, 3)]
    assert st["scheduler_config"].endswith("templates/scheduler/default-plugins.yaml")

    req = kit("request", "--url", st["gateway"], "hello", env=env)
    assert req.returncode == 0 and "served by:" in req.stdout

    pids = [p["pid"] for p in st["processes"]]
    out = kit("destroy", "-e", "local", env=env)
    assert out.returncode == 0 and out.stdout.count("stopped") == 4
    assert not [pid for pid in pids if running(pid)]
    assert "nothing deployed" in kit("status", "-e", "local", env=env).stdout


def test_deploying_twice_is_safe_and_reshaping_changes_only_what_must(local_env):
    env, port = local_env
    assert kit("deploy", "-e", "local", "--replicas", "2", "--port", str(port), env=env).returncode == 0
    first = {p["url"]: p["pid"] for p in status(env)["processes"]}
    again = kit("deploy", "-e", "local", "--replicas", "2", "--port", str(port), env=env)
    assert "gateway already running" in again.stdout
    assert {p["url"]: p["pid"] for p in status(env)["processes"]} == first

    res = kit("deploy", "-e", "local", "--replicas", "3", "--port", str(port), "--scheduler-config",
              "templates/scheduler/random.yaml", env=env)
    assert res.returncode == 0, res.stderr
    now = {p["url"]: p["pid"] for p in status(env)["processes"]}
    sims = [f"http://127.0.0.1:{port + i}" for i in (1, 2)]
    assert all(now[u] == first[u] for u in sims)  # existing simulators kept (and their caches)
    assert now[f"http://127.0.0.1:{port}"] != first[f"http://127.0.0.1:{port}"]  # gateway restarted
    assert status(env)["scheduler_config"].endswith("random.yaml")


def test_a_busy_port_fails_before_anything_starts(local_env):
    env, port = local_env
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port + 1))
        blocker.listen()
        res = kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env=env)
    assert res.returncode == 1
    assert f"port {port + 1} is in use by a process the kit did not start" in res.stderr


def test_bad_inputs_fail_clearly_and_start_nothing(local_env, tmp_path):
    env, port = local_env
    res = kit("deploy", "-e", "nowhere", env=env)
    assert res.returncode == 1 and "unknown environment 'nowhere'; valid choices: agentgateway, cpu" in res.stderr
    res = kit("deploy", "-e", "local", "--set", "replicas=lots", env=env)
    assert res.returncode == 1 and "replicas: Input should be a valid integer" in res.stderr
    res = kit("deploy", "-e", "local", "--set", "nonsense", env=env)
    assert res.returncode == 1 and "expected KEY=VALUE" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
                   "plugins: [{type: queue-scorrer}]\n")
    res = kit("deploy", "-e", "local", "--port", str(port), "--scheduler-config", str(bad), env=env)
    assert res.returncode == 1 and "unknown plugin type 'queue-scorrer'" in res.stderr
    assert "nothing deployed" in kit("status", "-e", "local", env=env).stdout


def test_destroy_never_touches_a_process_it_did_not_start(local_env, tmp_path):
    env, port = local_env
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state = tmp_path / "state"
        state.mkdir(parents=True, exist_ok=True)
        fake = {"gateway": {"pid": bystander.pid, "url": f"http://127.0.0.1:{port}", "log": "x", "role": "gateway",
                            "args": ["gateway", "--port", str(port)]}, "sims": [], "scheduler_config": None}
        (state / "local-inference-scheduling.json").write_text(json.dumps(fake))
        out = kit("destroy", "-e", "local", env=env)
        assert "was not running; nothing to stop" in out.stdout
        assert bystander.poll() is None  # still alive: its command line is not the kit's
    finally:
        bystander.kill()
        bystander.wait()


def test_two_postfixes_are_two_independent_stacks(local_env):
    env, port = local_env
    other = free_port_block(3)
    assert kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env=env).returncode == 0
    second = kit("deploy", "-e", "local", "--replicas", "1", "--port", str(other), "--postfix", "second", env=env)
    assert second.returncode == 0
    try:
        assert status(env)["gateway"] == f"http://127.0.0.1:{port}"
        kit("destroy", "-e", "local", "--postfix", "second", env=env)
        assert status(env)["ready"]  # the first stack is untouched
    finally:
        kit("destroy", "-e", "local", "--postfix", "second", env=env)


def test_a_failed_deploy_stops_what_it_started_and_status_is_not_ready(local_env):
    env, port = local_env
    with socket.socket() as blocker:  # the gateway's port is taken; the simulators' ports are free
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        res = kit("deploy", "-e", "local", "--replicas", "2", "--port", str(port), env=env)
    assert res.returncode == 1 and f"port {port} is in use" in res.stderr
    assert not port_in_use(port + 1) and not port_in_use(port + 2)  # nothing of this deploy is left running
    assert "nothing deployed" in kit("status", "-e", "local", env=env).stdout


def test_a_deploy_that_fails_half_way_rolls_back_only_what_it_started(local_env):
    env, port = local_env
    assert kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env=env).returncode == 0
    before = status(env)["processes"]
    with socket.socket() as blocker:  # bound, not listening: the port looks free, but no server can bind it
        blocker.bind(("127.0.0.1", port + 3))
        res = kit("deploy", "-e", "local", "--replicas", "3", "--port", str(port), env=env)
    assert res.returncode == 1 and f"simulator at http://127.0.0.1:{port + 3} exited" in res.stderr
    assert "stopped simulator pid" in res.stdout and f"127.0.0.1:{port + 2}" in res.stdout
    assert not port_in_use(port + 2)  # the simulator this deploy started is gone
    st = status(env)
    assert st["ready"] and st["processes"] == before  # what it found (gateway, simulator 0) is kept as it was


def test_status_is_never_ready_without_a_gateway(local_env):
    env, port = local_env
    assert kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env=env).returncode == 0
    gw = status(env)["processes"][0]
    os.kill(gw["pid"], signal.SIGKILL)
    st = status(env)
    assert not st["ready"] and st["processes"][0]["running"] is False
    res = kit("status", "-e", "local", env=env)
    assert res.returncode == 1 and "not running" in res.stdout


def test_status_asks_the_recorded_process_not_whoever_answers_on_its_port(local_env, tmp_path):
    env, port = local_env
    assert kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env=env).returncode == 0
    f = tmp_path / "state" / "local-inference-scheduling.json"
    data = json.loads(f.read_text())
    data["sims"][0]["instance"] = "another-process"  # as if the recorded simulator no longer held its port
    f.write_text(json.dumps(data))
    st = status(env)
    assert not st["ready"] and [p["healthy"] for p in st["processes"]] == [True, False]
    res = kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env=env)
    assert res.returncode == 0 and "started simulator 0" in res.stdout  # replaced, not trusted
    assert status(env)["ready"]
