"""The local target: model servers and the gateway as processes on loopback, tracked in a state file.

The model servers are simulators (``kit sim``), or real ``vllm serve`` processes when the environment says
``local.model_servers: vllm`` (``kit.targets.vllm`` builds their command lines); the verbs are the same.

``deploy`` starts what is missing and leaves what already runs as asked (deploying twice is safe);
a different replica count or scheduler config changes only what must change, and a deploy that fails
stops what it started. ``destroy`` stops the gateway first (it stops accepting and lets open requests
finish for its drain grace, ``$KIT_DRAIN_GRACE``), then the model servers.

Each stack (release postfix) has one state file in the per-user state folder (``kit.paths.state_dir``),
so every directory, terminal and notebook kernel sees the same stack. The file is replaced atomically,
and a lock beside it lets one deploy or destroy change the stack at a time. Every process the kit starts
carries the stack's marker (``$KIT_STACK``: the state file's path), so ``destroy`` still finds the
stack's processes when the file is lost or corrupt. A process is signalled only while its command line
is the one the kit started.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from kit import paths
from kit.errors import KitError
from kit.http import drain_grace
from kit.manifests.environments import Environment
from kit.picker import load_picker_file
from kit.targets import Say, Status, kv_events
from kit.targets import vllm as real
from kit.targets.processes import Proc, marked, port_in_use, scrape, start, stop, wait_ready
from kit.vllm_metrics import EndpointMetrics

LOCK_WAIT = 120.0  # seconds ``destroy`` waits for another command on the same stack (``deploy``: its timeout)


@dataclass
class State:
    """What the state file records: the processes of one stack and how the gateway was configured."""

    gateway: Proc | None = None
    sims: list[Proc] = field(default_factory=list)
    scheduler_config: str | None = None
    model: str | None = None

    @property
    def procs(self) -> list[Proc]:
        return ([self.gateway] if self.gateway else []) + self.sims


STATE = TypeAdapter(State)


class UnreadableStateError(KitError):
    """The state file exists but is not a state (cut off, empty, wrong types, binary)."""

    def __init__(self, path: Path, reason: str, fix: str):
        self.path, self.reason = path, reason
        super().__init__(f"the state file {path} is unreadable ({reason}); {fix}")


# The fix for a taken port, wherever the user is.
MOVE_PORTS = ("move the stack to other ports: in a notebook, set gateway_port in the parameters cell; on the "
              "command line, --port P or --set local.gateway_port=P (the simulators take the ports after it)")


def _state(proc: dict[str, Any]) -> str:
    return "healthy" if proc["healthy"] else ("running, not answering" if proc["running"] else "not running")


def _port(proc: Proc) -> int | None:
    return urlsplit(proc.url).port


def _command(plan: dict[str, Any]) -> str:
    return ("vllm " if plan.get("program") == "vllm" else "kit ") + " ".join(plan["args"])


class LocalTarget:
    """One local stack, named by the environment's release postfix."""

    def __init__(self, env: Environment):
        if env.local is None:
            raise KitError(f"environment {env.name!r} has no local settings")
        self.env = env
        self.local = env.local

    # ------------------------------------------------------------------ state file
    @property
    def state_file(self) -> Path:
        return paths.state_dir() / f"local-{self.env.release_postfix}.json"

    @property
    def _stack(self) -> str:
        """The marker every process of this stack carries: the state file's path (one per user, folder, postfix)."""
        return str(self.state_file)

    @property
    def _name(self) -> str:
        return f"{self.env.name}/{self.env.release_postfix}"

    def _load(self) -> State:
        f = self.state_file
        try:
            return STATE.validate_json(f.read_bytes())
        except FileNotFoundError:
            return State()
        except OSError as err:
            reason = err.strerror or str(err)
        except ValidationError as err:
            e = err.errors(include_url=False)[0]
            where = ".".join(str(part) for part in e["loc"])
            reason = f"{where}: {e['msg']}" if where else e["msg"]
        raise UnreadableStateError(f, reason, f"`kit destroy -e {self.env.name} --postfix {self.env.release_postfix}` "
                                   "still stops this stack's processes (it finds them by their marker) and sets "
                                   "the file aside")

    def _save(self, state: State) -> None:
        """Replace the state file in one step (no reader ever sees half of it); no processes, no file."""
        f = self.state_file
        if not state.procs:
            f.unlink(missing_ok=True)
            return
        f.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
        tmp.write_bytes(STATE.dump_json(state, indent=2))
        os.replace(tmp, f)

    @contextlib.contextmanager
    def _locked(self, wait: float, say: Say) -> Iterator[None]:
        """Hold the stack's lock (a ``flock`` on the file beside the state file), waiting up to ``wait`` seconds."""
        lock = self.state_file.with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(lock, "a+") as fh:
            deadline = time.monotonic() + wait
            told = False
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = lock.read_text().strip() or "unknown"
                    busy = (f"another kit command is changing the local stack {self.env.release_postfix} "
                            f"(pid {holder})")
                    if time.monotonic() >= deadline:
                        raise KitError(f"{busy}; waited {wait:g} s for it: let it finish, or stop it, "
                                       "then try again") from None
                    if not told:
                        say(f"waiting for {busy} to finish")
                        told = True
                    time.sleep(0.1)
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            try:
                yield
            finally:
                fh.truncate(0)

    def _stop(self, proc: Proc, say: Say, why: str = "") -> bool:
        """Stop one of the stack's processes, saying so; a gateway's drain is announced while it lasts."""
        def waiting() -> None:
            say(f"stopping {proc.role} pid {proc.pid}: open requests have up to {proc.drain_grace:g} s to finish")

        if stop(proc, waiting=waiting):
            say(f"stopped {proc.role} pid {proc.pid} ({proc.url}){': ' + why if why else ''}")
            return True
        return False

    # ------------------------------------------------------------------------ plan
    @property
    def _release(self) -> dict[str, str]:
        """The picker release to load the scheduler config with (and to start the gateway with), when the
        environment follows another release than the guide's."""
        return {"release": self.env.picker_release} if self.env.release != "guide" else {}

    def _sim_args(self, port: int) -> list[str]:
        args = ["sim", "--host", self.local.host, "--port", str(port), "--model", self.env.model]
        for key, value in self.local.simulator.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + key.replace("_", "-"))
            else:
                args += [flag, str(value)]
        return args

    @property
    def _vllm(self) -> bool:
        return self.local.model_servers == "vllm"

    @property
    def _server_role(self) -> str:
        return "vllm" if self._vllm else "simulator"

    def _server(self, i: int, wiring: kv_events.Wiring) -> dict[str, Any]:
        """Model server ``i``: its port, url and command line (``program`` and interpreter for vLLM)."""
        port = self.local.gateway_port + 1 + i
        plan: dict[str, Any] = {"role": self._server_role, "url": f"http://{self.local.host}:{port}", "port": port}
        if self._vllm:
            plan.update(program="vllm", env=real.serve_env(self.local.vllm, i),
                        args=["serve", *real.serve_args(self.env, port, wiring.events(port), drain_grace())])
        else:
            plan.update(program="kit", env={}, args=self._sim_args(port) + wiring.sim_args(port))
        return plan

    def _processes(self, scheduler_config: str | None) -> list[dict[str, Any]]:
        """Model servers first, then the gateway in front of them. The scheduler config is loaded here, so a
        bad file fails before anything starts."""
        host, gw_port = self.local.host, self.local.gateway_port
        config_path = str(Path(scheduler_config).resolve()) if scheduler_config else self.env.scheduler_path()
        loaded = load_picker_file(config_path, **self._release)
        # The precise scorer reads the servers' KV-cache events: wire them (kit.targets.kv_events).
        wiring = kv_events.wire(config_path, host, gw_port, self.env.replicas, self.env.model,
                                paths.state_dir() / f"local-{self.env.release_postfix}-scheduler.yaml",
                                always=self._vllm, release=loaded.release)
        config_path = wiring.config
        sims = [self._server(i, wiring) for i in range(self.env.replicas)]
        gateway = {"role": "gateway", "url": f"http://{host}:{gw_port}", "port": gw_port, "config": config_path,
                   "args": ["gateway", "--host", host, "--port", str(gw_port), "--model", self.env.model,
                            "--endpoints", ",".join(s["url"] for s in sims), "--config", config_path,
                            "--refresh-interval", str(self.local.refresh_interval)]
                   + (["--picker-replicas", str(self.local.picker_replicas)] if self.local.picker_replicas > 1 else [])
                   + (["--release", self.env.picker_release] if self._release else [])}
        return [*sims, gateway]

    def plan(self, scheduler_config: str | None = None) -> list[dict[str, Any]]:
        return [{"role": p["role"], "url": p["url"], "command": _command(p)} for p in self._processes(scheduler_config)]

    def check(self) -> list[str]:
        try:
            ours = {p["url"] for p in self.status().detail["processes"] if p["running"]}
        except UnreadableStateError as err:
            return [str(err)]
        problems = []
        if self._vllm:
            try:
                real.python(self.local.vllm)
            except KitError as err:
                problems.append(str(err))
        return problems + [
            f"port {p['port']} (for the {p['role']}) is in use by a process the kit did not start: stop it, "
            f"or {MOVE_PORTS}" for p in self._processes(None)
            if port_in_use(p["port"], self.local.host) and p["url"] not in ours]

    def _check_ports(self, needed: list[tuple[int, str]], state: State) -> None:
        """Every port a new process needs is free, or held by one of this stack's processes (stopped first)."""
        ours = {_port(p) for p in state.procs if p.owned()}
        for port, role in needed:
            if port not in ours and port_in_use(port, self.local.host):
                raise KitError(f"port {port} is in use by a process the kit did not start (wanted for the {role}); "
                               f"stop it, or {MOVE_PORTS}")

    # ---------------------------------------------------------------------- verbs
    def deploy(self, scheduler_config: str | None = None, *, dry_run: bool = False, timeout: float = 30,
               say: Say = print) -> Status:
        """Bring the local stack to the planned shape and wait until every process is healthy.

        Waits up to ``timeout`` for another deploy or destroy of the stack to finish first. If it fails, the
        processes it started are stopped again and the state records what still runs.
        """
        *wanted, gw_plan = self._processes(scheduler_config)
        if dry_run:
            for p in [*wanted, gw_plan]:
                say(f"would start {p['role']} at {p['url']}: {_command(p)}")
            return self.status()
        drain_grace()  # a bad $KIT_DRAIN_GRACE fails before anything starts
        if self._vllm:
            real.ensure_model(self.local.vllm, say)  # the tiny model is built once, before any server starts
        for w in load_picker_file(gw_plan["config"], **self._release).warnings:
            say(f"warning: {gw_plan['config']}: {w}")
        with self._locked(timeout, say):
            state = self._load()
            started: list[Proc] = []
            try:
                self._reshape(state, wanted, gw_plan, timeout, started, say)
            except BaseException:
                self._roll_back(state, started, say)
                raise
        what = "vLLM server(s)" if self._vllm else "simulator(s)"
        say(f"local stack ready: {gw_plan['url']} → {len(wanted)} {what}; state in {self.state_file}")
        return self.status()

    def _reshape(self, state: State, wanted: list[dict[str, Any]], gw_plan: dict[str, Any], timeout: float,
                 started: list[Proc], say: Say) -> None:
        """Stop what is not in the plan, start what is missing (recording each in ``started``), save as it goes."""
        logs = paths.state_dir() / "logs" / self.env.release_postfix
        recorded = {p.pid for p in state.procs}
        for p in marked(self._stack):
            if p.pid not in recorded:  # a deploy killed before it could record it
                self._stop(p, say, "this stack's, but missing from its state file")

        def answers(p: Proc) -> bool:  # generous: restarting a busy server that is fine would lose its cache
            return p.healthy(timeout=5)

        wanted_args = [(w["args"], w["env"]) for w in wanted]  # a server runs as planned: arguments and environment
        keep = [p for p in state.sims if p.owned() and (list(p.args), p.env) in wanted_args and answers(p)]
        gw = state.gateway
        keep_gw = gw is not None and gw.owned() and list(gw.args) == gw_plan["args"] and answers(gw)
        have = {tuple(p.args) for p in keep}  # a port's server has one command line
        missing = [(i, w) for i, w in enumerate(wanted) if tuple(w["args"]) not in have]
        self._check_ports([(w["port"], f"{w['role']} {i}") for i, w in missing]
                          + ([] if keep_gw else [(gw_plan["port"], "gateway")]), state)

        for p in state.sims:
            if p not in keep:
                self._stop(p, say, "not part of the new shape")
        state.sims = list(keep)
        self._save(state)
        self._start_servers(missing, logs, timeout, state, started, say)
        state.sims.sort(key=lambda p: _port(p) or 0)

        if keep_gw:
            say(f"gateway already running at {gw.url} (pid {gw.pid})")
        else:
            if gw is not None:
                self._stop(gw, say, "to apply the new shape")
                state.gateway = None
                self._save(state)
            launched = start(gw_plan["args"], gw_plan["url"], logs / "gateway.log", role="gateway", stack=self._stack)
            started.append(launched.proc)
            gw = wait_ready([launched], timeout, stop_on_failure=False)[0]
            state.gateway = gw
            say(f"started gateway at {gw.url} (pid {gw.pid}) with scheduler config {gw_plan['config']}")
        state.scheduler_config, state.model = gw_plan["config"], self.env.model
        self._save(state)

    def _start_servers(self, missing: list[tuple[int, dict[str, Any]]], logs: Path, timeout: float, state: State,
                       started: list[Proc], say: Say) -> None:
        """Start the missing model servers together, record them, and wait until all answer (vLLM: with a
        progress bar; each may take its ``startup_timeout``)."""
        if not missing:
            return
        python = real.python(self.local.vllm) if self._vllm else None
        launched = []
        for i, w in missing:
            name = "vllm" if self._vllm else "sim"
            s = start(w["args"], w["url"], logs / f"{name}-{w['port']}.log", role=w["role"], stack=self._stack,
                      program=w["program"], python=python, env=w["env"])
            launched.append(s)
            started.append(s.proc)
            state.sims.append(s.proc)
            self._save(state)  # recorded before it answers: a deploy killed now still finds it
            say(f"started {w['role']} {i} at {w['url']} (pid {s.proc.pid}, log {s.log})")
        # On failure the roll-back stops them (they are in ``started``), saying so.
        if self._vllm:
            progress = real.StartupProgress(launched)
            try:
                wait_ready(launched, max(timeout, self.local.vllm.startup_timeout), progress, stop_on_failure=False)
            finally:
                progress.close()
        else:
            wait_ready(launched, timeout, stop_on_failure=False)
        say(f"{len(launched)} {self._server_role} server(s) answering")

    def _roll_back(self, state: State, started: list[Proc], say: Say) -> None:
        """Stop what a failed deploy started (nothing else) and record what still runs."""
        for p in reversed(started):
            self._stop(p, say, "the deploy failed, so what it started is stopped again")
        state.sims = [p for p in state.sims if p not in started]
        if state.gateway in started:
            state.gateway = None
        self._save(state)

    def status(self) -> Status:
        """Every recorded process with pid, url, role, whether it runs and whether it answers (this very
        process: its per-process token). Ready means a healthy gateway in front of healthy model servers."""
        state = self._load()
        rows = []
        for p in state.procs:
            running = p.owned()
            rows.append({"role": p.role, "pid": p.pid, "url": p.url, "running": running,
                         "healthy": running and p.healthy(), "log": p.log})
        gateway_url = state.gateway.url if state.gateway else None
        ready = bool(state.gateway and state.sims) and all(r["healthy"] for r in rows)
        detail = {"environment": self.env.name, "release_postfix": self.env.release_postfix,
                  "gateway": gateway_url, "scheduler_config": state.scheduler_config, "processes": rows,
                  "state_file": str(self.state_file), "ready": ready}
        if not rows:
            headline = f"nothing deployed for {self._name}"
        elif gateway_url is None:
            headline = f"{self._name}: no gateway (a deploy did not finish): kit deploy -e {self.env.name} starts it"
        else:
            headline = f"{self._name}: gateway {gateway_url}, scheduler config {state.scheduler_config}"
        table = [{"role": r["role"], "pid": r["pid"], "url": r["url"], "state": _state(r)} for r in rows]
        return Status(ready, headline, table, detail, replicas=len(state.sims) if rows else None)

    def destroy(self, say: Say = print) -> list[str]:
        """Stop the stack's processes, the gateway first, and forget them; returns what was stopped.

        Stops what the state file records and any process carrying the stack's marker; with an unreadable
        state file, the marked ones alone, and the file is moved aside (``.corrupt``).
        """
        with self._locked(LOCK_WAIT, say):
            try:
                state = self._load()
            except UnreadableStateError as err:
                say(f"the state file {err.path} is unreadable ({err.reason}); looking for this stack's processes "
                    "by their marker")
                state = None
            recorded = state.procs if state else []
            found = [p for p in marked(self._stack) if p.pid not in {r.pid for r in recorded}]
            stopped = []
            for p in sorted([*recorded, *found], key=lambda p: p.role != "gateway"):
                if self._stop(p, say):
                    stopped.append(f"{p.role} pid {p.pid} ({p.url})")
                elif p in recorded:
                    say(f"{p.role} pid {p.pid} ({p.url}) was not running; nothing to stop")
            if state is None:
                aside = self.state_file.with_name(self.state_file.name + ".corrupt")
                os.replace(self.state_file, aside)
                if not stopped:
                    say("no process of this stack is running")
                say(f"moved the unreadable state file to {aside}")
            else:
                self.state_file.unlink(missing_ok=True)
                if not recorded and not stopped:
                    say(f"nothing deployed for {self._name}")
        return stopped

    # ------------------------------------------------------------------- reaching
    @contextlib.contextmanager
    def gateway(self) -> Iterator[str]:
        gw = self._load().gateway
        yield gw.url if gw else f"http://{self.local.host}:{self.local.gateway_port}"

    def metrics(self) -> dict[str, EndpointMetrics]:
        return scrape(p.url for p in self._load().sims)

    def reset_caches(self) -> bool:
        """Empty every server's prefix cache; False if one refused (vLLM refuses while requests run)."""
        ok = True
        for p in self._load().sims:
            req = urllib.request.Request(p.url + "/reset_prefix_cache", method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read()
            with contextlib.suppress(ValueError, AttributeError):  # the simulator's older answers had no body
                ok = ok and json.loads(body or b"{}").get("success", True) is not False
        return ok

    def decision(self, request_id: str) -> dict[str, Any] | None:
        gw = self._load().gateway
        if gw is None:
            return None
        try:
            with urllib.request.urlopen(f"{gw.url}/decisions/{request_id}", timeout=10) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None
