"""Shared fixtures: real simulator processes on free loopback ports, stopped after each test."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from kit.manifests.validate import SHIPPED_SCHEMAS
from kit.targets.processes import PORTS_ENV, Proc, free_port, port_range, spawn, stop

# Property tests are bounded by examples, not by time: on a shared two-core machine one example can stall
# for longer than Hypothesis' default 200 ms deadline through no fault of the code under test.
settings.register_profile("kit", deadline=None)
settings.load_profile("kit")

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


# ------------------------------------------------------------------------------------------- parallel workers
# ``make test`` runs ``pytest -n 3 --dist loadgroup`` with the groups below. (pytest-xdist 3.8 reads groups from
# ``xdist_group`` marks by renaming node ids, which pytest 9.2 no longer allows; the scheduler here asks
# ``group_of`` instead.)
ROOT = Path(__file__).resolve().parents[1]


def _ports_of_this_worker() -> None:
    """Each xdist worker (and every process it starts) looks for free ports in a range of its own, so that two
    tests never pick the same port in the moment before their servers bind it."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker:
        lo, hi = port_range()
        width, i = (hi - lo) // count, int(worker.removeprefix("gw"))
        os.environ[PORTS_ENV] = f"{lo + i * width}-{lo + (i + 1) * width - 1}"


_ports_of_this_worker()


def group_of(nodeid: str) -> str:
    """The tests that must run on one worker, one after another: all those against real vLLM (they share one
    set of vLLM servers), and those of a file that builds a module fixture (a deployed stack, the executed
    walkthrough), so that it is built once. Any other test is a group of its own."""
    path = nodeid.split("::")[0]
    if path.startswith("tests/contract/"):
        return "vllm"
    return path if _builds_module_fixture(path) else nodeid


@functools.cache
def _builds_module_fixture(path: str) -> bool:
    return re.search(r"@pytest\.fixture\(scope=\"(module|package|class)\"", (ROOT / path).read_text()) is not None


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        """xdist's group scheduling, with ``group_of``'s groups, sent out in collection order."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    config.option.loadscopereorder = False  # the order below, not the largest group first
    return Groups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker, slow tests first (keeping the collection's order otherwise): the longest groups start
    at once, and short tests fill in at the end instead of one worker idling while the other runs a long one."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
