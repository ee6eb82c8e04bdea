"""The local target: simulators and the gateway as processes on loopback, tracked in a state file.

``deploy`` starts what is missing and leaves what already runs as asked (deploying twice is safe);
a different replica count or scheduler config changes only what must change. ``destroy`` stops
exactly the processes recorded in the state file, and only while their command line is still the
one the kit started. Nothing else is ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kit import paths
from kit.errors import KitError
from kit.manifests.environments import Environment
from kit.picker import load_picker_file
from kit.targets import Say, Status, kv_events
from kit.targets.processes import Proc, healthy, port_in_use, scrape, spawn, stop
from kit.vllm_metrics import EndpointMetrics


def _state(proc: dict[str, Any]) -> str:
    return "healthy" if proc["healthy"] else ("running, not answering" if proc["running"] else "not running")


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

    def _load(self) -> dict[str, Any]:
        f = self.state_file
        if not f.exists():
            return {"gateway": None, "sims": [], "scheduler_config": None}
        data = json.loads(f.read_text())
        data["gateway"] = Proc(**data["gateway"]) if data.get("gateway") else None
        data["sims"] = [Proc(**p) for p in data.get("sims", [])]
        return data

    def _save(self, state: dict[str, Any]) -> None:
        f = self.state_file
        f.parent.mkdir(parents=True, exist_ok=True)
        out = dict(state, gateway=asdict(state["gateway"]) if state["gateway"] else None,
                   sims=[asdict(p) for p in state["sims"]])
        f.write_text(json.dumps(out, indent=2))

    # ------------------------------------------------------------------------ plan
    def _sim_args(self, port: int) -> list[str]:
        args = ["sim", "--host", self.local.host, "--port", str(port), "--model", self.env.model]
        for key, value in self.local.simulator.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + key.replace("_", "-"))
            else:
                args += [flag, str(value)]
        return args

    def _processes(self, scheduler_config: str | None) -> list[dict[str, Any]]:
        """Simulators first, then the gateway in front of them. The scheduler config is loaded here, so a
        bad file fails before anything starts."""
        host, gw_port = self.local.host, self.local.gateway_port
        config_path = str(Path(scheduler_config).resolve()) if scheduler_config else self.env.scheduler_path()
        load_picker_file(config_path)
        # The precise scorer reads the simulators' KV-cache events: wire them (kit.targets.kv_events).
        wiring = kv_events.wire(config_path, host, gw_port, self.env.replicas, self.env.model,
                                paths.state_dir() / f"local-{self.env.release_postfix}-scheduler.yaml")
        config_path = wiring.config
        sims = [{"role": "simulator", "url": f"http://{host}:{gw_port + 1 + i}", "port": gw_port + 1 + i,
                 "args": self._sim_args(gw_port + 1 + i) + wiring.sim_args(gw_port + 1 + i)}
                for i in range(self.env.replicas)]
        gateway = {"role": "gateway", "url": f"http://{host}:{gw_port}", "port": gw_port, "config": config_path,
                   "args": ["gateway", "--host", host, "--port", str(gw_port), "--model", self.env.model,
                            "--endpoints", ",".join(s["url"] for s in sims), "--config", config_path,
                            "--refresh-interval", str(self.local.refresh_interval)]}
        return [*sims, gateway]

    def plan(self, scheduler_config: str | None = None) -> list[dict[str, Any]]:
        return [{"role": p["role"], "url": p["url"], "command": "kit " + " ".join(p["args"])}
                for p in self._processes(scheduler_config)]

    def check(self) -> list[str]:
        ours = {p["url"] for p in self.status().rows if p["running"]}
        return [f"port {p['port']} (for the {p['role']}) is in use by a process the kit did not start: "
                "stop it, or set local.gateway_port" for p in self._processes(None)
                if port_in_use(p["port"], self.local.host) and p["url"] not in ours]

    def _check_port(self, port: int, role: str) -> None:
        if port_in_use(port, self.local.host):
            raise KitError(f"port {port} is in use by a process the kit did not start (wanted for the {role}); "
                           f"stop it or choose another port with --port")

    # ---------------------------------------------------------------------- verbs
    def deploy(self, scheduler_config: str | None = None, *, dry_run: bool = False, timeout: float = 30,
               say: Say = print) -> Status:
        """Bring the local stack to the planned shape and wait until every process is healthy."""
        *wanted, gw_plan = self._processes(scheduler_config)
        if dry_run:
            for p in [*wanted, gw_plan]:
                say(f"would start {p['role']} at {p['url']}: kit {' '.join(p['args'])}")
            return self.status()
        for w in load_picker_file(gw_plan["config"]).warnings:
            say(f"warning: {gw_plan['config']}: {w}")
        logs = paths.state_dir() / "logs" / self.env.release_postfix
        state = self._load()

        wanted_args = [w["args"] for w in wanted]
        sims: list[Proc] = []
        for proc in state["sims"]:
            if proc.owned() and list(proc.args) in wanted_args and healthy(proc.url):
                sims.append(proc)
            elif stop(proc):
                say(f"stopped simulator pid {proc.pid} ({proc.url}): not part of the new shape")
        have = {tuple(p.args) for p in sims}
        for i, w in enumerate(wanted):
            if tuple(w["args"]) in have:
                continue
            self._check_port(w["port"], f"simulator {i}")
            proc = spawn(w["args"], w["url"], logs / f"sim-{w['port']}.log", role="simulator", wait=timeout)
            sims.append(proc)
            state["sims"] = sims
            self._save(state)
            say(f"started simulator {i} at {w['url']} (pid {proc.pid})")
        sims.sort(key=lambda p: p.url)

        gw: Proc | None = state["gateway"]
        if gw and gw.owned() and list(gw.args) == gw_plan["args"] and healthy(gw.url):
            say(f"gateway already running at {gw.url} (pid {gw.pid})")
        else:
            if gw and stop(gw):
                say(f"stopped gateway pid {gw.pid} to apply the new shape")
            self._check_port(gw_plan["port"], "gateway")
            gw = spawn(gw_plan["args"], gw_plan["url"], logs / "gateway.log", role="gateway", wait=timeout)
            say(f"started gateway at {gw.url} (pid {gw.pid}) with scheduler config {gw_plan['config']}")
        state.update(gateway=gw, sims=sims, scheduler_config=gw_plan["config"], model=self.env.model)
        self._save(state)
        say(f"local stack ready: {gw.url} → {len(sims)} simulator(s); state in {self.state_file}")
        return self.status()

    def status(self) -> Status:
        """Every recorded process with pid, url, role, whether it runs and whether it answers."""
        state = self._load()
        procs = ([state["gateway"]] if state["gateway"] else []) + state["sims"]
        rows = []
        for p in procs:
            running = p.owned()
            rows.append({"role": p.role, "pid": p.pid, "url": p.url, "running": running,
                         "healthy": running and healthy(p.url), "log": p.log})
        gateway_url = state["gateway"].url if state["gateway"] else None
        name = f"{self.env.name}/{self.env.release_postfix}"
        detail = {"environment": self.env.name, "release_postfix": self.env.release_postfix,
                  "gateway": gateway_url, "scheduler_config": state.get("scheduler_config"), "processes": rows,
                  "ready": bool(rows) and all(r["healthy"] for r in rows)}
        headline = (f"{name}: gateway {gateway_url}, scheduler config {state.get('scheduler_config')}" if rows
                    else f"nothing deployed for {name}")
        table = [{"role": r["role"], "pid": r["pid"], "url": r["url"], "state": _state(r)} for r in rows]
        return Status(detail["ready"], headline, table, detail)

    def destroy(self, say: Say = print) -> list[str]:
        """Stop the processes deploy started (gateway first) and forget them; returns what was stopped."""
        state = self._load()
        stopped = []
        for p in ([state["gateway"]] if state["gateway"] else []) + state["sims"]:
            if stop(p):
                stopped.append(f"{p.role} pid {p.pid} ({p.url})")
                say(f"stopped {p.role} pid {p.pid} ({p.url})")
            else:
                say(f"{p.role} pid {p.pid} ({p.url}) was not running; nothing to stop")
        if self.state_file.exists():
            self.state_file.unlink()
        if not stopped and not state["sims"] and not state["gateway"]:
            say(f"nothing deployed for {self.env.name}/{self.env.release_postfix}")
        return stopped

    # ------------------------------------------------------------------- reaching
    @contextlib.contextmanager
    def gateway(self) -> Iterator[str]:
        gw = self._load()["gateway"]
        yield gw.url if gw else f"http://{self.local.host}:{self.local.gateway_port}"

    def metrics(self) -> dict[str, EndpointMetrics]:
        return scrape(p.url for p in self._load()["sims"])

    def reset_caches(self) -> bool:
        for p in self._load()["sims"]:
            urllib.request.urlopen(urllib.request.Request(p.url + "/reset_prefix_cache", method="POST"), timeout=10)
        return True

    def decision(self, request_id: str) -> dict[str, Any] | None:
        gw = self._load()["gateway"]
        if gw is None:
            return None
        try:
            with urllib.request.urlopen(f"{gw.url}/decisions/{request_id}", timeout=10) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None
