"""The local target: simulators and the gateway as processes on loopback, tracked in a state file.

``deploy`` starts what is missing and leaves what already runs as asked (deploying twice is safe);
a different replica count or scheduler config changes only what must change. ``destroy`` stops
exactly the processes recorded in the state file, and only while their command line is still the
one the kit started. Nothing else is ever signalled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kit import paths
from kit.environments import Environment
from kit.errors import KitError
from kit.picker import load_picker_file
from kit.processes import Proc, healthy, port_in_use, spawn, stop

Say = Callable[[str], None]


def state_file(env: Environment) -> Path:
    return paths.state_dir() / f"local-{env.release_postfix}.json"


def _load(env: Environment) -> dict[str, Any]:
    f = state_file(env)
    if not f.exists():
        return {"gateway": None, "sims": [], "scheduler_config": None}
    data = json.loads(f.read_text())
    data["gateway"] = Proc(**data["gateway"]) if data.get("gateway") else None
    data["sims"] = [Proc(**p) for p in data.get("sims", [])]
    return data


def _save(env: Environment, state: dict[str, Any]) -> None:
    f = state_file(env)
    f.parent.mkdir(parents=True, exist_ok=True)
    out = dict(state, gateway=asdict(state["gateway"]) if state["gateway"] else None,
               sims=[asdict(p) for p in state["sims"]])
    f.write_text(json.dumps(out, indent=2))


def _sim_args(env: Environment, port: int) -> list[str]:
    local = env.local
    assert local is not None
    args = ["sim", "--host", local.host, "--port", str(port), "--model", env.model]
    for key, value in local.simulator.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def _check_port(host: str, port: int, role: str) -> None:
    if port_in_use(port, host):
        raise KitError(f"port {port} is in use by a process the kit did not start (wanted for the {role}); "
                       f"stop it or choose another port with --port")


def plan(env: Environment, *, replicas: int | None = None, scheduler_config: str | None = None,
         port: int | None = None) -> list[dict[str, Any]]:
    """The processes the local stack consists of: simulators first, then the gateway in front of them.

    The scheduler config is loaded here, so a bad file fails before anything starts.
    """
    if env.local is None:
        raise KitError(f"environment {env.name!r} has no local settings")
    local = env.local
    gw_port = port or local.gateway_port
    config_path = str(Path(scheduler_config).resolve()) if scheduler_config else env.scheduler_path()
    load_picker_file(config_path)
    sims = [{"role": "simulator", "url": f"http://{local.host}:{gw_port + 1 + i}", "port": gw_port + 1 + i,
             "args": _sim_args(env, gw_port + 1 + i)} for i in range(replicas or env.replicas)]
    gateway = {"role": "gateway", "url": f"http://{local.host}:{gw_port}", "port": gw_port,
               "config": config_path,
               "args": ["gateway", "--host", local.host, "--port", str(gw_port), "--model", env.model,
                        "--endpoints", ",".join(s["url"] for s in sims), "--config", config_path,
                        "--refresh-interval", str(local.refresh_interval)]}
    return [*sims, gateway]


def deploy(env: Environment, *, replicas: int | None = None, scheduler_config: str | None = None,
           port: int | None = None, say: Say = print) -> dict[str, Any]:
    """Bring the local stack to the planned shape and wait until every process is healthy."""
    *wanted, gw_plan = plan(env, replicas=replicas, scheduler_config=scheduler_config, port=port)
    for w in load_picker_file(gw_plan["config"]).warnings:
        say(f"warning: {gw_plan['config']}: {w}")
    host = env.local.host  # type: ignore[union-attr]
    logs = paths.state_dir() / "logs" / env.release_postfix
    state = _load(env)

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
        _check_port(host, w["port"], f"simulator {i}")
        proc = spawn(w["args"], w["url"], logs / f"sim-{w['port']}.log", role="simulator")
        sims.append(proc)
        state["sims"] = sims
        _save(env, state)
        say(f"started simulator {i} at {w['url']} (pid {proc.pid})")
    sims.sort(key=lambda p: p.url)

    gw: Proc | None = state["gateway"]
    if gw and gw.owned() and list(gw.args) == gw_plan["args"] and healthy(gw.url):
        say(f"gateway already running at {gw.url} (pid {gw.pid})")
    else:
        if gw and stop(gw):
            say(f"stopped gateway pid {gw.pid} to apply the new shape")
        _check_port(host, gw_plan["port"], "gateway")
        gw = spawn(gw_plan["args"], gw_plan["url"], logs / "gateway.log", role="gateway")
        say(f"started gateway at {gw.url} (pid {gw.pid}) with scheduler config {gw_plan['config']}")
    state.update(gateway=gw, sims=sims, scheduler_config=gw_plan["config"], model=env.model)
    _save(env, state)
    say(f"local stack ready: {gw.url} → {len(sims)} simulator(s); state in {state_file(env)}")
    return status(env)


def gateway_url(env: Environment) -> str | None:
    """The recorded gateway URL (state file only: no process or health checks)."""
    gw = _load(env)["gateway"]
    return gw.url if gw else None


def status(env: Environment) -> dict[str, Any]:
    """Every recorded process with pid, url, role, whether it runs and whether it answers."""
    state = _load(env)
    procs = ([state["gateway"]] if state["gateway"] else []) + state["sims"]
    rows = []
    for p in procs:
        running = p.owned()
        rows.append({"role": p.role, "pid": p.pid, "url": p.url, "running": running,
                     "healthy": running and healthy(p.url), "log": p.log})
    gateway_url = state["gateway"].url if state["gateway"] else None
    return {"environment": env.name, "release_postfix": env.release_postfix, "gateway": gateway_url,
            "scheduler_config": state.get("scheduler_config"), "processes": rows,
            "ready": bool(rows) and all(r["healthy"] for r in rows)}


def destroy(env: Environment, say: Say = print) -> list[int]:
    """Stop the processes deploy started (gateway first) and forget them; returns the stopped pids."""
    state = _load(env)
    stopped = []
    for p in ([state["gateway"]] if state["gateway"] else []) + state["sims"]:
        if stop(p):
            stopped.append(p.pid)
            say(f"stopped {p.role} pid {p.pid} ({p.url})")
        else:
            say(f"{p.role} pid {p.pid} ({p.url}) was not running; nothing to stop")
    f = state_file(env)
    if f.exists():
        f.unlink()
    if not stopped and not state["sims"] and not state["gateway"]:
        say(f"nothing deployed for {env.name}/{env.release_postfix}")
    return stopped

