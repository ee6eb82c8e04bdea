"""What a notebook works with: validated parameters, and the same verbs on the local stack or a cluster.

``kit.session(environment="local", ...)`` checks every parameter (a typo fails loudly, which papermill
itself does not), loads the environment, and returns a ``Session`` whose methods deploy, report, reach
the gateway, read every model server's metrics and clean up, whatever the target.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kit import local, paths
from kit.environments import Environment, available, load_environment
from kit.errors import ConfigError, UnknownChoiceError
from kit.processes import port_in_use
from kit.vllm_metrics import EndpointMetrics, parse_vllm_metrics
from kit.workloads import endpoint_urls, scrape

Say = Callable[[str], None]


def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class Session:
    env: Environment
    kubeconfig: str | None = None
    context: str | None = None
    _cluster: Any = field(default=None, repr=False)

    @property
    def is_local(self) -> bool:
        return self.env.target == "local"

    @property
    def cluster(self):
        if self._cluster is None:
            from kit.cluster import Cluster

            self._cluster = Cluster(kubeconfig=self.kubeconfig, context=self.context)
        return self._cluster

    # -------------------------------------------------------------- lifecycle
    def deploy(self, scheduler_config: str | None = None, say: Say = print) -> dict[str, Any]:
        """Deploy (idempotent); ``scheduler_config`` may be a profile name from templates/scheduler."""
        cfg = profile_path(scheduler_config) if scheduler_config else None
        if self.is_local:
            return local.deploy(self.env, scheduler_config=cfg, say=say)
        from kit import cluster

        return cluster.deploy(self.env, self.cluster, scheduler_config=cfg, say=say)

    def status(self) -> dict[str, Any]:
        if self.is_local:
            return local.status(self.env)
        from kit import cluster

        return cluster.status(self.env, self.cluster)

    def ensure(self, say: Say = print) -> dict[str, Any]:
        """Deploy only if the stack is not already up (so each notebook can run on its own)."""
        st = self.status()
        if st["ready"]:
            say(f"stack {self.env.release_postfix} is up ({self.env.name})")
            return st
        return self.deploy(say=say)

    def destroy(self, say: Say = print) -> list:
        if self.is_local:
            return local.destroy(self.env, say=say)
        from kit import cluster

        return cluster.destroy(self.env, self.cluster, say=say)

    def check(self) -> list[str]:
        """What is missing before this environment can be deployed, each with its fix."""
        if self.is_local:
            ours = {p["url"] for p in local.status(self.env)["processes"] if p["running"]}
            return [f"port {p['port']} (for the {p['role']}) is in use by a process the kit did not start: "
                    "stop it, or set local.gateway_port" for p in local.plan(self.env)
                    if port_in_use(p["port"]) and p["url"] not in ours]
        from kit import cluster

        return cluster.prerequisites(self.env, self.cluster)

    # --------------------------------------------------------------- reaching
    @contextlib.contextmanager
    def gateway(self) -> Iterator[str]:
        """The gateway's URL while the ``with`` block runs (a port-forward on a cluster if needed)."""
        if self.is_local:
            yield (local.gateway_url(self.env)
                   or f"http://{self.env.local.host}:{self.env.local.gateway_port}")  # type: ignore[union-attr]
            return
        from kit import cluster

        with cluster.gateway_url(self.env, self.cluster, self.kubeconfig, self.context) as url:
            yield url

    def metrics(self) -> dict[str, EndpointMetrics]:
        """Every model server's metrics, keyed by endpoint (local) or pod (cluster) name."""
        if self.is_local:
            gw = local.gateway_url(self.env)
            return scrape(endpoint_urls(gw)) if gw else {}
        from kit import cluster

        return {name: parse_vllm_metrics(text) for name, text in cluster.pod_metrics(self.env, self.cluster).items()}

    def reset_caches(self) -> bool:
        """Empty every simulator's prefix cache so an experiment starts cold (local only; vLLM on a
        cluster exposes no such endpoint outside development mode)."""
        if not self.is_local:
            return False
        for p in self.status()["processes"]:
            if p["role"] == "simulator":
                urllib.request.urlopen(urllib.request.Request(p["url"] + "/reset_prefix_cache", method="POST"))
        return True

    def decision(self, request_id: str) -> dict[str, Any] | None:
        """Why the picker chose an endpoint for one request (the kit's gateway keeps recent decisions)."""
        if not self.is_local:
            return None
        try:
            return _get_json(f"{local.gateway_url(self.env)}/decisions/{request_id}")
        except OSError:
            return None


