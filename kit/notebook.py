"""The notebook API: validated parameters, and one target's verbs.

``kit.session(environment="local", ...)`` checks every parameter (a typo fails loudly, which papermill
itself does not), loads the environment, and returns a ``Session`` holding its target (the local
processes or a cluster). Its methods deploy, report, reach the gateway, read every model server's
metrics, run experiments and clean up; none of them asks which target it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kit import paths
from kit.errors import ConfigError, UnknownChoiceError
from kit.manifests.environments import Environment, available, load_environment
from kit.targets import Status, Target, target_for
from kit.vllm_metrics import EndpointMetrics

if TYPE_CHECKING:
    from kit.experiments.results import Comparison
    from kit.experiments.workloads import Load, SharedPrefix

Say = Callable[[str], None]


@dataclass
class Session:
    env: Environment
    target: Target

    # -------------------------------------------------------------- lifecycle
    def plan(self, profile: str | None = None) -> list[dict[str, Any]]:
        """What deploy will create: the processes (local) or the validated objects (cluster)."""
        return self.target.plan(paths.scheduler_profile(profile) if profile else None)

    def check(self) -> list[str]:
        """What is missing before this environment can be deployed, each with its fix."""
        return self.target.check()

    def deploy(self, scheduler_config: str | None = None, say: Say = print) -> Status:
        """Deploy (idempotent); ``scheduler_config`` may be a profile name from templates/scheduler."""
        return self.target.deploy(paths.scheduler_profile(scheduler_config) if scheduler_config else None, say=say)

    def ensure(self, say: Say = print) -> Status:
        """Deploy only if the stack is not already up (so each notebook can run on its own)."""
        st = self.target.status()
        if st.ready:
            say(f"stack {self.env.release_postfix} is up ({self.env.name})")
            return st
        return self.deploy(say=say)

    def status(self) -> Status:
        return self.target.status()

    def status_rows(self) -> list[dict[str, Any]]:
        """One row per process (local) or object (cluster), with its state, for a table."""
        return self.target.status().rows

    def destroy(self, say: Say = print) -> list[str]:
        return self.target.destroy(say=say)

    # --------------------------------------------------------------- reaching
    def gateway(self) -> AbstractContextManager[str]:
        """The gateway's URL while the ``with`` block runs (a port-forward on a cluster if needed)."""
        return self.target.gateway()

    def metrics(self) -> dict[str, EndpointMetrics]:
        """Every model server's metrics, keyed by endpoint (local) or pod (cluster) name."""
        return self.target.metrics()

    def reset_caches(self) -> bool:
        """Empty every model server's prefix cache so an experiment starts cold (where the target can)."""
        return self.target.reset_caches()

    def decision(self, request_id: str) -> dict[str, Any] | None:
        """Why the picker chose an endpoint for one request (the kit's gateway keeps recent decisions)."""
        return self.target.decision(request_id)

    # ------------------------------------------------------------- experiments
    def compare_profiles(self, workload: SharedPrefix, load: Load, profiles: tuple[str, ...] | None = None,
                         progress: bool = True) -> Comparison:
        """The same workload under each scheduler profile, caches reset between them (locally)."""
        from kit.experiments.compare import DEFAULT_PROFILES, compare_profiles

        return compare_profiles(self.target, workload, load, profiles or DEFAULT_PROFILES, progress)


def check_profiles(text: str) -> tuple[str, ...]:
    """``"random,default-plugins"`` → the profile names, each checked against templates/scheduler."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for n in names:
        if n not in paths.scheduler_profiles():
            raise UnknownChoiceError("scheduler profile", n, paths.scheduler_profiles())
    if not names:
        raise ConfigError("profiles", ["give at least one scheduler profile"])
    return names


def session(environment: str = "local", namespace: str | None = None, release_postfix: str | None = None,
            model: str | None = None, replicas: int | None = None, gateway_port: int = 0,
            kubeconfig: str | None = None, context: str | None = None) -> Session:
    """Validate notebook parameters and open a session; errors name the parameter and the valid choices.

    ``gateway_port`` (local environments only; 0 keeps the environment's, 8000) moves the gateway, and the
    simulators take the ports after it."""
    if not isinstance(environment, str) or environment not in available():
        raise UnknownChoiceError("environment", str(environment), available())
    problems = []
    if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1):
        problems.append(f"replicas: expected a whole number of at least 1, got {replicas!r}")
    if not isinstance(gateway_port, int) or isinstance(gateway_port, bool) or not 0 <= gateway_port <= 65535:
        problems.append(f"gateway_port: expected 0 (the environment's) or a port number, got {gateway_port!r}")
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
    if gateway_port:
        if env.local is None:
            raise ConfigError("notebook parameters", [f"gateway_port: {environment} is a cluster environment; the "
                                                      "gateway port applies to the local environment only"])
        env = env.model_copy(update={"local": env.local.model_copy(update={"gateway_port": gateway_port})})
    return Session(env, target_for(env, kubeconfig=kubeconfig, context=context))
