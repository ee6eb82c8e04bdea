"""Start the kit's own server processes, wait until they answer, read their metrics, and stop exactly those.

Every process ``spawn`` starts carries two tokens in its environment: ``$KIT_INSTANCE`` (random; the server
returns it in ``x-kit-instance``, so a health check knows it reached this process and not another one on the
port) and, when the caller names one, ``$KIT_STACK`` (which stack it belongs to, so ``marked`` can find the
stack's processes without any state file). A process is only ever signalled while its command line is still
the kit's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field

from kit.errors import KitError
from kit.http import DEFAULT_DRAIN_GRACE, DRAIN_ENV, INSTANCE_ENV, INSTANCE_HEADER, drain_grace
from kit.vllm_metrics import EndpointMetrics, parse_vllm_metrics


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def free_port_block(n: int) -> int:
    """A base port such that base..base+n-1 are all free right now, below the kernel's ephemeral range (a
    client connection anywhere on the machine can hold a port in that range, and a server then fails to bind)."""
    try:
        top = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) - n
    except (OSError, ValueError, IndexError):
        top = 32768 - n
    for _ in range(200):
        base = random.randint(20000, max(top, 21000))
        if all(not port_in_use(base + i) for i in range(n)):
            return base
    raise KitError(f"no block of {n} free ports found between 20000 and {max(top, 21000) + n}")


def healthy(url: str, timeout: float = 1.0, instance: str | None = None) -> bool:
    """Whether ``url``/health answers 200 (from the process started with token ``instance``, if given)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200 and (instance is None or r.headers.get(INSTANCE_HEADER) == instance)
    except (urllib.error.URLError, OSError, ValueError):
        return False


STACK_ENV = "KIT_STACK"
KILL_AFTER = 5.0  # seconds past a server's drain grace before ``stop`` kills it
ROLES = {"sim": "simulator", "gateway": "gateway"}  # ``kit`` subcommand → role, for processes found by marker


@dataclass
class Proc:
    """A server process the kit started: its pid, url and log file."""

    pid: Annotated[int, Field(gt=0)]
    url: str
    log: str
    role: str = "sim"
    args: tuple[str, ...] = ()
    instance: str | None = None  # the token the process returns in x-kit-instance
    drain_grace: float = DEFAULT_DRAIN_GRACE  # seconds it lets open requests finish when told to stop

    def owned(self) -> bool:
        """Alive and still the process the kit started (its command line matches), not a reused pid."""
        return self.alive() and _kit_args(self.pid) == list(self.args)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(self.pid)


def _kit_args(pid: int) -> list[str] | None:
    """The arguments after ``kit`` in ``pid``'s command line (``python -m kit sim ...``), or None."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    argv = [c.decode(errors="replace") for c in cmd if c]
    return argv[argv.index("kit") + 1 :] if "kit" in argv else None


def marked(stack: str) -> list[Proc]:
    """This user's live ``kit sim`` and ``kit gateway`` processes spawned with ``$KIT_STACK`` = ``stack``.

    Needs no state file: the marker is read from ``/proc/<pid>/environ``, and the command line must be the
    kit's, so no other process is ever returned.
    """
    found = []
    for d in Path("/proc").iterdir():
        try:
            env = _environ(d) if d.name.isdigit() and d.stat().st_uid == os.getuid() else {}
        except OSError:
            continue
        args = _kit_args(int(d.name)) if env.get(STACK_ENV) == stack else None
        if args and args[0] in ROLES:
            opt = dict(itertools.pairwise(args[1:]))
            proc = Proc(int(d.name), f"http://{opt.get('--host', '127.0.0.1')}:{opt.get('--port')}", "",
                        ROLES[args[0]], tuple(args), env.get(INSTANCE_ENV), drain_grace(env.get(DRAIN_ENV, "")))
            if proc.alive():
                found.append(proc)
    return found


def _environ(proc_dir: Path) -> dict[str, str]:
    entries = (proc_dir / "environ").read_bytes().decode(errors="replace").split("\0")
    return dict(e.partition("=")[::2] for e in entries if "=" in e)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def spawn(args: list[str], url: str, log: Path, role: str, wait: float = 30.0, *, stack: str | None = None) -> Proc:
    """Run ``python -m kit ARGS`` in its own session, logging to ``log``; wait until ``url`` is healthy.

    ``stack`` marks the process as part of that stack (see ``marked``). If anything goes wrong while waiting,
    including an interrupt, the process is stopped before the error propagates.
    """
    grace = drain_grace()  # the child reads the same $KIT_DRAIN_GRACE; a bad one fails here, before it starts
    log.parent.mkdir(parents=True, exist_ok=True)
    instance = uuid.uuid4().hex
    env = {**os.environ, INSTANCE_ENV: instance, **({STACK_ENV: stack} if stack else {})}
    with open(log, "ab") as fh:
        p = subprocess.Popen([sys.executable, "-m", "kit", *args], stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    proc = Proc(p.pid, url, str(log), role, tuple(args), instance, grace)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            if p.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise KitError(f"{role} at {url} exited with code {p.returncode} while starting:\n{tail}")
            if healthy(url, timeout=0.5, instance=instance):
                return proc
            time.sleep(0.05)
        raise KitError(f"{role} at {url} did not become healthy within {wait:g}s (log: {log})")
    except BaseException:
        if p.poll() is None:  # our own child: its pid cannot have been reused
            end_child(p)
        raise


def end_child(p: subprocess.Popen, grace: float = KILL_AFTER) -> None:
    """Stop a child this process started: SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
    p.terminate()
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def stop(proc: Proc, grace: float | None = None, waiting: Callable[[], None] | None = None) -> bool:
    """Stop a process the kit started; True if it was running.

    SIGTERM (the server stops accepting and drains), then SIGKILL once ``grace`` seconds have passed (default:
    the process's drain grace plus ``KILL_AFTER``). ``waiting()`` is called once if it has not exited
    after a second. A pid whose command line is no longer the one the kit started is left alone.
    """
    if not proc.owned():
        _reap(proc.pid)
        return False
    grace = proc.drain_grace + KILL_AFTER if grace is None else grace
    for sig in (signal.SIGTERM, signal.SIGCONT):  # a stopped (SIGSTOP) process handles SIGTERM once continued
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
    start = time.monotonic()
    told = waiting is None
    while time.monotonic() - start < grace:
        _reap(proc.pid)
        if not proc.alive():
            return True
        if not told and time.monotonic() - start > 1:
            waiting()
            told = True
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
