"""Start the kit's own server processes, wait until they answer, read their metrics, and stop exactly those."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError
from kit.http import INSTANCE_ENV, INSTANCE_HEADER
from kit.vllm_metrics import EndpointMetrics, parse_vllm_metrics


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def healthy(url: str, timeout: float = 1.0, instance: str | None = None) -> bool:
    """Whether ``url``/health answers 200 (from the process started with token ``instance``, if given)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200 and (instance is None or r.headers.get(INSTANCE_HEADER) == instance)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Proc:
    """A server process the kit started: its pid, url and log file."""

    pid: int
    url: str
    log: str
    role: str = "sim"
    args: tuple[str, ...] = ()
    instance: str | None = None  # the token the process returns in x-kit-instance

    def owned(self) -> bool:
        """Alive and still the process the kit started (its command line matches), not a reused pid."""
        if not self.alive():
            return False
        try:
            cmd = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        argv = [c.decode(errors="replace") for c in cmd if c]
        return "kit" in argv and list(self.args) == argv[argv.index("kit") + 1 :]

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(self.pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def spawn(args: list[str], url: str, log: Path, role: str, wait: float = 30.0) -> Proc:
    """Run ``python -m kit ARGS`` in its own session, logging to ``log``; wait until ``url`` is healthy."""
    log.parent.mkdir(parents=True, exist_ok=True)
    instance = uuid.uuid4().hex
    with open(log, "ab") as fh:
        p = subprocess.Popen([sys.executable, "-m", "kit", *args], stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, INSTANCE_ENV: instance})
    proc = Proc(p.pid, url, str(log), role, tuple(args), instance)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if p.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise KitError(f"{role} at {url} exited with code {p.returncode} while starting:\n{tail}")
        if healthy(url, timeout=0.5, instance=instance):
            return proc
        time.sleep(0.05)
    stop(proc)
    raise KitError(f"{role} at {url} did not become healthy within {wait:.0f}s (log: {log})")


def stop(proc: Proc, grace: float = 5.0) -> bool:
    """Stop a process the kit started (SIGTERM, then SIGKILL); True if it was running.

    A pid whose command line is no longer the one the kit started is left alone.
    """
    if not proc.owned():
        _reap(proc.pid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not proc.alive():
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    _reap(proc.pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def scrape(urls: Iterable[str], timeout: float = 5.0) -> dict[str, EndpointMetrics]:
    """``host:port → metrics`` for each server URL that answers (a dead server has no counters to read)."""
    out = {}
    for u in urls:
        u = u.rstrip("/")
        try:
            with urllib.request.urlopen(u + "/metrics", timeout=timeout) as r:
                out[u.split("://", 1)[-1]] = parse_vllm_metrics(r.read().decode())
        except OSError:
            continue
    return out
