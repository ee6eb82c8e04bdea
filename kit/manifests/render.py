"""Render an environment into the manifests the guide deploys: three releases and the HTTPRoute.

This module renders release ``guide``; ``kit.manifests.router`` renders ``llm-d-v0.10`` (today's
optimized-baseline guide), and ``render`` picks by the environment's release. Either way the scheduler
config is checked by the picker of the release the environment deploys, since the EPP will read it.

Templates live in ``templates/releases/*.yaml.j2``; this module computes names, labels and the
values the templates need, renders, parses, and orders the objects for apply. Every object carries
labels naming the stack (release postfix), its namespace and its release, which is how the cluster
target finds, reports and removes exactly what it created. Names stay within Kubernetes' limits: a
name that must be cut ends in a short hash of what it was cut from, and cluster-scoped names always
carry a hash of the namespace and postfix, so no two stacks share one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jinja2
import yaml

from kit import paths
from kit.errors import ConfigError, KitError
from kit.manifests.environments import Environment
from kit.manifests.objects import (
    EPP_PORT,
    HARDENED,
    HF_SECRET,
    KIND_ORDER,
    MANAGED_BY,
    MODEL_PORT,
    NAMESPACE,
    RELEASE,
    RELEASES,
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
from kit.picker import LoadedConfig, load_picker_config

VARIANT = {"cuda": "gpu", "rocm": "gpu", "xpu": "gpu", "tpu": "tpu", "cpu": "cpu", "sim": "cpu"}


# Re-exported: callers import the shared names from here as they always did.
__all__ = [
    "EPP_PORT", "HARDENED", "HF_SECRET", "KIND_ORDER", "MANAGED_BY", "MODEL_PORT", "NAMESPACE", "RELEASE",
    "RELEASES", "STACK", "WAIVERS", "Rendered", "check_scheduler_config", "fit", "hf_secret",
    "model_server_security", "names", "release_name", "releases", "render", "summary", "to_yaml", "write",
]


def releases(env: Environment) -> tuple[str, ...]:
    """The releases of ``env``'s track, in apply order."""
    return ("gateway", "router", "ms") if env.release == "llm-d-v0.10" else RELEASES


def check_scheduler_config(env: Environment, text: str, source: str) -> LoadedConfig:
    """Load ``text`` with the picker of the release ``env`` deploys; its ConfigError names the field path."""
    if env.release == "guide":
        return load_picker_config(text, source)  # the picker's default release, v0.7
    return load_picker_config(text, source, release=env.picker_release)


def names(env: Environment) -> dict[str, str]:
    """Object names: the guide's, except where a name must be unique across namespaces or fit a limit."""
    rn, ns = env.release_postfix, env.namespace
    ms = f"ms-{rn}-llm-d-modelservice"
    return {
        # Istio names the gateway's Service <gateway>-istio, which must be a DNS label (63 characters).
        "gateway": fit(f"infra-{rn}", "-inference-gateway", 57, (rn,)),
        "pool": f"gaie-{rn}",
        "epp": f"gaie-{rn}-epp",
        # Cluster-scoped: "gaie-<rn>-<ns>" alone is ambiguous ("a-b" + "c" = "a" + "b-c") and was cut at
        # 40 characters upstream, so it always carries a hash of (namespace, postfix).
        "epp_cluster_role": fit(f"gaie-{rn}-{ns}", "-epp", 63, (ns, rn), always=True),
        "metrics_secret": f"gaie-{rn}-metrics-reader-secret",
        "ms": ms,
        "decode": fit(ms, "-decode", 62, (rn,)),  # upstream cuts the stem at 55 characters
        "route": f"llm-d-{rn}",
    }


