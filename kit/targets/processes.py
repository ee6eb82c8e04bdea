"""Start the kit's own server processes, wait until they answer, read their metrics, and stop exactly those.

Two programs are started: the kit itself (``python -m kit sim|gateway ...``) and real vLLM
(``python -m vllm.entrypoints.cli.main serve ...``, with the interpreter of vLLM's own environment). Every
process ``start`` starts carries two tokens in its environment: ``$KIT_INSTANCE`` (random; the kit's servers
return it in ``x-kit-instance``, so a health check knows it reached this process and not another one on the
port; vLLM does not, so its health check also asks that the process still runs) and, when the caller names
one, ``$KIT_STACK`` (which stack it belongs to, so ``marked`` can find the stack's processes without any state
file). Each process leads its own process group, and is stopped with its group (vLLM runs its engine in
child processes). A process is only ever signalled while its command line is still the one the kit started.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field

from kit.errors import KitError
from kit.http import DEFAULT_DRAIN_GRACE, DRAIN_ENV, INSTANCE_ENV, INSTANCE_HEADER, drain_grace
from kit.vllm_metrics import EndpointMetrics, parse_vllm_metrics

PORTS_ENV = "KIT_PORTS"  # LO-HI: where free ports are looked for (the test suite gives each worker its own)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (see ``free_port_block``)."""
    return free_port_block(1, host)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _bindable(port: int, host: str) -> bool:
    """Nothing listens on the port, and no connection lingers on it (a bind without SO_REUSEADDR succeeds)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_range() -> tuple[int, int]:
    """Where free ports are looked for (both ends included): ``$KIT_PORTS``, else from 20000 up to the kernel's
    ephemeral range."""
    spec = os.environ.get(PORTS_ENV)
    if spec:
        lo, _, hi = spec.partition("-")
        if not (lo.isdigit() and hi.isdigit() and 0 < int(lo) < int(hi) < 65536):
            raise KitError(f"${PORTS_ENV} must read LO-HI with 0 < LO < HI < 65536, e.g. 20000-26000; not {spec!r}")
        return int(lo), int(hi)
    try:
        top = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        top = 32768
    return 20000, max(top, 21000) - 1


def free_port_block(n: int, host: str = "127.0.0.1") -> int:
    """A base port such that base..base+n-1 are all free right now, from ``$KIT_PORTS`` (``LO-HI``) or else
    between 20000 and the kernel's ephemeral range: a client connection anywhere on the machine can hold a port
    in that range, and a server then fails to bind."""
    lo, hi = port_range()
    for _ in range(200):
        base = random.randint(lo, max(lo, hi - n + 1))
        if all(_bindable(base + i, host) for i in range(n)):
            return base
    raise KitError(f"no block of {n} free ports found between {lo} and {hi}")


def healthy(url: str, timeout: float = 1.0, instance: str | None = None) -> bool:
    """Whether ``url``/health answers 200 (from the process started with token ``instance``, if given)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200 and (instance is None or r.headers.get(INSTANCE_HEADER) == instance)
    except (urllib.error.URLError, OSError, ValueError):
        return False


STACK_ENV = "KIT_STACK"
KILL_AFTER = 5.0  # seconds past a server's drain grace before ``stop`` kills it
# The programs the kit starts, by the module ``python -m`` runs: the arguments after it are the ones recorded.
PROGRAMS = {"kit": "kit", "vllm": "vllm.entrypoints.cli.main"}
# First argument → role, for processes found by marker.
ROLES = {"sim": "simulator", "gateway": "gateway", "serve": "vllm"}


@dataclass
class Proc:
    """A server process the kit started: its pid, url and log file."""

    pid: Annotated[int, Field(gt=0)]
    url: str
    log: str
    role: str = "sim"
    args: tuple[str, ...] = ()
    instance: str | None = None  # the token the process returns in x-kit-instance (None: vLLM, which has none)
    drain_grace: float = DEFAULT_DRAIN_GRACE  # seconds it lets open requests finish when told to stop
    program: str = "kit"  # a key of PROGRAMS
    env: dict[str, str] = field(default_factory=dict)  # the variables ``start`` added to the kit's environment

    def owned(self) -> bool:
        """Alive and still the process the kit started (its command line matches), not a reused pid."""
        return self.alive() and _program_args(self.pid, self.program) == list(self.args)

    def healthy(self, timeout: float = 1.0) -> bool:
        """Answers /health: the kit's servers with this process's token; vLLM while this process still runs."""
        if self.instance is None and not self.owned():
            return False
        return healthy(self.url, timeout=timeout, instance=self.instance)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(self.pid)


