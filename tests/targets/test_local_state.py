"""The local target's state: one per-user place, written atomically, read safely, changed by one command at a time.

Every test runs real ``kit`` processes against an isolated state folder (``$KIT_STATE_DIR`` or
``$XDG_STATE_HOME``) on a free block of ports, and destroys what it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit import paths
from kit.targets.processes import free_port_block, port_in_use
from tests.helpers import running

ROOT = Path(__file__).resolve().parents[2]
STATE = "local-inference-scheduling.json"


def kit(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd or ROOT)


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without a state folder override, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("KIT_STATE_DIR", "XDG_STATE_HOME")}
    return {**env, **extra}


# ------------------------------------------------------------------------------------------- where
def test_state_lives_in_the_xdg_state_folder_unless_kit_state_dir_says_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv("KIT_STATE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert paths.state_dir() == tmp_path / "home" / ".local" / "state" / "kit"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert paths.state_dir() == tmp_path / "xdg" / "kit"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/path")  # the XDG spec says: ignore a relative path
    assert paths.state_dir() == tmp_path / "home" / ".local" / "state" / "kit"
    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path / "mine"))
    assert paths.state_dir() == tmp_path / "mine"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_STATE_DIR", "")  # empty is unset
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert paths.state_dir() == tmp_path / "xdg" / "kit"


@pytest.mark.slow
def test_status_and_destroy_from_another_directory_see_the_stack(tmp_path):
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "xdg"))
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    port = free_port_block(3)
    try:
        res = kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env=env, cwd=here)
        assert res.returncode == 0, res.stderr
        assert str(tmp_path / "xdg" / "kit" / STATE) in res.stdout  # deploy says where the state is
        st = kit("status", "-e", "local", "--json", env=env, cwd=there)
        assert st.returncode == 0 and json.loads(st.stdout)["gateway"] == f"http://127.0.0.1:{port}"
        out = kit("destroy", "-e", "local", env=env, cwd=there)
        assert out.returncode == 0 and out.stdout.count("stopped") == 2
        assert not port_in_use(port) and not port_in_use(port + 1)
        assert not (here / ".kit").exists() and not (there / ".kit").exists()
    finally:
        kit("destroy", "-e", "local", env=env, cwd=here)


@pytest.mark.slow
def test_a_notebook_kernel_and_the_cli_at_the_repository_root_see_the_same_stack(tmp_path):
    """The kernel runs in ``notebooks/`` (or ``out/``), the participant's terminal at the root."""
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "xdg"))
    port = free_port_block(3)
    kernel = ("import json, kit; s = kit.session('local'); st = s.status(); "
              "print(json.dumps({'ready': st.ready, 'gateway': st.detail['gateway']}))")
    stop = "import kit; kit.session('local').destroy()"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        assert kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env=env).returncode == 0
        seen = subprocess.run([sys.executable, "-c", kernel], capture_output=True, text=True, env=env,
                              cwd=ROOT / "notebooks", timeout=60)
        assert json.loads(seen.stdout) == {"ready": True, "gateway": f"http://127.0.0.1:{port}"}, seen.stderr
        gone = subprocess.run([sys.executable, "-c", stop], capture_output=True, text=True, env=env, cwd=out_dir,
                              timeout=60)
        assert gone.returncode == 0 and gone.stdout.count("stopped") == 2, gone.stderr
        assert "nothing deployed" in kit("status", "-e", "local", env=env).stdout
        assert not port_in_use(port) and not port_in_use(port + 1)
        assert not (ROOT / "notebooks" / ".kit").exists()
    finally:
        kit("destroy", "-e", "local", env=env)


def test_a_later_notebook_switching_profiles_keeps_the_stack_on_the_port_it_was_deployed_on(tmp_path):
    """Workshop stacks live on ports of their own (``02`` set ``gateway_port``); a later notebook left at
    ``gateway_port = 0`` uses that stack, and its profile switches reshape it there rather than on 8000."""
    env = clean_env(KIT_STATE_DIR=str(tmp_path / "state"))
    port = free_port_block(3)
    later = ("import kit; s = kit.session('local', release_postfix='ws', replicas=0, gateway_port=0); "
             "s.ensure(); s.deploy('random', say=print); print(s.status().detail['gateway'])")
    try:
        assert kit("deploy", "-e", "local", "--postfix", "ws", "--replicas", "2", "--port", str(port),
                   env=env).returncode == 0
        res = subprocess.run([sys.executable, "-c", later], capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "using the stack that is up: local/ws: default-plugins, guide release, 2 simulators" in res.stdout
        assert "started simulator" not in res.stdout  # the simulators stayed; only the gateway changed profile
        assert res.stdout.strip().endswith(f"http://127.0.0.1:{port}"), res.stdout
    finally:
        kit("destroy", "-e", "local", "--postfix", "ws", env=env)
    assert not [port + i for i in range(3) if port_in_use(port + i)]


# ----------------------------------------------------------------------------------- one at a time
@pytest.mark.slow
def test_two_deploys_at_once_make_one_stack_that_destroy_removes_entirely(tmp_path):
    env = clean_env(KIT_STATE_DIR=str(tmp_path / "state"))
    port = free_port_block(4)
    cmd = [sys.executable, "-m", "kit", "deploy", "-e", "local", "--replicas", "2", "--port", str(port)]
    try:
        both = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
                for _ in range(2)]
        results = [(p.wait(timeout=120), *p.communicate()) for p in both]
        for code, out, err in results:
            assert code == 0, err
            assert "local stack ready" in out
        assert any("gateway already running" in out for _, out, _ in results)  # the second found the first's
        st = json.loads(kit("status", "-e", "local", "--json", env=env).stdout)
        assert st["ready"] and len(st["processes"]) == 3
        pids = [p["pid"] for p in st["processes"]]
    finally:
        out = kit("destroy", "-e", "local", env=env)
    assert out.returncode == 0 and out.stdout.count("stopped") == 3
    assert not [pid for pid in pids if running(pid)]
    assert not [port + i for i in range(3) if port_in_use(port + i)]  # nothing left serving anywhere