def _env() -> jinja2.Environment:
    j = jinja2.Environment(loader=jinja2.FileSystemLoader(paths.TEMPLATES / "releases"),
                           undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    j.filters["combine"] = lambda a, b: {**a, **b}
    j.filters["toyaml"] = lambda v: yaml.safe_dump(v, sort_keys=False)
    j.policies["json.dumps_kwargs"] = {"sort_keys": False}
    return j


def render(env: Environment, scheduler_config: str | None = None) -> Rendered:
    """All objects of the three releases and the HTTPRoute, in apply order."""
    if env.hardware is None or env.model_server is None or (env.gateway is None and not env.standalone):
        raise KitError(f"environment {env.name!r} runs processes on this machine; it has no manifests to render")
    config_path = Path(scheduler_config) if scheduler_config else Path(env.scheduler_path())
    try:
        plugins_config = config_path.read_text()
    except OSError as err:
        raise ConfigError(str(config_path), [f"cannot read the scheduler config: {err.strerror}"]) from None
    check_scheduler_config(env, plugins_config, str(config_path))  # an invalid plugin file fails here
    if env.release == "llm-d-v0.10":
        from kit.manifests.router import render_router

        return render_router(env, plugins_config, config_path)

    hw, ms, gw = env.hardware, env.model_server, env.gateway
    assert hw and ms and gw is not None
    rn, ns = env.release_postfix, env.namespace
    n = names(env)

    def labels(release: str) -> dict[str, str]:
        name = release_name(release, rn)
        return {MANAGED_BY: "kit", "app.kubernetes.io/instance": name, STACK: rn, NAMESPACE: ns, RELEASE: name}

    pod_labels = {"llm-d.ai/inference-serving": "true", "llm-d.ai/guide": "inference-scheduling",
                  "llm-d.ai/accelerator-variant": VARIANT[hw.backend], "llm-d.ai/accelerator-vendor": hw.vendor,
                  "llm-d.ai/model": _label_value(env.model.split("/")[-1]), "llm-d.ai/role": "decode", STACK: rn}
    pool_selector = {"llm-d.ai/inference-serving": "true", "llm-d.ai/guide": "inference-scheduling", STACK: rn}
    container_env = [("DP_SIZE", "1"), ("TP_SIZE", str(hw.tensor_parallel)), ("DP_SIZE_LOCAL", "1"),
                     ("HF_HOME", "/model-cache")] if ms.engine == "vllm" else []
    container_env += sorted(ms.env.items())
    lvl = gw.log_level
    istio_patch = yaml.safe_dump({"spec": {"template": {"spec": {"containers": [{
        "name": "istio-proxy",
        "args": ["proxy", "router", "--domain", "$(POD_NAMESPACE).svc.cluster.local", "--proxyLogLevel", lvl,
                 "--proxyComponentLogLevel", f"misc:{lvl}", "--log_output_level", f"default:{lvl}"],
        "resources": gw.resources}]}}}}, sort_keys=False)
    context = {
        "env": env, "ns": ns, "names": n, "labels": labels, "pod_labels": pod_labels,
        "pool_selector": pool_selector, "epp_selector": {"inferencepool": n["epp"]}, "model_port": MODEL_PORT,
        "epp_port": EPP_PORT, "plugins_config": plugins_config,
        "plugins_sha": hashlib.sha256(plugins_config.encode()).hexdigest()[:16], "hf_secret": HF_SECRET,
        "container_env": container_env, "resources": _resources(env), "istio_deployment_patch": istio_patch,
        "epp_security": HARDENED, "ms_security": model_server_security(env),
        "ms_annotations": {WAIVERS: ",".join(ms.security_waivers)} if ms.security_waivers else {},
    }
    j = _env()
    objects: list[dict[str, Any]] = []
    for template in ("infra", "gaie", "ms", "httproute"):
        text = j.get_template(f"{template}.yaml.j2").render(**context)
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    rank = {r: i for i, r in enumerate(release_name(r, rn) for r in RELEASES)}
    objects.sort(key=lambda o: (rank[o["metadata"]["labels"][RELEASE]], KIND_ORDER.index(o["kind"])))
    return Rendered(env, objects, plugins_config)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, width=120)


def write(rendered: Rendered, out_dir: str | Path) -> list[Path]:
    """One plain YAML file per release plus the HTTPRoute, ready for ``kubectl apply -f``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    route = release_name("route", rendered.env.release_postfix) if rendered.env.release == "guide" else None
    for release, objs in rendered.by_release().items():
        f = out / ("httproute.yaml" if release == route else f"{release}.yaml")
        f.write_text(to_yaml(objs))
        files.append(f)
    return files


def summary(rendered: Rendered) -> list[str]:
    """One line per object: kind/name (release)."""
    return [f"{o['kind']}/{o['metadata']['name']} ({o['metadata']['labels'][RELEASE]})" for o in rendered.objects]
