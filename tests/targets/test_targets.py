"""Both targets offer every verb of the Target protocol, and only the factory asks which one an environment uses."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from kit.manifests.environments import load_environment
from kit.targets import Target, target_for
from kit.targets.cluster import ClusterTarget
from kit.targets.local import LocalTarget

ROOT = Path(__file__).resolve().parents[2]
VERBS = [n for n, v in vars(Target).items() if callable(v) and not n.startswith("_")]


def test_the_protocol_names_the_verbs_both_targets_share():
    assert sorted(VERBS) == ["check", "decision", "deploy", "destroy", "gateway", "metrics", "plan", "reset_caches",
                             "status"]


@pytest.mark.parametrize("cls", [LocalTarget, ClusterTarget])
@pytest.mark.parametrize("verb", VERBS)
def test_each_target_implements_each_verb_with_the_protocols_parameters(cls, verb):
    want = inspect.signature(getattr(Target, verb)).parameters
    have = inspect.signature(getattr(cls, verb)).parameters
    assert list(want) == list(have), f"{cls.__name__}.{verb}{tuple(have)} differs from Target.{verb}{tuple(want)}"
    for name, p in want.items():
        assert have[name].kind == p.kind, (cls.__name__, verb, name)


def test_the_factory_picks_the_target_the_environment_names():
    assert isinstance(target_for(load_environment("local")), LocalTarget)
    assert isinstance(target_for(load_environment("istio")), ClusterTarget)  # connects only on first use


def test_no_code_outside_the_factory_asks_whether_the_target_is_local():
    asks = re.compile(r"""\.target\s*[!=]=|is_local|["']local["']\s*(==|!=|in)|target\s*==""")
    allowed = {ROOT / "kit" / "targets" / "__init__.py",  # the factory
               ROOT / "kit" / "manifests" / "environments.py"}  # the model that says what each target needs
    offenders = []
    for f in sorted((ROOT / "kit").rglob("*.py")):
        if f in allowed:
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if asks.search(line):
                offenders.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []


def test_a_group_left_with_only_a_zombie_is_not_alive():
    """A server started by an earlier kit command is reparented when that command exits; once stopped, it is a
    zombie until whoever adopted it reaps it, which may take seconds: stop must not wait for that."""
    import os
    import subprocess
    import sys
    import time

    from kit.targets.processes import _group_alive

    # The parent starts a child in a session of its own that exits at once, and never reaps it.
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "p = subprocess.Popen(['true'], start_new_session=True)\n"
                               "print(p.pid, flush=True)\ntime.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        zombie = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        stat = Path(f"/proc/{zombie}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not _group_alive(zombie)
        assert _group_alive(os.getpgid(0))  # this test's own group runs
    finally:
        parent.kill()
        parent.wait()


def test_free_ports_come_from_kit_ports_and_skip_a_port_a_server_holds(monkeypatch):
    import socket

    from kit.errors import KitError
    from kit.targets.processes import PORTS_ENV, free_port, free_port_block

    lo = free_port_block(4)  # four ports no other test can take: from this worker's own range
    monkeypatch.setenv(PORTS_ENV, f"{lo}-{lo + 3}")
    with socket.socket() as held:
        held.bind(("127.0.0.1", lo))
        held.listen()
        assert {free_port() for _ in range(30)} <= {lo + 1, lo + 2, lo + 3}
        assert free_port_block(3) == lo + 1
        with pytest.raises(KitError, match=f"no block of 4 free ports found between {lo} and {lo + 3}"):
            free_port_block(4)
    monkeypatch.setenv(PORTS_ENV, "9000")
    with pytest.raises(KitError, match=r"\$KIT_PORTS must read LO-HI"):
        free_port()
