"""Today's llm-d as the kit renders it, field by field against what upstream's charts produce.

The fixtures (tests/fixtures/upstream_renders/) are the facts of ``helm template`` of llm-d-router v0.10.0's
charts (real helm v4.1.4) for the values each kit environment stands for; ``upstream_renders.py`` says
how they were made. Where the kit differs on purpose, the difference is listed here, with its reason;
anything else that differs fails.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from kit.manifests.environments import load_environment, parse_set
from kit.manifests.render import RELEASE, release_name, render
from kit.manifests.router import ENVOY_ARGS
from tests.manifests import upstream_renders as up

FIXTURES = up.FIXTURES / f"llm-d-router-{up.ROUTER_TAG}"
# Kit-only, on purpose (docs/how-to/deploy-llm-d-today.md): the chart's version label is its
# appVersion, 0.0.0 in the source tree (the published chart carries its release's); the kit does not
# invent one.
DROPPED_LABELS = ("app.kubernetes.io/version",)
# The chart's agentgateway preset is `latest-dev` at the tag ("release tooling rewrites this"); the kit
# pins the agentgateway release the guide's docs name.
IMAGES = {"cr.agentgateway.dev/agentgateway:latest-dev": "cr.agentgateway.dev/agentgateway:v1.1.0"}
# An upstream defect the kit does not copy: with the guide's base values (which set proxy.args for Envoy)
# and proxyType=agentgateway, the chart hands Envoy's flags to agentgateway (a user's proxy.args replace
# the preset's), which agentgateway does not understand; the kit keeps the agentgateway preset's args.
AGENTGATEWAY_ARGS = ["-f", "/config/config.yaml"]


def kit_facts(env_name: str, sets: list[str]) -> dict:
    env = load_environment(env_name, overrides=parse_set(sets))
    rendered = render(env, up.SCHEDULER)
    release = release_name("router", env.release_postfix)
    router = [o for o in rendered.objects if o["metadata"]["labels"][RELEASE] == release]
    return up.facts(router)


def expected(case: str) -> dict:
    return yaml.safe_load((FIXTURES / f"{case}.yaml").read_text())["objects"]


def differences(kit: dict, upstream: dict) -> list[str]:
    out = []
    if set(kit) != set(upstream):
        out.append(f"objects: kit only {sorted(set(kit) - set(upstream))}, upstream only "
                   f"{sorted(set(upstream) - set(kit))}")
    for ref in sorted(set(kit) & set(upstream)):
        k, u = kit[ref], dict(upstream[ref])
        labels = {key: v for key, v in u.pop("labels").items() if key not in DROPPED_LABELS}
        if not labels.items() <= k["labels"].items():
            out.append(f"{ref}: labels {labels} not all in the kit's {k['labels']}")
        if "files" in u:  # the chart also ships files the EPP does not read; the kit ships the one it reads
            missing = set(k["files"]) - set(u.pop("files"))
            if missing:
                out.append(f"{ref}: files {sorted(missing)} are not upstream's")
        u["containers"] = {name: dict(c) for name, c in (u.get("containers") or {}).items()} or None
        for name, c in (u["containers"] or {}).items():
            c["image"] = IMAGES.get(c.get("image"), c.get("image"))
            if name == "agentgateway-proxy" and c.get("args") == ENVOY_ARGS:
                c["args"] = AGENTGATEWAY_ARGS
        if u["containers"] is None:
            del u["containers"]
        for field, value in u.items():
            if k.get(field) != value:
                out.append(f"{ref}: {field}: kit {k.get(field)!r} != upstream {value!r}")
    return out


@pytest.mark.parametrize("case", sorted(up.CASES))
def test_the_router_release_matches_upstreams_chart(case):
    env_name, sets = up.CASES[case]
    assert differences(kit_facts(env_name, sets), expected(case)) == []


def test_a_changed_field_is_caught():
    env_name, sets = up.CASES["standalone-envoy"]
    kit = kit_facts(env_name, sets)
    kit["Deployment/optimized-baseline-epp"]["containers"]["epp"]["args"].remove("--v=2")
    kit["ConfigMap/optimized-baseline-envoy"]["envoy"]["listeners"][8081]["ext_proc"]["failure_mode_allow"] = False
    found = differences(kit, expected("standalone-envoy"))
    assert [d.split(":")[0] for d in found] == ["ConfigMap/optimized-baseline-envoy",
                                                "Deployment/optimized-baseline-epp"]


@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("KIT_LLM_D_ROUTER_SRC") and up.helm_binary()),
                    reason="needs KIT_LLM_D_ROUTER_SRC (an llm-d-router checkout) and helm (make helm)")
def test_the_fixtures_are_what_helm_renders_today():
    """The facts kept as fixtures are those the real helm produces from the pinned charts."""
    helm = up.helm_binary()
    assert helm
    with tempfile.TemporaryDirectory() as tmp:
        charts = up.chart_dir(os.environ["KIT_LLM_D_ROUTER_SRC"], Path(tmp))
        for case, (env_name, sets) in up.CASES.items():
            chart, values, env = up._values(env_name, sets)
            objects = up.helm_template(helm, charts, chart, env.release_postfix, env.namespace, values)
            assert up.facts(objects, up.renames(env)) == expected(case), case


MODEL_SERVERS = yaml.safe_load((up.FIXTURES / "modelservers.yaml").read_text())


def server_facts(env_name: str) -> dict:
    """The model-server Deployment of an environment, in the fixture's terms."""
    rendered = render(load_environment(env_name), up.SCHEDULER)
    [dep] = [o for o in rendered.objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-decode")]
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    probe = {k: [c[k]["httpGet"]["path"], c[k].get("initialDelaySeconds"), c[k]["periodSeconds"],
                 c[k]["timeoutSeconds"], c[k]["failureThreshold"]] for k in ("startupProbe", "livenessProbe",
                                                                             "readinessProbe")}
    out = {
        "name": dep["metadata"]["name"],
        "labels": {k: v for k, v in dep["spec"]["template"]["metadata"]["labels"].items()
                   if k in ("llm-d.ai/guide", "llm-d.ai/accelerator-variant", "llm-d.ai/accelerator-vendor")},
        "container": {
            "name": c["name"], "image": c["image"], "command": c.get("command"), "args": c["args"],
            "env": {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]},
            "ports": [{"name": p["name"], "containerPort": p["containerPort"]} for p in c["ports"]],
            "probes": probe, "resources": c["resources"],
            "mounts": {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}},
        "volumes": {v["name"]: v["emptyDir"] for v in pod.get("volumes", [])},
    }
    for key in ("terminationGracePeriodSeconds", "securityContext", "resourceClaims", "nodeSelector"):
        if key in pod:
            out[key] = pod[key]
    return out


@pytest.mark.parametrize("env_name", sorted(MODEL_SERVERS))
def test_the_model_servers_match_the_guides_overlays(env_name):
    assert server_facts(env_name) == MODEL_SERVERS[env_name]
