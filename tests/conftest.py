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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` (``make test``): every test of a file runs on one worker, so
    module fixtures (a deployed stack, the executed walkthrough) are built once; the tests against real vLLM
    all share one worker, as they share one set of vLLM servers."""
    for item in items:
        real_vllm = item.get_closest_marker("vllm") or "tests/contract/" in item.nodeid
        item.add_marker(pytest.mark.xdist_group("vllm" if real_vllm else item.nodeid.split("::")[0]))
