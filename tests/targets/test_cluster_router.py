"""Today's llm-d (release llm-d-v0.10) on the fake API server: standalone and gateway mode deploy, report
and go away like the guide's stack, with their own prerequisites."""

from __future__ import annotations

import pytest

from kit.manifests.environments import load_environment, parse_set
from kit.targets.cluster import ClusterTarget, apply, inventory
from kit.targets.cluster.client import Cluster
from tests.conftest import SCHEMAS
from tests.targets.fake_apiserver import FakeCluster

NS = "team-a"
CONFIG = "templates/scheduler/default-plugins.yaml"  # accepted by the picker of either release
quiet = {"say": lambda _m: None}


@pytest.fixture
def fake(tmp_path):
    with FakeCluster() as f:
        f.kubeconfig_path = f.kubeconfig(tmp_path / "kubeconfig")
        f.install_crds(SCHEMAS)
        f.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield f


@pytest.fixture
def client(fake):
    return Cluster(kubeconfig=str(fake.kubeconfig_path))


def target(client: Cluster, name: str = "optimized-baseline-sim", *sets: str, postfix: str = "optimized-baseline"):
    env = load_environment(name, namespace=NS, postfix=postfix,
                           overrides=parse_set([f"scheduler_config={CONFIG}", *sets]))
    return ClusterTarget(env, cluster=client)


def test_standalone_needs_no_gateway_api_but_todays_hf_secret(fake, client):
    assert apply.prerequisites(target(client).env, client) == []  # the simulator needs no token, no gateway
    problems = apply.prerequisites(target(client, "optimized-baseline").env, client)
    assert problems == ["secret llm-d-hf-token is missing: kubectl create secret generic llm-d-hf-token "
                        f"--from-literal=HF_TOKEN=<your token> -n {NS}"]


@pytest.mark.slow
def test_standalone_deploys_reports_and_is_destroyed(fake, client):
    t = target(client)
    st = t.deploy(CONFIG, timeout=30, **quiet)
    assert st.ready, st.rows
    assert [r["release"] for r in st.detail["releases"]] == ["ms-optimized-baseline", "optimized-baseline"]
    pool = next(r for r in st.rows if r["object"] == "InferencePool/optimized-baseline")
    assert pool["ready"] and "standalone" in pool["detail"]
    assert sorted(p["role"] for p in st.detail["pods"]) == ["endpoint-picker", "model-server", "model-server"]
    assert not fake.objects("Gateway") and not fake.objects("HTTPRoute")
    epp = fake.get("Deployment", "optimized-baseline-epp", NS)["spec"]["template"]["spec"]
    assert [c["name"] for c in epp["containers"]] == ["envoy-proxy", "epp"]
    assert inventory.gateway_service(t.env) == ("optimized-baseline-epp", 80)
    assert inventory.gateway_address(t.env, client) is None  # reached by port-forward to the EPP Service
    other = target(client, postfix="other")
    other.deploy(CONFIG, timeout=30, **quiet)
    deleted = t.destroy(**quiet)
    assert len(deleted) == 12 and deleted[0].startswith(("ServiceAccount/", "Deployment/"))
    assert other.status().ready and not t.status().deployed


@pytest.mark.slow
def test_standalone_with_agentgateway_routes_without_a_pool(fake, client):
    t = target(client, "optimized-baseline-sim", "router.proxy=agentgateway")
    assert t.deploy(CONFIG, timeout=30, **quiet).ready
    assert not fake.objects("InferencePool")
    epp = fake.get("Deployment", "optimized-baseline-epp", NS)["spec"]["template"]["spec"]["containers"]
    assert epp[0]["name"] == "agentgateway-proxy" and "--endpoint-selector" in epp[1]["args"]


@pytest.mark.slow
def test_gateway_mode_waits_for_the_gateway_and_route(fake, client):
    fake.create({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                 "metadata": {"name": "istio"}, "spec": {"controllerName": "istio.io/gateway-controller"}})
    t = target(client, "optimized-baseline-sim", "router.mode=gateway", "gateway.provider=istio",
               "gateway.class_name=istio", "gateway.destination_rule=true")
    st = t.deploy(CONFIG, timeout=30, **quiet)
    assert st.ready and [r["release"] for r in st.detail["releases"]] == [
        "gateway-optimized-baseline", "ms-optimized-baseline", "optimized-baseline"]
    route = fake.get("HTTPRoute", "optimized-baseline", NS)
    assert route["spec"]["parentRefs"][0]["name"] == "optimized-baseline-inference-gateway"
    assert len(t.destroy(**quiet)) == len(t.plan(CONFIG)) == 14  # gateway 1, router 11, model servers 2


def test_todays_crds_are_named_with_todays_versions(tmp_path):
    with FakeCluster() as bare:
        client = Cluster(kubeconfig=str(bare.kubeconfig(tmp_path / "kc")))
        text = "\n".join(apply.prerequisites(target(client).env, client))
    assert "InferencePool (inference.networking.k8s.io): install the Inference Extension CRDs (v1.6.0)" in text
    assert "config/crd?ref=v1.6.0" in text and "Gateway" not in text
