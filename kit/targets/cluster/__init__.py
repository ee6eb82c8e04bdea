"""The cluster target: the guide's releases on the Kubernetes cluster a kubeconfig points to.

Split by job: ``client`` (the connection, discovery, typed verbs), ``apply`` (prerequisites, ordered
server-side apply, readiness waits) and ``inventory`` (status, destroy, reaching the gateway and pods).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kit.manifests.environments import Environment
from kit.manifests.render import RELEASE
from kit.manifests.validate import CrdSchemas, checked_render
from kit.targets import Say, Status
from kit.targets.cluster import apply, inventory
from kit.targets.cluster.client import Cluster
from kit.vllm_metrics import EndpointMetrics, parse_vllm_metrics


class ClusterTarget:
    """One stack (namespace + release postfix) on one cluster; connects on first use."""

    def __init__(self, env: Environment, *, kubeconfig: str | None = None, context: str | None = None,
                 cluster: Cluster | None = None):
        self.env = env
        self.kubeconfig, self.context = kubeconfig, context
        self._cluster = cluster

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster(kubeconfig=self.kubeconfig, context=self.context)
        return self._cluster

    def crd_schemas(self) -> CrdSchemas:
        return apply.crd_schemas(self.cluster, self.env.release)

    def plan(self, scheduler_config: str | None = None) -> list[dict[str, Any]]:
        rendered, notes = checked_render(self.env, scheduler_config, self.crd_schemas())
        for n in notes:
            print(f"note: {n}")
        return [{"release": o["metadata"]["labels"][RELEASE], "kind": o["kind"], "name": o["metadata"]["name"]}
                for o in rendered.objects]

    def check(self) -> list[str]:
        return apply.prerequisites(self.env, self.cluster)

    def deploy(self, scheduler_config: str | None = None, *, dry_run: bool = False, timeout: float = 900,
               say: Say = print) -> Status:
        applied = apply.deploy(self.env, self.cluster, scheduler_config, dry_run=dry_run, timeout=timeout, say=say)
        if dry_run:
            return Status(False, f"dry run: {len(applied)} objects accepted, nothing changed",
                          [{"object": o} for o in applied], {"dry_run": True, "objects": applied})
        return self.status()

    def status(self) -> Status:
        st = inventory.status(self.env, self.cluster)
        rows = [{"release": o["release"], "object": f"{o['kind']}/{o['name']}", "ready": o["ready"],
                 "detail": o["detail"]} for o in st["objects"]]
        rows += [{"release": "", "object": f"Pod/{p['name']}", "ready": p["ready"], "detail": p["phase"]}
                 for p in st["pods"]]
        where = f"stack {self.env.release_postfix} in namespace {self.env.namespace}"
        if not st["objects"]:
            return Status(False, f"nothing of {where}", [], st)
        releases = ", ".join(f"{r['release']} ({r['objects']} objects, {'ready' if r['ready'] else 'not ready'})"
                             for r in st["releases"])
        servers = len([p for p in st["pods"] if p["role"] == "model-server"])
        return Status(st["ready"], f"{where}: {releases}", rows, st, replicas=servers)

    def destroy(self, say: Say = print) -> list[str]:
        return inventory.destroy(self.env, self.cluster, say=say)

    @contextmanager
    def gateway(self) -> Iterator[str]:
        with inventory.gateway_url(self.env, self.cluster) as url:
            yield url

    def metrics(self) -> dict[str, EndpointMetrics]:
        return {name: parse_vllm_metrics(text) for name, text in inventory.pod_metrics(self.env, self.cluster).items()}

    def reset_caches(self) -> bool:
        return False  # vLLM serves /reset_prefix_cache only in development mode

    def decision(self, request_id: str) -> dict[str, Any] | None:
        return None  # the upstream EPP logs its decisions instead of serving them
