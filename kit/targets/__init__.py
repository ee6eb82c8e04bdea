"""Where a stack runs. One protocol, two implementations, one factory.

* ``LocalTarget`` (``kit.targets.local``): simulators and the gateway as processes on loopback.
* ``ClusterTarget`` (``kit.targets.cluster``): the guide's manifests on the cluster a kubeconfig names.

``target_for(env)`` is the only code that asks which one an environment uses; the session, the CLI
and the notebooks hold a ``Target`` and call its verbs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from kit.manifests.environments import Environment
from kit.vllm_metrics import EndpointMetrics

Say = Callable[[str], None]


@dataclass
class Status:
    """What is deployed: ``rows`` (one per process or object, for tables), whether all of it is ready,
    a one-line ``headline``, and ``detail`` (everything, as ``kit status --json`` prints it)."""

    ready: bool
    headline: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    replicas: int | None = None  # model servers deployed (None: nothing is)

    @property
    def deployed(self) -> bool:
        return bool(self.rows)


class Target(Protocol):
    """The verbs every target offers. Each prints (through ``say``) what it did."""

    env: Environment

    def plan(self, scheduler_config: str | None = None) -> list[dict[str, Any]]:
        """What ``deploy`` will create (validated; nothing is changed)."""
        ...

    def check(self) -> list[str]:
        """What is missing before a deploy can work, each item with its fix."""
        ...

    def deploy(self, scheduler_config: str | None = None, *, dry_run: bool = False, timeout: float = 900,
               say: Say = print) -> Status:
        """Create or update the stack and wait until it is ready (deploying twice is safe)."""
        ...

    def status(self) -> Status: ...

    def destroy(self, say: Say = print) -> list[str]:
        """Remove exactly what ``deploy`` created; returns what was removed."""
        ...

    def gateway(self) -> AbstractContextManager[str]:
        """The gateway's URL while the ``with`` block runs."""
        ...

    def metrics(self) -> dict[str, EndpointMetrics]:
        """Every model server's metrics, by endpoint (local) or pod (cluster) name."""
        ...

    def reset_caches(self) -> bool:
        """Empty every model server's prefix cache; False where the target cannot."""
        ...

    def decision(self, request_id: str) -> dict[str, Any] | None:
        """Why the picker routed one request where it did, if the target keeps decisions."""
        ...


def target_for(env: Environment, *, kubeconfig: str | None = None, context: str | None = None) -> Target:
    """The target an environment names."""
    if env.target == "local":
        from kit.targets.local import LocalTarget

        return LocalTarget(env)
    from kit.targets.cluster import ClusterTarget

    return ClusterTarget(env, kubeconfig=kubeconfig, context=context)