@pytest.mark.slow
def test_a_deploy_waits_for_the_one_holding_the_stack_and_says_so(tmp_path):
    import fcntl

    state = tmp_path / "state"
    state.mkdir()
    env = clean_env(KIT_STATE_DIR=str(state))
    port = free_port_block(3)
    with open(state / "local-inference-scheduling.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(str(os.getpid()))
        held.flush()
        res = kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), "--timeout", "1", env=env)
    assert res.returncode == 1
    assert "another kit command is changing the local stack inference-scheduling" in res.stderr
    assert f"pid {os.getpid()}" in res.stderr
    assert not port_in_use(port + 1)  # it started nothing


# -------------------------------------------------------------------------------------- unreadable
CORRUPT = {
    "empty": b"",
    "truncated": b'{"gateway": {"pid": 12, "url": "http://127.0.0.1:1", "lo',
    "a list": b"[]",
    "wrong types": b'{"gateway": 5, "sims": "none", "scheduler_config": null}',
    "a bad pid": b'{"gateway": {"pid": -1, "url": "http://x", "log": "x"}, "sims": []}',
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_an_unreadable_state_file_is_a_clear_error_not_a_traceback(tmp_path, content):
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE).write_bytes(content)
    env = clean_env(KIT_STATE_DIR=str(state))
    for verb in ("status", "deploy"):
        res = kit(verb, "-e", "local", "--port", str(free_port_block(3)), env=env) if verb == "deploy" else \
            kit(verb, "-e", "local", env=env)
        assert res.returncode == 1, (verb, res.stdout)
        assert "Traceback" not in res.stderr, res.stderr
        assert f"the state file {state / STATE} is unreadable" in res.stderr, res.stderr
        assert "kit destroy -e local" in res.stderr  # the way out
    res = kit("destroy", "-e", "local", env=env)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "is unreadable" in res.stdout and "no process of this stack is running" in res.stdout
    assert (state / (STATE + ".corrupt")).read_bytes() == content  # kept for a look, out of the way
    assert "nothing deployed" in kit("status", "-e", "local", env=env).stdout


@pytest.mark.slow
def test_destroy_stops_the_stack_when_its_state_is_corrupt_and_leaves_other_stacks_alone(tmp_path):
    state = tmp_path / "state"
    env = clean_env(KIT_STATE_DIR=str(state))
    other_env = clean_env(KIT_STATE_DIR=str(tmp_path / "other"))  # same postfix, another state folder
    port, other = free_port_block(3), free_port_block(3)
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        assert kit("deploy", "-e", "local", "--replicas", "1", "--port", str(port), env=env).returncode == 0
        assert kit("deploy", "-e", "local", "--replicas", "1", "--port", str(other), env=other_env).returncode == 0
        assert kit("deploy", "-e", "local", "--replicas", "1", "--port", str(free_port_block(3)), "--postfix",
                   "second", env=env).returncode == 0
        pids = [p["pid"] for p in json.loads(kit("status", "-e", "local", "--json", env=env).stdout)["processes"]]
        (state / STATE).write_text('{"gateway": {"pid": ')  # the file is cut off
        res = kit("destroy", "-e", "local", env=env)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("stopped") == 2 and "is unreadable" in res.stdout
        assert not [pid for pid in pids if running(pid)]
        assert not port_in_use(port) and not port_in_use(port + 1)
        assert json.loads(kit("status", "-e", "local", "--json", env=other_env).stdout)["ready"]
        assert json.loads(kit("status", "-e", "local", "--json", "--postfix", "second", env=env).stdout)["ready"]
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        kit("destroy", "-e", "local", env=env)
        kit("destroy", "-e", "local", "--postfix", "second", env=env)
        kit("destroy", "-e", "local", env=other_env)
