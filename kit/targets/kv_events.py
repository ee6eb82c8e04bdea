"""KV-cache event wiring for the local target, when the scheduler config indexes the servers' KV-cache events
(``precise-prefix-cache-scorer``; on release v0.10 also ``precise-prefix-cache-producer``).

The local stack copies the topology of upstream's precise guide (central mode): the picker binds one
ZMQ endpoint and every simulator connects to it and publishes its KV-cache events on the topic
``kv@<host:port>@<model>``, so the index names endpoints as the gateway does. On loopback the
endpoint is ``tcp://<host>:<gateway port + replicas + 1>``, the port after the simulators'. The
gateway reads a copy of the config in the state folder whose precise plugins bind that endpoint
(``discoverPods`` off: the endpoints share one host), everything else unchanged, its ``# release:`` line kept.

Real vLLM servers publish whatever the profile (``always``): a vLLM server takes a minute to start, so a
change of profile must restart the gateway only; with no precise scorer nothing binds the endpoint, and
ZMQ drops the events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

PRECISE = ("precise-prefix-cache-scorer", "precise-prefix-cache-producer")


@dataclass
class Wiring:
    """What the local target adds: per-simulator flags, the gateway's config file, the events port."""

    config: str
    events_port: int | None = None
    host: str = "127.0.0.1"
    model: str = ""

    def events(self, port: int) -> dict | None:
        """vLLM's ``--kv-events-config`` for the server on ``port`` (None: no events)."""
        if self.events_port is None:
            return None
        return {"enable_kv_cache_events": True, "publisher": "zmq",
                "endpoint": f"tcp://{self.host}:{self.events_port}", "topic": f"kv@{self.host}:{port}@{self.model}"}

    def sim_args(self, port: int) -> list[str]:
        events = self.events(port)
        return [] if events is None else ["--kv-events-config", json.dumps(events, separators=(",", ":"))]


def wire(config_path: str, host: str, gateway_port: int, replicas: int, model: str, out: Path,
         events_port: int | None = None, *, always: bool = False, release: str | None = None) -> Wiring:
    """The wiring for ``config_path``; a config without the precise scorer is used as it is (and, unless
    ``always``, gets no events port). The events bind ``events_port`` if given, else the port after the servers'.
    ``release``: the picker release the config was loaded with, declared in the copy's first line."""
    doc = yaml.safe_load(Path(config_path).read_text()) or {}
    scorers = [p for p in doc.get("plugins") or [] if isinstance(p, dict) and p.get("type") in PRECISE]
    port = events_port or gateway_port + replicas + 1
    if not scorers:
        return Wiring(config_path, port, host, model) if always else Wiring(config_path)
    for p in scorers:
        params = p.setdefault("parameters", None) or {}
        events = params.get("kvEventsConfig") or {}
        params["kvEventsConfig"] = {**events, "zmqEndpoint": f"tcp://{host}:{port}", "discoverPods": False}
        p["parameters"] = params
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text((f"# release: {release}\n" if release else "")
                   + f"# {config_path}, with the KV-event endpoint of the local stack (kit.targets.kv_events)\n"
                   + yaml.safe_dump(doc, sort_keys=False))
    return Wiring(str(out), port, host, model)
