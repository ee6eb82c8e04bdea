"""Shared fixtures: real simulator processes on free loopback ports, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kit.manifests.validate import SHIPPED_SCHEMAS
from kit.targets.processes import Proc, free_port, spawn, stop

# The pinned upstream CRD schemas the kit ships and validates against by default.
SCHEMAS = SHIPPED_SCHEMAS


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``kit sim`` with the given flags; every process started here is stopped afterwards."""
    started: list[Proc] = []

    def start(*flags: str) -> Proc:
        port = free_port()
        proc = spawn(["sim", "--port", str(port), *flags], f"http://127.0.0.1:{port}",
                     tmp_path / f"sim-{port}.log", role="sim")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``kit gateway`` in front of the given model-server URLs; stopped afterwards."""
    started: list[Proc] = []

    def start(endpoints: list[str], *flags: str) -> Proc:
        port = free_port()
        proc = spawn(["gateway", "--port", str(port), "--endpoints", ",".join(endpoints), *flags],
                     f"http://127.0.0.1:{port}", tmp_path / f"gateway-{port}.log", role="gateway")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)
