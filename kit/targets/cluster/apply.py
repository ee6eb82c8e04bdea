"""Apply a stack to the cluster: check what it needs, refuse what is not ours, apply in order, wait until ready.

* ``prerequisites``: API reachable, namespace, Gateway API and InferencePool CRDs (and the provider's
  and monitoring CRDs the render uses), the GatewayClass, the HF token secret; each problem says how
  to fix it.
* ``collisions``: objects that exist but belong to another stack or to nobody the kit knows.
* ``crd_schemas``: what custom resources are validated against: the cluster's own CRDs, and the kit's
  pinned ones for kinds the cluster does not define yet.
* ``deploy``: render and validate against those, check the above, then server-side
  apply in order with field manager ``kit`` (or a server-side dry run), and ``wait`` until ready the
  way ``kubectl rollout status`` and the Gateway API conditions judge it. A failure reports what was
  and was not applied.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client as k8s
from kubernetes.dynamic.exceptions import ApiException

from kit.errors import ApplyError, KitError, NotReadyError
from kit.manifests.environments import Environment
from kit.manifests.render import MANAGED_BY, NAMESPACE, STACK, Rendered, hf_secret, render
from kit.manifests.validate import CrdSchemas, checked_render
from kit.targets import Say
from kit.targets.cluster.client import CLUSTER_SCOPED, Cluster, ref

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


def crd_schemas(cluster: Cluster, release: str = "guide") -> CrdSchemas:
    """The cluster's own CRDs, with the kit's pinned ones (of ``release``) for the kinds the cluster does not
    define."""
    return cluster.crd_schemas().with_fallback(CrdSchemas.shipped(release))


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
        hint = CRD_HINTS.get(group, "install the CRDs that define them")
        if env.release == "llm-d-v0.10" and group == "inference.networking.k8s.io":
            hint = hint.replace("v1.4.0", "v1.6.0")  # today's guide installs GAIE's latest release
        problems.append(f"the cluster does not serve {', '.join(sorted(set(kinds)))} ({group}): {hint}")
    gw = env.gateway
    if gw is not None and not env.standalone and "gateway.networking.k8s.io" not in missing_groups:
        classes = cluster.list("gateway.networking.k8s.io/v1", "GatewayClass", None, "")
        if gw.class_name not in {c["metadata"]["name"] for c in classes}:
            problems.append(f"GatewayClass {gw.class_name} is missing: install the {gw.provider} gateway "
                            "control plane (see the guide's gateway-provider prerequisites)")
    if env.model_server and env.model_server.hf_token:
        secret_name = hf_secret(env)
        try:
            secret = core.read_namespaced_secret(secret_name, env.namespace)
            if "HF_TOKEN" not in (secret.data or {}):
                problems.append(f"secret {secret_name} has no key HF_TOKEN")
        except ApiException as err:
            if err.status == 404:
                problems.append(f"secret {secret_name} is missing: kubectl create secret generic {secret_name} "
                                f"--from-literal=HF_TOKEN=<your token> -n {env.namespace}")
    return problems


def collisions(env: Environment, cluster: Cluster, rendered: Rendered) -> list[str]:
    """Objects that exist already but are not this stack's: the kit will not take them over. A
    cluster-scoped object is this stack's only if it also carries this namespace's label."""
    out = []
    for obj in rendered.objects:
        live = cluster.get(obj)
        if live is None:
            continue
        labels = (live.get("metadata") or {}).get("labels") or {}
        owner_ns = labels.get(NAMESPACE)
        if labels.get(MANAGED_BY) != "kit":
            out.append(f"{ref(obj)} exists and was not created by the kit")
        elif labels.get(STACK) != env.release_postfix:
            out.append(f"{ref(obj)} exists and belongs to stack {labels.get(STACK)!r}; choose another --postfix")
        elif obj["kind"] in CLUSTER_SCOPED and owner_ns != env.namespace:
            where = f"namespace {owner_ns}" if owner_ns else "an unknown namespace"
            out.append(f"{ref(obj)} exists and belongs to stack {env.release_postfix!r} in {where}; "
                       "the kit will not take it over")
    return out


def condition(conds: list[dict[str, Any]] | None, kind: str) -> dict[str, Any] | None:
    return next((c for c in conds or [] if c.get("type") == kind), None)


def readiness(obj: dict[str, Any], standalone: bool = False) -> tuple[bool, str]:
    """(ready, why) for a live object, the way kubectl and the Gateway API judge it. In standalone mode no
    gateway accepts the InferencePool: the EPP beside its proxy watches it, so it is ready once it exists."""
    kind, st = obj["kind"], obj.get("status") or {}
    if standalone and kind == "InferencePool" and not st.get("parents"):
        return True, "exists (standalone: watched by the EPP, no gateway)"
    if kind == "Deployment":
        want = obj["spec"].get("replicas", 1)
        gen, seen = obj["metadata"].get("generation", 0), st.get("observedGeneration", 0)
        progress = condition(st.get("conditions"), "Progressing")
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
        c = condition(st.get("conditions"), "Programmed")
        if c and c.get("status") == "True":
            return True, "Programmed"
        return False, f"not Programmed ({c.get('reason') if c else 'no status yet'})"
    if kind in ("InferencePool", "HTTPRoute"):
        parents = st.get("parents") or []
        if not parents:
            return False, "no gateway has accepted it yet"
        for p in parents:
            acc = condition(p.get("conditions"), "Accepted")
            if not acc or acc.get("status") != "True":
                return False, f"not Accepted ({acc.get('reason') if acc else 'no condition'})"
            if kind == "HTTPRoute":
                res = condition(p.get("conditions"), "ResolvedRefs")
                if res and res.get("status") != "True":
                    return False, f"references not resolved ({res.get('reason')})"
        return True, "Accepted"
    return True, "exists"


def wait(cluster: Cluster, objs: list[dict[str, Any]], timeout: float = 900, poll: float = 2.0,
         say: Say = print, standalone: bool = False) -> None:
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
            ok, why = readiness(live, standalone) if live else (False, "not found")
            if not ok:
                if why.startswith("rollout failed"):
                    raise NotReadyError([f"{ref(obj)}: {why}"])
                waiting.append((obj, why))
            elif ref(obj) not in reported:
                reported.add(ref(obj))
                say(f"ready: {ref(obj)} ({why})")
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise NotReadyError([f"{ref(o)}: {why}" for o, why in waiting])
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(poll, interval * 1.5)


def deploy(env: Environment, cluster: Cluster, scheduler_config: str | None = None, *, dry_run: bool = False,
           timeout: float = 900, say: Say = print) -> list[str]:
    """Apply the stack (or check it server-side with ``dry_run``) and wait until it is ready; returns what
    was applied. Nothing is applied unless the manifests are valid and every prerequisite is met."""
    rendered, _ = checked_render(env, scheduler_config, crd_schemas(cluster, env.release))
    problems = prerequisites(env, cluster, rendered) + collisions(env, cluster, rendered)
    if problems:
        raise NotReadyError(problems, "nothing was applied")
    applied: list[str] = []
    for i, obj in enumerate(rendered.objects):
        try:
            cluster.apply(obj, dry_run=dry_run)
        except (ApiException, KitError) as err:
            reason = getattr(err, "reason", None) or str(err)
            body = getattr(err, "body", "") or ""
            raise ApplyError(applied, ref(obj), [ref(o) for o in rendered.objects[i + 1 :]],
                             f"{reason} {body}".strip()) from None
        applied.append(ref(obj))
        say(f"{'checked (server dry run)' if dry_run else 'applied'}: {ref(obj)}")
    if dry_run:
        say(f"dry run: the API server accepted all {len(applied)} objects; nothing was changed")
        return applied
    wait(cluster, rendered.objects, timeout=timeout, say=say, standalone=env.standalone)
    say(f"stack {env.release_postfix} ready in namespace {env.namespace}")
    return applied