def _program_args(pid: int, program: str = "kit") -> list[str] | None:
    """The arguments after ``program``'s module in ``pid``'s command line (``python -m kit sim ...``), or None."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    argv = [c.decode(errors="replace") for c in cmd if c]
    word = PROGRAMS[program]
    return argv[argv.index(word) + 1 :] if "-m" in argv and word in argv else None


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
        if env.get(STACK_ENV) != stack:
            continue
        for program in PROGRAMS:
            args = _program_args(int(d.name), program)
            if args and args[0] in ROLES:
                opt = dict(itertools.pairwise(args[1:]))
                proc = Proc(int(d.name), f"http://{opt.get('--host', '127.0.0.1')}:{opt.get('--port')}", "",
                            ROLES[args[0]], tuple(args), env.get(INSTANCE_ENV) if program == "kit" else None,
                            drain_grace(env.get(DRAIN_ENV, "")), program)
                if proc.alive():
                    found.append(proc)
                break
    return found


def _environ(proc_dir: Path) -> dict[str, str]:
    entries = (proc_dir / "environ").read_bytes().decode(errors="replace").split("\0")
    return dict(e.partition("=")[::2] for e in entries if "=" in e)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass
class Starting:
    """A process ``start`` launched that is not known to answer yet."""

    popen: subprocess.Popen
    proc: Proc
    log_start: int = 0  # where this run's lines begin in the log (it is appended to)

    @property
    def log(self) -> Path:
        return Path(self.proc.log)

    def log_text(self) -> str:
        """What the process has logged so far."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.log_start)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""


def start(args: list[str], url: str, log: Path, role: str, *, stack: str | None = None, program: str = "kit",
          python: str | None = None, env: dict[str, str] | None = None, grace: float | None = None) -> Starting:
    """Launch ``python -m <program> ARGS`` in its own session (its own process group), logging to ``log``.

    ``python``: the interpreter (default: this one; vLLM's environment has its own). ``env``: added to this
    process's environment. ``grace``: the drain grace recorded (default: ``$KIT_DRAIN_GRACE``'s).
    """
    grace = drain_grace() if grace is None else grace  # a bad $KIT_DRAIN_GRACE fails here, before it starts
    log.parent.mkdir(parents=True, exist_ok=True)
    instance = uuid.uuid4().hex
    full_env = {**os.environ, **(env or {}), INSTANCE_ENV: instance, **({STACK_ENV: stack} if stack else {})}
    with open(log, "ab") as fh:
        offset = fh.tell()
        p = subprocess.Popen([python or sys.executable, "-m", PROGRAMS[program], *args], stdout=fh,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                             env=full_env)
    token = instance if program == "kit" else None
    return Starting(p, Proc(p.pid, url, str(log), role, tuple(args), token, grace, program, dict(env or {})), offset)


def wait_ready(starting: list[Starting], wait: float, progress: Callable[[list[Starting]], None] | None = None,
               *, stop_on_failure: bool = True) -> list[Proc]:
    """Wait until every process answers ``/health``; ``progress(still_starting)`` is called on each round.

    If one exits, or ``wait`` seconds pass, or anything else goes wrong (an interrupt too), every process of
    ``starting`` is stopped before the error propagates (unless ``stop_on_failure`` is False: the caller stops
    them, saying so).
    """
    deadline = time.monotonic() + wait
    pending = list(starting)
    try:
        while pending:
            for s in list(pending):
                if s.popen.poll() is not None:
                    tail = s.log_text()[-2000:]
                    raise KitError(f"{s.proc.role} at {s.proc.url} exited with code {s.popen.returncode} while "
                                   f"starting:\n{tail}")
                if healthy(s.proc.url, timeout=0.5, instance=s.proc.instance):
                    pending.remove(s)
            if progress is not None:
                progress(pending)
            if not pending:
                break
            if time.monotonic() >= deadline:
                late = ", ".join(f"{s.proc.role} at {s.proc.url} (log: {s.log})" for s in pending)
                raise KitError(f"{late} did not become healthy within {wait:g}s")
            time.sleep(0.05 if all(s.proc.program == "kit" for s in pending) else 0.5)
    except BaseException:
        for s in starting if stop_on_failure else ():
            if s.popen.poll() is None:  # our own child: its pid cannot have been reused
                end_child(s.popen, group=True)
        raise
    return [s.proc for s in starting]


def spawn(args: list[str], url: str, log: Path, role: str, wait: float = 30.0, *, stack: str | None = None) -> Proc:
    """Run ``python -m kit ARGS`` in its own session, logging to ``log``; wait until ``url`` is healthy.

    ``stack`` marks the process as part of that stack (see ``marked``). If anything goes wrong while waiting,
    including an interrupt, the process is stopped before the error propagates.
    """
    return wait_ready([start(args, url, log, role, stack=stack)], wait)[0]


def end_child(p: subprocess.Popen, grace: float = KILL_AFTER, *, group: bool = False) -> None:
    """Stop a child this process started: SIGTERM, then SIGKILL if it is still there after ``grace`` seconds.
    ``group``: signal its whole process group (a child started in its own session), and wait for all of it."""
    if not group:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        return
    _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(p.pid) and time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(0.05)
    _signal_group(p.pid, signal.SIGKILL)
    p.wait()


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (every process the kit starts leads one), else ``pid`` alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still runs (the leader reaped first, if it is our child). Zombies
    do not count: a server started by an earlier ``kit`` command is another process's child once that command
    exits, and whoever reaps it may take seconds to."""
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stats = [d / "stat" for d in Path("/proc").iterdir() if d.name.isdigit()]
    except OSError:
        return True  # no /proc to tell zombies apart: the group is alive
    for stat in stats:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


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
        _signal_group(proc.pid, sig)
    began = time.monotonic()
    told = waiting is None
    while time.monotonic() - began < grace:
        _reap(proc.pid)
        if not proc.alive() and not _group_alive(proc.pid):
            return True
        if not told and time.monotonic() - began > 1:
            waiting()
            told = True
        time.sleep(0.05)
    _signal_group(proc.pid, signal.SIGKILL)
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
