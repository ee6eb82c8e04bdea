"""Today's llm-d (release llm-d-v0.10): every environment renders valid objects offline, in the mode it
names, and the release is checked where a user could mix the two tracks up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kit.errors import ConfigError
from kit.manifests.environments import available, load_environment, parse_set, releases
from kit.manifests.render import render, write
from kit.manifests.router import config_file
from kit.manifests.validate import CrdSchemas, validate, validate_objects

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "templates/scheduler/default-plugins.yaml"  # accepted by the picker of either release
TODAY = sorted(n for n, r in releases().items() if r == "llm-d-v0.10" and load_environment(n).target == "cluster")
GATEWAY_API = {"Gateway", "HTTPRoute", "GatewayClass", "DestinationRule", "HealthCheckPolicy", "GCPBackendPolicy"}


def objs(name: str, *sets: str) -> dict[tuple[str, str], dict]:
    r = render(load_environment(name, overrides=parse_set(list(sets))), CONFIG)
    return {(o["kind"], o["metadata"]["name"]): o for o in r.objects}


def test_todays_family():
    assert TODAY == ["optimized-baseline", "optimized-baseline-agentgateway", "optimized-baseline-cpu",
                     "optimized-baseline-gke", "optimized-baseline-istio", "optimized-baseline-sim",
                     "optimized-baseline-tpu", "optimized-baseline-xpu"]
    assert releases()["local-llm-d"] == "llm-d-v0.10" and "_optimized-baseline" not in available()
    assert {load_environment(n).picker_release for n in TODAY} == {"v0.10"}
    assert load_environment("istio").picker_release == "v0.7"


@pytest.mark.parametrize("name", TODAY)
def test_every_environment_of_today_renders_valid_objects_offline(name):
    rendered = render(load_environment(name), CONFIG)
    problems, notes = validate(rendered)
    assert problems == []
    assert all("waived" in n or "HealthCheckPolicy" in n or "GCPBackendPolicy" in n for n in notes)
    assert {o["apiVersion"] for o in rendered.objects if o["kind"] == "InferencePool"} <= {
        "inference.networking.k8s.io/v1"}


def test_standalone_is_the_epp_with_its_envoy_proxy_and_no_gateway_api():
    o = objs("optimized-baseline")
    assert not {k for k, _ in o} & GATEWAY_API
    svc = o[("Service", "optimized-baseline-epp")]["spec"]
    assert {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8081} in svc["ports"]
    pod = o[("Deployment", "optimized-baseline-epp")]["spec"]["template"]["spec"]
    envoy, epp = pod["containers"]
    assert envoy["image"] == "docker.io/envoyproxy/envoy:distroless-v1.33.2"
    assert {"containerPort": 8081, "name": "http-8081"} in envoy["ports"]
    assert epp["image"] == "ghcr.io/llm-d/llm-d-router-endpoint-picker:v0.10.0"
    assert epp["args"][:2] == ["--pool-name", "optimized-baseline"] and "--v=2" in epp["args"]
    envoy_cfg = yaml.safe_load(o[("ConfigMap", "optimized-baseline-envoy")]["data"]["envoy.yaml"])
    listeners = envoy_cfg["static_resources"]["listeners"]
    ports = {listener["address"]["socket_address"]["port_value"] for listener in listeners}
    assert ports == {8081, 19001}
    pool = o[("InferencePool", "optimized-baseline")]["spec"]
    assert pool["selector"]["matchLabels"] == {"llm-d.ai/guide": "optimized-baseline",
                                               "kit.llm-d.ai/stack": "optimized-baseline"}
    server = o[("Deployment", "optimized-baseline-nvidia-gpu-vllm-decode")]["spec"]["template"]
    assert pool["selector"]["matchLabels"].items() <= server["metadata"]["labels"].items()
    env = {e["name"]: e for e in server["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "llm-d-hf-token", "key": "HF_TOKEN"}


def test_standalone_with_agentgateway_selects_the_servers_itself():
    o = objs("optimized-baseline", "router.proxy=agentgateway")
    assert not any(k == "InferencePool" for k, _ in o)
    proxy, epp = o[("Deployment", "optimized-baseline-epp")]["spec"]["template"]["spec"]["containers"]
    assert proxy["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    i = epp["args"].index("--endpoint-selector")
    assert epp["args"][i + 1] == "kit.llm-d.ai/stack=optimized-baseline,llm-d.ai/guide=optimized-baseline"
    assert "--secure-serving=false" in epp["args"]
    # The selector is checked like a pool's: widen it onto the EPP's own pods and validation says so.
    broken = [dict(x) for x in objs("optimized-baseline", "router.proxy=agentgateway").values()]
    dep = next(x for x in broken if x["metadata"]["name"] == "optimized-baseline-epp" and x["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][1]["args"][i + 1] = "kit.llm-d.ai/stack=optimized-baseline"
    problems, _ = validate_objects(broken, CrdSchemas.shipped("llm-d-v0.10"))
    assert any("also matches pods of Deployment/optimized-baseline-epp" in p for p in problems)


@pytest.mark.parametrize(("name", "extras"), [
    ("optimized-baseline-istio", {"DestinationRule"}),
    ("optimized-baseline-gke", {"HealthCheckPolicy", "GCPBackendPolicy"}),
    ("optimized-baseline-agentgateway", set()),
])
def test_gateway_mode_renders_the_route_the_chart_creates(name, extras):
    o = objs(name)
    kinds = {k for k, _ in o}
    assert {"Gateway", "HTTPRoute", "InferencePool"} <= kinds
    assert kinds & GATEWAY_API == {"Gateway", "HTTPRoute"} | extras
    route = o[("HTTPRoute", "optimized-baseline")]["spec"]
    assert route["rules"][0]["backendRefs"] == [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                                                 "name": "optimized-baseline"}]
    assert ("timeouts" in route["rules"][0]) == (name != "optimized-baseline-gke")
    pod = o[("Deployment", "optimized-baseline-epp")]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["epp"]


def test_render_to_a_folder_writes_one_file_per_release(tmp_path):
    files = write(render(load_environment("optimized-baseline-istio"), CONFIG), tmp_path)
    assert sorted(f.name for f in files) == ["gateway-optimized-baseline.yaml", "ms-optimized-baseline.yaml",
                                             "optimized-baseline.yaml"]


@pytest.mark.parametrize(("sets", "needle"), [
    (["release=llm-d-v0.10"], "epp.image: release llm-d-v0.10 deploys the llm-d-router-endpoint-picker image"),
    (["router.mode=standalone"], "router: only release llm-d-v0.10 deploys llm-d-router's charts"),
], ids=["todays-release-guide-images", "router-on-the-guide"])
def test_mixing_the_tracks_up_is_an_error_naming_the_field(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        load_environment("istio", overrides=parse_set(sets))


def test_gateway_mode_offers_the_providers_upstream_lists():
    with pytest.raises(ConfigError, match=re.escape("gateway.provider: llm-d-router v0.10's gateway mode lists "
                                                    "istio, gke, agentgateway, not 'kgateway'")):
        load_environment("optimized-baseline-istio", overrides=parse_set(["gateway.provider=kgateway"]))
    with pytest.raises(ConfigError, match=re.escape("router.proxy: Input should be 'envoy' or 'agentgateway'")):
        load_environment("optimized-baseline", overrides=parse_set(["router.proxy=nginx"]))


def test_the_epp_reads_the_scheduler_file_under_the_guides_name():
    assert config_file("templates/scheduler/optimized-baseline.yaml") == "optimized-baseline-plugins.yaml"
    assert config_file("templates/scheduler/default-plugins.yaml") == "default-plugins.yaml"
    o = objs("optimized-baseline")
    data = o[("ConfigMap", "optimized-baseline-epp")]["data"]
    assert data == {"default-plugins.yaml": (ROOT / CONFIG).read_text()}




def test_validation_uses_the_picker_of_the_release_deployed(tmp_path):
    """A config with an unknown nested parameter: v0.10's EPP refuses to start on it, so the kit refuses
    to render it for today's llm-d, naming the field's path; the guide's picker (v0.7) keeps its own rules."""
    bad = tmp_path / "nested.yaml"
    bad.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
                   "- type: prefix-cache-scorer\n  parameters: {lruCapacityPerServer: 10, nope: {deeper: 1}}\n"
                   "schedulingProfiles:\n- name: default\n  plugins: [{pluginRef: prefix-cache-scorer}]\n")
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.parameters\.nope"):
        render(load_environment("optimized-baseline"), str(bad))


