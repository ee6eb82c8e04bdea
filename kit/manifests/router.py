"""Today's llm-d: render release ``llm-d-v0.10`` (the optimized-baseline guide on llm-d-router v0.10.0).

What ``helm install <rn>`` of llm-d-router v0.10.0's ``llm-d-router-standalone`` or ``llm-d-router-gateway``
chart produces with the guide's values (``guides/recipes/router/base.values.yaml`` and
``guides/optimized-baseline/router/optimized-baseline.values.yaml``), and what
``kubectl apply -k guides/optimized-baseline/modelserver/<accelerator>/vllm`` applies; templates in
``templates/llm-d-v0.10/`` (the kit's own, compared with upstream's renders in
``tests/manifests/test_upstream_renders.py``). Three releases, labelled like the guide track's:

* ``<rn>``: the router chart. Standalone mode (the default): the EPP pod carries a proxy (Envoy, or
  agentgateway) listening on the EPP Service's ``http`` port; with Envoy the chart still creates an
  InferencePool and the EPP watches it, with agentgateway (``router.inferencePool.create=false``) the EPP
  discovers the model servers by label (``--endpoint-selector``). Gateway mode: the InferencePool, the
  provider's extras (Istio DestinationRule, GKE policies) and the HTTPRoute.
* ``gateway-<rn>`` (gateway mode): the Gateway the HTTPRoute attaches to.
* ``ms-<rn>``: the model servers.

Kit-only, as in the guide track and said in docs/how-to/deploy-llm-d-today.md: every name carries the
release postfix (upstream's proxy ConfigMap is a bare ``envoy``/``agentgateway``, its Gateway a shared
``llm-d-inference-gateway``), the pool and the EPP's endpoint selector also select the stack label,
containers are hardened, model servers get no service-account token, and the EPP ConfigMap holds only the
file the EPP reads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jinja2
import yaml

from kit import paths
from kit.manifests.environments import Environment, RouterSettings, merge
from kit.manifests.objects import (
    EPP_PORT,
    HARDENED,
    KIND_ORDER,
    MANAGED_BY,
    MODEL_PORT,
    NAMESPACE,
    RELEASE,
    STACK,
    WAIVERS,
    Rendered,
    _label_value,
    _resources,
    fit,
    hf_secret,
    model_server_security,
    release_name,
)

RELEASES = ("gateway", "router", "ms")
# namePrefix of the guide's model-server overlay, after the release: <rn>-<this>-vllm-
OVERLAY = {"cuda": "nvidia-gpu", "rocm": "amd", "xpu": "xpu", "tpu": "tpu-v6", "cpu": "cpu", "sim": "sim"}
VARIANT = {"cuda": "gpu", "rocm": "gpu", "xpu": "xpu", "tpu": "tpu", "cpu": "cpu", "sim": "cpu"}
ENVOY_ARGS = ["--service-node", "envoy-sidecar", "--log-level", "warn", "--concurrency", "8", "--drain-strategy",
              "immediate", "--drain-time-s", "60", "-c", "/etc/envoy/envoy.yaml"]  # the guide's base values


def names(env: Environment) -> dict[str, str]:
    """Object names: the chart's for helm release ``<rn>`` (the release postfix), made unique per stack."""
    rn, ns = env.release_postfix, env.namespace
    hw = env.hardware
    engine = env.model_server.engine if env.model_server else "vllm"
    prefix = f"{rn}-{OVERLAY[hw.backend] if hw else 'none'}-vllm-" if engine == "vllm" else f"{rn}-sim-"
    proxy = (env.router or RouterSettings()).proxy
    return {
        "epp": f"{rn}-epp",
        "pool": rn,
        "route": rn,
        "gateway": fit(rn, "-inference-gateway", 57, (rn,)),
        "proxy_config": f"{rn}-{proxy}",
        "epp_cluster_role": fit(f"{rn}-{ns}", "-epp", 63, (ns, rn), always=True),
        "metrics_secret": f"{rn}-epp-metrics-reader-secret",
        "ms_prefix": prefix,
        "decode": fit(prefix.rstrip("-"), "-decode", 63, (rn,)),
    }


