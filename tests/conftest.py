"""Shared fixtures: real simulator processes on free loopback ports, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kit.processes import Proc, free_port, spawn, stop


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