@pytest.mark.parametrize("name", TODAY)
def test_todays_environments_render_with_todays_profile(name):
    rendered = render(load_environment(name))
    assert validate(rendered)[0] == []
    cm = next(o for o in rendered.objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-epp"))
    assert list(cm["data"]) == ["optimized-baseline-plugins.yaml"]


@pytest.mark.slow
def test_kit_render_and_validate_of_the_default_standalone_environment(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "kit", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120)
    out = run("render", "-e", "optimized-baseline", "--scheduler-config", CONFIG, "-o", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "kit render: 12 objects" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ms-optimized-baseline.yaml", "optimized-baseline.yaml"]
    ok = run("validate", "-e", "optimized-baseline", "--scheduler-config", CONFIG)
    assert ok.returncode == 0 and "12 objects for optimized-baseline are valid" in ok.stdout, ok.stderr


def test_the_local_stack_of_today_starts_the_gateway_with_todays_picker(tmp_path, monkeypatch):
    from kit.targets.local import LocalTarget

    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path))
    [gateway] = [p for p in LocalTarget(load_environment("local-llm-d")).plan() if p["role"] == "gateway"]
    args = gateway["command"].split()
    assert args[args.index("--release") + 1] == "v0.10"
    assert args[args.index("--config") + 1].endswith("optimized-baseline.yaml")