def config_file(scheduler_config: str | Path) -> str:
    """The EPP ConfigMap key (``--config-file``) for a scheduler file: ``<stem>-plugins.yaml``, as the guide
    names its ``optimized-baseline-plugins.yaml``."""
    stem = Path(scheduler_config).stem
    return f"{stem}.yaml" if stem.endswith("plugins") else f"{stem}-plugins.yaml"


def _proxy(env: Environment, n: dict[str, str], fail_open: bool, j: jinja2.Environment) -> dict[str, Any]:
    """The standalone proxy sidecar: its container, its config volume and its ConfigMap entry."""
    r = env.router or RouterSettings()
    security = {**HARDENED}
    if r.proxy == "envoy":
        config = j.get_template("envoy.yaml.j2").render(proxy_port=r.proxy_port, epp_port=EPP_PORT,
                                                       fail_open=fail_open)
        container = {
            "name": "envoy-proxy", "image": r.envoy_image, "imagePullPolicy": "IfNotPresent", "command": ["envoy"],
            "args": ENVOY_ARGS,
            "env": [{"name": "NS_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"containerPort": r.proxy_port, "name": f"http-{r.proxy_port}"},
                      {"containerPort": 19001, "name": "metrics-19001"}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 19001, "scheme": "HTTP"}, "periodSeconds": 5,
                               "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 1},
            "resources": r.proxy_resources, "securityContext": security,
            "volumeMounts": [{"name": "config", "mountPath": "/etc/envoy", "readOnly": True}]}
        volume = {"name": "config", "configMap": {"name": n["proxy_config"],
                                                  "items": [{"key": "envoy.yaml", "path": "envoy.yaml"}]}}
        return {"container": container, "volume": volume, "config_key": "envoy.yaml", "config": config}
    backend = n["pool"]  # upstream: modelServers.matchLabels.app, else the release name (the guide sets no app)
    config = yaml.safe_dump({
        "config": {"statsAddr": "0.0.0.0:15020", "readinessAddr": "0.0.0.0:15021"},
        "binds": [{"port": r.service_port, "listeners": [{"name": "default", "protocol": "HTTP", "routes": [{
            "name": "standalone-epp", "matches": [{"path": {"pathPrefix": "/"}}],
            "backends": [{"service": {"name": f"{env.namespace}/{backend}", "port": MODEL_PORT}, "policies": {
                "inferenceRouting": {"endpointPicker": {"host": f"127.0.0.1:{EPP_PORT}"},
                                     "destinationMode": "passthrough"}}}]}]}]}],
        "services": [{"name": backend, "namespace": env.namespace, "hostname": backend, "vips": [],
                      "ports": {MODEL_PORT: MODEL_PORT}}],
    }, sort_keys=False)
    # agentgateway listens on the Service's port itself (80): binding it as a non-root user needs this one
    # capability, which the kit's hardening rules allow.
    security["capabilities"] = {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    ready = {"httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}, "successThreshold": 1}
    container = {
        "name": "agentgateway-proxy", "image": r.agentgateway_image, "imagePullPolicy": "IfNotPresent",
        "args": ["-f", "/config/config.yaml"],
        "ports": [{"containerPort": r.service_port, "name": "http"}, {"containerPort": 15020, "name": "metrics-15020"},
                  {"containerPort": 15021, "name": "readiness-15021"}],
        "readinessProbe": {**ready, "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 1},
        "startupProbe": {**ready, "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 60},
        "resources": r.proxy_resources, "securityContext": security,
        "volumeMounts": [{"name": "agentgateway-config-template", "mountPath": "/config", "readOnly": True}]}
    volume = {"name": "agentgateway-config-template", "configMap": {
        "name": n["proxy_config"], "items": [{"key": "config.yaml", "path": "config.yaml"}]}}
    return {"container": container, "volume": volume, "config_key": "config.yaml", "config": config}


def render_router(env: Environment, plugins_config: str, config_path: Path) -> Rendered:
    """All objects of release llm-d-v0.10 for ``env``, in apply order."""
    hw, ms = env.hardware, env.model_server
    assert hw is not None and ms is not None
    r = env.router or RouterSettings()
    rn, ns = env.release_postfix, env.namespace
    n = names(env)
    standalone = env.standalone
    pool = not (standalone and r.proxy == "agentgateway")  # agentgateway needs inferencePool.create=false

    def labels(release: str) -> dict[str, str]:
        name = release_name(release, rn)
        return {MANAGED_BY: "kit", "app.kubernetes.io/instance": name, STACK: rn, NAMESPACE: ns, RELEASE: name}

    chart_labels = {**labels("router"), "app.kubernetes.io/name": n["epp"]}
    mode = "llm-d-router-gateway" if pool else "llm-d-router-standalone"
    guide_labels = {"llm-d.ai/guide": r.guide, "llm-d.ai/model": _label_value(env.model.split("/")[-1]),
                    "llm-d.ai/accelerator-variant": VARIANT[hw.backend], "llm-d.ai/accelerator-vendor": hw.vendor}
    pod_labels = {**guide_labels, "llm-d.ai/role": "decode", STACK: rn}
    selector = {"llm-d.ai/guide": r.guide, STACK: rn}
    cfg = config_file(config_path)
    if pool:
        epp_args = ["--pool-name", n["pool"], "--pool-namespace", ns, "--pool-group", "inference.networking.k8s.io"]
    else:
        epp_args = ["--endpoint-selector", ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
                    "--endpoint-target-ports", str(MODEL_PORT)]
    flags = {"v": r.epp_verbosity, **({} if pool or r.proxy != "agentgateway" else {"secure-serving": "false"})}
    epp_args += ["--zap-encoder", "json", "--config-file", f"/config/{cfg}", "--grpc-health-port", "9003",
                 *(f"--{k}={v}" for k, v in sorted(flags.items())), "--tracing=false"]
    service_ports: list[dict[str, Any]] = [
        {"name": "grpc-ext-proc", "protocol": "TCP", "port": EPP_PORT, "appProtocol": "kubernetes.io/h2c"},
        {"name": "http-metrics", "protocol": "TCP", "port": 9090}]
    # The guide's values add the client port to the EPP Service in both modes (in gateway mode nothing listens).
    http = {"name": "http", "port": r.service_port, "protocol": "TCP"}
    service_ports.append(http if standalone and r.proxy == "agentgateway" else {**http, "targetPort": r.proxy_port})
    j = _templates()
    proxy = _proxy(env, n, fail_open=True, j=j) if standalone else None
    container_env = sorted(ms.env.items())
    claim = "intel-decode-claim"
    resources = merge(_resources(env), {"limits": hw.limits}) if hw.limits else _resources(env)
    if hw.dra_device_class:
        resources["claims"] = [{"name": claim}]
    context = {
        "env": env, "ns": ns, "names": n, "labels": labels, "chart_labels": chart_labels,
        "chart_selector": {"app.kubernetes.io/name": n["epp"]}, "mode_label": {"llm-d.ai/igw-mode": mode},
        "epp_selector": {mode: n["epp"]}, "pool": pool, "pool_selector": selector, "pod_labels": pod_labels,
        "guide_labels": guide_labels, "plugins_config": plugins_config, "config_file": cfg,
        "plugins_sha": hashlib.sha256(plugins_config.encode()).hexdigest()[:16], "epp_args": epp_args,
        "service_ports": service_ports, "proxy": proxy, "epp_port": EPP_PORT, "model_port": MODEL_PORT,
        "epp_security": HARDENED, "hf_secret": hf_secret(env), "container_env": container_env, "resources": resources,
        "ms_security": model_server_security(env), "claim_name": claim,
        "ms_annotations": {WAIVERS: ",".join(ms.security_waivers)} if ms.security_waivers else {},
    }
    objects: list[dict[str, Any]] = []
    for template in ("router", "modelserver") if standalone else ("gateway", "router", "modelserver"):
        for doc in yaml.safe_load_all(j.get_template(f"{template}.yaml.j2").render(**context)):
            if doc:
                objects.append(doc)
    rank = {release_name(rel, rn): i for i, rel in enumerate(RELEASES)}
    objects.sort(key=lambda o: (rank[o["metadata"]["labels"][RELEASE]], KIND_ORDER.index(o["kind"])))
    return Rendered(env, objects, plugins_config)


def _templates() -> jinja2.Environment:
    j = jinja2.Environment(loader=jinja2.FileSystemLoader(paths.TEMPLATES / "llm-d-v0.10"),
                           undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    j.filters["combine"] = lambda a, b: {**a, **b}
    j.policies["json.dumps_kwargs"] = {"sort_keys": False}
    return j