def plan(s: Session, profile: str | None = None) -> list[dict[str, Any]]:
    """What deploy will create: the processes (local) or the validated objects (cluster)."""
    cfg = profile_path(profile) if profile else None
    if s.is_local:
        return [{"role": p["role"], "url": p["url"], "command": "kit " + " ".join(p["args"][:1] + p["args"][3:7])}
                for p in local.plan(s.env, scheduler_config=cfg)]
    from kit.errors import NotReadyError
    from kit.render import RELEASE, render
    from kit.validate import validate_objects

    rendered = render(s.env, cfg)
    problems, notes = validate_objects(rendered.objects, s.cluster.crd_schemas())
    if problems:
        raise NotReadyError(problems, "the rendered manifests are not valid")
    for n in notes:
        print(f"note: {n}")
    return [{"release": o["metadata"]["labels"][RELEASE], "kind": o["kind"], "name": o["metadata"]["name"]}
            for o in rendered.objects]


def status_rows(s: Session) -> list[dict[str, Any]]:
    """One row per running process (local) or deployed object (cluster), with readiness."""
    st = s.status()
    if s.is_local:
        return [{"role": p["role"], "pid": p["pid"], "url": p["url"], "healthy": p["healthy"]}
                for p in st["processes"] if p["running"]]
    return [{"release": o["release"], "object": f"{o['kind']}/{o['name']}", "ready": o["ready"], "detail": o["detail"]}
            for o in st["objects"]]


def check_profiles(text: str) -> tuple[str, ...]:
    """``"random,default-plugins"`` → the profile names, each checked against templates/scheduler."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for n in names:
        if n not in profiles():
            raise UnknownChoiceError("scheduler profile", n, profiles())
    if not names:
        raise ConfigError("profiles", ["give at least one scheduler profile"])
    return names


def profile_path(name_or_path: str) -> str:
    """A scheduler profile by name (``random``, ``default-plugins``...) or a path to a YAML file."""
    p = paths.SCHEDULER_CONFIGS / f"{name_or_path}.yaml"
    return str(p) if p.exists() else name_or_path


def profiles() -> list[str]:
    return sorted(f.stem for f in paths.SCHEDULER_CONFIGS.glob("*.yaml"))


def session(environment: str = "local", namespace: str | None = None, release_postfix: str | None = None,
            model: str | None = None, replicas: int | None = None, interactive: bool = False,
            kubeconfig: str | None = None, context: str | None = None) -> Session:
    """Validate notebook parameters and open a session; errors name the parameter and the valid choices."""
    if not isinstance(environment, str) or environment not in available():
        raise UnknownChoiceError("environment", str(environment), available())
    problems = []
    if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1):
        problems.append(f"replicas: expected a whole number of at least 1, got {replicas!r}")
    if not isinstance(interactive, bool):
        problems.append(f"interactive: expected True or False, got {interactive!r}")
    for name, value in (("namespace", namespace), ("release_postfix", release_postfix), ("model", model)):
        if value is not None and not isinstance(value, str):
            problems.append(f"{name}: expected text, got {value!r}")
    if problems:
        raise ConfigError("notebook parameters", problems)
    overrides: dict[str, Any] = {}
    if model:
        overrides["model"] = model
    if replicas:
        overrides["replicas"] = replicas
    env = load_environment(environment, namespace=namespace or None, postfix=release_postfix or None,
                           overrides=overrides)
    return Session(env, kubeconfig=kubeconfig, context=context)
