"""Rendered manifests for every environment: valid, and the facts that matter pinned against the guide
(shared/reference/upstream-stack.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kit.errors import ConfigError, KitError
from kit.manifests.environments import available, load_environment, parse_set
from kit.manifests.render import names, render, write
from kit.manifests.validate import validate
from kit.picker import load_picker_config
from tests.conftest import SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
# The guide track's cluster environments (today's llm-d track: tests/manifests/test_router.py).
CLUSTER_ENVS = [n for n in available() if load_environment(n).target == "cluster" and
                load_environment(n).release == "guide"]


def objs(env_name: str, **kw):
    r = render(load_environment(env_name, **kw))
    return {(o["kind"], o["metadata"]["name"]): o for o in r.objects}, r


def one(objects, kind):
    [o] = [o for (k, _), o in objects.items() if k == kind and not o["metadata"]["name"].endswith("-epp")] or [None]
    return o


def decode(objects):
    return next(o for (k, n), o in objects.items() if k == "Deployment" and n.endswith("-decode"))


def test_the_guide_environments_exist():
    assert set(CLUSTER_ENVS) == {"istio", "kgateway", "agentgateway", "gke", "digitalocean", "xpu", "gke_tpu",
                                 "cpu", "sim", "precise"}


@pytest.mark.parametrize("name", CLUSTER_ENVS)
def test_every_environment_renders_valid_manifests(name):
    problems, notes = validate(render(load_environment(name)), SCHEMAS)
    assert problems == []
    # Only kinds whose CRDs the kit does not ship may go unchecked (waived hardening rules are tested below).
    kinds = ("AgentgatewayParameters", "HealthCheckPolicy", "GCPBackendPolicy")
    assert all(any(k in n for k in kinds) for n in notes if "waived" not in n)


def test_names_follow_the_postfix_and_namespace():
    o, _ = objs("istio", namespace="team-a", postfix="blue")
    expected = {("Gateway", "infra-blue-inference-gateway"), ("ConfigMap", "infra-blue-inference-gateway"),
                ("InferencePool", "gaie-blue"), ("Deployment", "gaie-blue-epp"), ("Service", "gaie-blue-epp"),
                ("ConfigMap", "gaie-blue-epp"), ("ServiceAccount", "gaie-blue-epp"), ("Role", "gaie-blue-epp-sa"),
                ("Role", "gaie-blue-epp-non-sa"), ("ClusterRole", "gaie-blue-team-a-2da04098-epp"),
                ("DestinationRule", "gaie-blue-epp"), ("ServiceMonitor", "gaie-blue-epp-monitor"),
                ("Secret", "gaie-blue-metrics-reader-secret"),
                ("Deployment", "ms-blue-llm-d-modelservice-decode"), ("ServiceAccount", "ms-blue-llm-d-modelservice"),
                ("PodMonitor", "ms-blue-llm-d-modelservice-decode-podmonitor"), ("HTTPRoute", "llm-d-blue")}
    assert expected <= set(o)
    assert all(obj["metadata"].get("namespace", "team-a") == "team-a" for obj in o.values())
    assert all(obj["metadata"]["labels"]["kit.llm-d.ai/namespace"] == "team-a" for obj in o.values())


@pytest.mark.parametrize(("a", "b"), [
    (("team-a", "blue"), ("team-b", "blue")),
    (("c", "a-b"), ("b-c", "a")),  # the same text once namespace and postfix are joined
    (("team-" + "x" * 45 + "-a", "p"), ("team-" + "x" * 45 + "-b", "p")),  # alike for 50 characters
    (("n", "r" * 49 + "-a"), ("n", "r" * 49 + "-b")),
], ids=["namespaces", "joined-alike", "long-namespaces", "long-postfixes"])
def test_two_stacks_never_share_a_cluster_scoped_or_cut_name(a, b):
    na, nb = (names(load_environment("istio", namespace=ns, postfix=rn)) for ns, rn in (a, b))
    assert na["epp_cluster_role"] != nb["epp_cluster_role"]
    if a[0] == b[0]:  # one namespace: every namespaced name differs too
        assert not {v for k, v in na.items() if k != "epp_cluster_role"} & set(nb.values())
    for n in (na, nb):
        assert len(n["epp_cluster_role"]) <= 63 and len(n["decode"]) <= 62 and len(n["gateway"] + "-istio") <= 63


def test_names_keep_the_guides_form_until_they_must_be_cut():
    n = names(load_environment("istio", postfix="r" * 33))
    assert n["gateway"] == f"infra-{'r' * 33}-inference-gateway"
    assert n["decode"] == f"ms-{'r' * 33}-llm-d-modelservice-decode"
    cut = names(load_environment("istio", postfix="r" * 34))
    assert cut["gateway"].startswith("infra-rrrr") and cut["gateway"].endswith("-inference-gateway")
    assert len(cut["gateway"]) == 57 and re.search(r"-[0-9a-f]{8}-inference-gateway$", cut["gateway"])


def test_pool_selector_ports_and_epp_reference():
    o, _ = objs("istio")
    pool = o[("InferencePool", "gaie-inference-scheduling")]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["selector"]["matchLabels"] == {"llm-d.ai/inference-serving": "true",
                                                       "llm-d.ai/guide": "inference-scheduling",
                                                       "kit.llm-d.ai/stack": "inference-scheduling"}
    assert pool["spec"]["endpointPickerRef"] == {"name": "gaie-inference-scheduling-epp", "port": {"number": 9002},
                                                 "failureMode": "FailOpen"}
    pod = decode(o)["spec"]["template"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["llm-d.ai/role"] == "decode"
    [c] = pod["spec"]["containers"]
    assert c["ports"] == [{"containerPort": 8000, "name": "vllm", "protocol": "TCP"}]
    svc = o[("Service", "gaie-inference-scheduling-epp")]
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("grpc-ext-proc", 9002), ("http-metrics", 9090)]
    epp = o[("Deployment", "gaie-inference-scheduling-epp")]["spec"]["template"]["spec"]["containers"][0]
    assert [p["containerPort"] for p in epp["ports"]] == [9002, 9003, 9090]
    assert epp["args"][:6] == ["--pool-name", "gaie-inference-scheduling", "--pool-namespace",
                               "vllm-k8s-inference-scheduler", "--pool-group", "inference.networking.k8s.io"]


def test_the_epp_configmap_holds_the_same_plugin_file_as_the_local_stack():
    o, _ = objs("istio")
    text = o[("ConfigMap", "gaie-inference-scheduling-epp")]["data"]["default-plugins.yaml"]
    assert text == (ROOT / "templates/scheduler/default-plugins.yaml").read_text()
    [profile] = load_picker_config(text).scheduler.profiles.values()
    assert {s.type: w for s, w in profile.scorers} == {"queue-scorer": 2, "kv-cache-utilization-scorer": 2,
                                                       "prefix-cache-scorer": 3}


def test_a_different_scheduler_config_rolls_the_epp(tmp_path):
    env = load_environment("istio")
    a = {o["kind"] + o["metadata"]["name"]: o for o in render(env).objects}
    random_cfg = str(ROOT / "templates/scheduler/random.yaml")
    b = {o["kind"] + o["metadata"]["name"]: o for o in render(env, random_cfg).objects}
    key = "Deploymentgaie-inference-scheduling-epp"
    ann = "kit.llm-d.ai/plugins-config-sha256"
    assert (a[key]["spec"]["template"]["metadata"]["annotations"][ann]
            != b[key]["spec"]["template"]["metadata"]["annotations"][ann])
    assert "random-picker" in b["ConfigMapgaie-inference-scheduling-epp"]["data"]["default-plugins.yaml"]


@pytest.mark.parametrize(("env_name", "image", "resources"), [
    ("istio", "ghcr.io/llm-d/llm-d-cuda:v0.6.0", {"cpu": "32", "memory": "100Gi", "nvidia.com/gpu": "1"}),
    ("digitalocean", "ghcr.io/llm-d/llm-d-cuda:v0.6.0", {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}),
    ("gke_tpu", "vllm/vllm-tpu:v0.11.1", {"google.com/tpu": "8"}),
    ("cpu", "ghcr.io/llm-d/llm-d-cpu:v0.6.0", {"cpu": "64", "memory": "64Gi"}),
    ("xpu", "ghcr.io/llm-d/llm-d-xpu:v0.6.0", {"cpu": "8", "memory": "24Gi"}),
    ("sim", "ghcr.io/llm-d/llm-d-inference-sim:v0.3.0", {"cpu": "500m", "memory": "512Mi"}),
], ids=lambda v: v if isinstance(v, str) and "/" not in v else "")
def test_images_and_accelerator_resources(env_name, image, resources):
    o, _ = objs(env_name)
    c = decode(o)["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == image
    assert c["resources"]["limits"] == resources == c["resources"]["requests"]


def test_every_image_is_pinned():
    for name in CLUSTER_ENVS:
        o, _ = objs(name)
        for obj in o.values():
            if obj["kind"] == "Deployment":
                for c in obj["spec"]["template"]["spec"]["containers"]:
                    assert ":" in c["image"] and not c["image"].endswith(":latest"), (name, c["image"])


def test_vllm_command_and_args():
    c = decode(objs("istio")[0])["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["vllm", "serve"]
    assert c["args"] == ["Qwen/Qwen3-0.6B", "--port", "8000", "--tensor-parallel-size", "1", "--served-model-name",
                         "Qwen/Qwen3-0.6B", "--disable-uvicorn-access-log", "--gpu-memory-utilization=0.95"]
    probes = (c["startupProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"],
              c["readinessProbe"]["httpGet"]["path"])
    assert probes == ("/v1/models", "/health", "/v1/models")
    assert c["startupProbe"]["failureThreshold"] == 120


def test_hf_token_only_by_secret_reference():
    c = decode(objs("istio")[0])["spec"]["template"]["spec"]["containers"][0]
    [hf] = [e for e in c["env"] if e["name"] == "HF_TOKEN"]
    assert hf == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "vllm-k8s-hf-token", "key": "HF_TOKEN"}}}
    for public in ("digitalocean", "sim"):
        c = decode(objs(public)[0])["spec"]["template"]["spec"]["containers"][0]
        assert all(e["name"] != "HF_TOKEN" for e in c["env"])


def test_istio_extras():
    o, _ = objs("istio")
    gw = one(o, "Gateway")
    assert gw["spec"]["gatewayClassName"] == "istio"
    assert gw["metadata"]["labels"]["istio.io/enable-inference-extproc"] == "true"
    assert gw["spec"]["listeners"] == [{"name": "default", "port": 80, "protocol": "HTTP",
                                        "allowedRoutes": {"namespaces": {"from": "All"}}}]
    assert gw["spec"]["infrastructure"]["parametersRef"] == {"group": "", "kind": "ConfigMap",
                                                             "name": "infra-inference-scheduling-inference-gateway"}
    params = o[("ConfigMap", "infra-inference-scheduling-inference-gateway")]["data"]
    assert yaml.safe_load(params["service"]) == {"spec": {"type": "ClusterIP"}}
    proxy = yaml.safe_load(params["deployment"])["spec"]["template"]["spec"]["containers"][0]
    assert proxy["resources"] == {"requests": {"cpu": "4", "memory": "4Gi"}, "limits": {"cpu": "16", "memory": "16Gi"}}
    dr = o[("DestinationRule", "gaie-inference-scheduling-epp")]["spec"]
    assert dr["host"] == "gaie-inference-scheduling-epp.vllm-k8s-inference-scheduler.svc.cluster.local"
    assert dr["trafficPolicy"]["tls"] == {"mode": "SIMPLE", "insecureSkipVerify": True}
    route = o[("HTTPRoute", "llm-d-inference-scheduling")]["spec"]
    assert route["rules"][0]["timeouts"] == {"request": "0s", "backendRequest": "0s"}
    assert route["rules"][0]["backendRefs"][0]["port"] == 8000


@pytest.mark.parametrize("env_name", ["agentgateway", "kgateway"])
def test_agentgateway_extras(env_name):
    o, _ = objs(env_name)
    gw = one(o, "Gateway")
    assert gw["spec"]["gatewayClassName"] == "agentgateway"
    assert gw["spec"]["infrastructure"]["parametersRef"]["kind"] == "AgentgatewayParameters"
    params = o[("AgentgatewayParameters", "infra-inference-scheduling-inference-gateway")]
    assert params["spec"]["service"]["spec"]["type"] == "LoadBalancer"
    assert not any(k == "DestinationRule" for k, _ in o)


def test_gke_extras():
    o, _ = objs("gke")
    assert one(o, "Gateway")["spec"]["gatewayClassName"] == "gke-l7-regional-external-managed"
    hc = o[("HealthCheckPolicy", "gaie-inference-scheduling")]["spec"]
    assert hc["default"]["config"]["httpHealthCheck"] == {"requestPath": "/health", "port": 8000}
    assert o[("GCPBackendPolicy", "gaie-inference-scheduling")]["spec"]["default"]["timeoutSec"] == 300
    route = o[("HTTPRoute", "llm-d-inference-scheduling")]["spec"]["rules"][0]
    assert "timeouts" not in route and "port" not in route["backendRefs"][0]
    kinds = {k for k, _ in o}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "DestinationRule", "Secret"}


def test_hardware_extras():
    do = decode(objs("digitalocean")[0])["spec"]["template"]["spec"]
    assert do["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    tpu = decode(objs("gke_tpu")[0])["spec"]["template"]["spec"]
    assert tpu["nodeSelector"] == {"cloud.google.com/gke-tpu-topology": "2x4",
                                   "cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice"}
    assert "meta-llama/Llama-3.1-70B" in tpu["containers"][0]["args"]
    o, _ = objs("xpu")
    rct = o[("ResourceClaimTemplate", "ms-inference-scheduling-llm-d-modelservice-claim-template-decode")]
    assert rct["spec"]["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] == "gpu.intel.com"
    xpu = decode(o)["spec"]["template"]["spec"]
    assert xpu["resourceClaims"][0]["resourceClaimTemplateName"] == rct["metadata"]["name"]
    assert xpu["containers"][0]["resources"]["claims"] == [{"name": "accelerator"}]
    cpu = decode(objs("cpu")[0])["spec"]["template"]["spec"]["containers"][0]
    assert cpu["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # upstream adds SYS_NICE
    sim = decode(objs("sim")[0])["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in sim and sim["args"][:4] == ["--model", "Qwen/Qwen3-0.6B", "--port", "8000"]


HARDENED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}
ROOT_IMAGES = {"cpu", "xpu", "gke_tpu"}  # images that run as root (docs/how-to/deploy-to-a-cluster.md)


@pytest.mark.parametrize("name", CLUSTER_ENVS)
def test_pods_are_hardened_in_every_environment(name):
    o, _ = objs(name)
    epp = o[("Deployment", "gaie-inference-scheduling-epp")]["spec"]["template"]["spec"]
    assert epp["automountServiceAccountToken"] is True  # it watches pods and the pool with its token
    assert epp["containers"][0]["securityContext"] == {**HARDENED, "runAsNonRoot": True}
    server = decode(o)
    pod = server["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert o[("ServiceAccount", pod["serviceAccountName"])]["automountServiceAccountToken"] is False
    [c] = pod["containers"]
    waivers = server["metadata"].get("annotations", {}).get("kit.llm-d.ai/security-waivers")
    if name in ROOT_IMAGES:
        assert c["securityContext"] == HARDENED and waivers == "run-as-non-root"
    else:
        assert c["securityContext"] == {**HARDENED, "runAsNonRoot": True} and waivers is None
    _, notes = validate(render(load_environment(name)))
    assert [n for n in notes if "waived" in n] == (
        ["Deployment/ms-inference-scheduling-llm-d-modelservice-decode: container vllm: rule run-as-non-root waived "
         "by its kit.llm-d.ai/security-waivers annotation (runAsNonRoot is not true); not checked"]
        if name in ROOT_IMAGES else [])


def test_upstreams_numa_settings_for_cpu_are_one_command_away():
    sets = ["hardware.security_context.capabilities.add=[SYS_NICE]", "hardware.security_context.seccompProfile.type="
            "Unconfined", "model_server.security_waivers=[run-as-non-root,capabilities,seccomp]"]
    r = render(load_environment("cpu", overrides=parse_set(sets)))
    c = next(o for o in r.objects if o["metadata"]["name"].endswith("-decode"))["spec"]["template"]["spec"][
        "containers"][0]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": [
        "SYS_NICE"]}, "seccompProfile": {"type": "Unconfined"}}
    problems, notes = validate(r)
    assert problems == [] and len([n for n in notes if "waived" in n]) == 3
    without_waivers = render(load_environment("cpu", overrides=parse_set(sets[:2])))
    assert len(validate(without_waivers)[0]) == 2  # capabilities and seccomp, each named


def test_two_postfixes_in_one_namespace_never_touch_each_other():
    a, _ = objs("istio", postfix="blue")
    b, _ = objs("istio", postfix="green")
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    assert not ({k for k in a if k[0] not in cluster_scoped} & {k for k in b if k[0] not in cluster_scoped})
    assert not ({k for k in a if k[0] in cluster_scoped} & {k for k in b if k[0] in cluster_scoped})
    pool_a = a[("InferencePool", "gaie-blue")]["spec"]["selector"]["matchLabels"]
    pods_b = decode(b)["spec"]["template"]["metadata"]["labels"]
    assert not pool_a.items() <= pods_b.items()
    route_a = a[("HTTPRoute", "llm-d-blue")]["spec"]
    assert route_a["parentRefs"][0]["name"] == "infra-blue-inference-gateway"
    assert route_a["rules"][0]["backendRefs"][0]["name"] == "gaie-blue"


def test_render_to_a_folder_writes_one_file_per_release(tmp_path):
    files = write(render(load_environment("istio", postfix="blue")), tmp_path)
    assert sorted(f.name for f in files) == ["gaie-blue.yaml", "httproute.yaml", "infra-blue.yaml", "ms-blue.yaml"]
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        assert docs and all(d["metadata"]["labels"]["kit.llm-d.ai/stack"] == "blue" for d in docs)


@pytest.mark.parametrize(("kw", "error", "needle"), [
    ({"name": "istio", "overrides": parse_set(["replicas=0"])}, ConfigError, "replicas: Input should be greater"),
    ({"name": "istio", "overrides": parse_set(["gateway.provider=nginx"])}, ConfigError,
     "gateway.provider: Input should be 'istio', 'kgateway', 'agentgateway' or 'gke'"),
    ({"name": "istio", "overrides": parse_set(["hardware.gpus=2"])}, ConfigError, "hardware.gpus: Extra inputs"),
    ({"name": "istio", "postfix": "Blue_1"}, ConfigError, "release_postfix: 'Blue_1' must be a DNS label"),
    ({"name": "istio", "postfix": "x" * 60}, ConfigError, "at most 53 characters"),
], ids=["replicas", "provider", "unknown-field", "postfix-chars", "postfix-length"])
def test_broken_inputs_fail_before_rendering(kw, error, needle):
    name = kw.pop("name")
    with pytest.raises(error, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_environment(name, **kw)


def test_an_invalid_plugin_file_fails_the_render(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
                   "plugins: [{type: nope}]\n")
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.type: unknown plugin type 'nope'"):
        render(load_environment("istio"), str(bad))
    with pytest.raises(KitError, match="has no manifests"):
        render(load_environment("local"))
