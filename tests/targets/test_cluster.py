"""The cluster target against a fake API server over HTTP (tests/targets/fake_apiserver.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kit.errors import ApplyError, NotReadyError
from kit.manifests.environments import load_environment, parse_set
from kit.manifests.render import names, render
from kit.targets.cluster import ClusterTarget, apply, inventory
from kit.targets.cluster.client import Cluster
from tests.conftest import SCHEMAS
from tests.targets.fake_apiserver import FakeCluster

NS = "team-a"
quiet = {"say": lambda _m: None}


def prepared(fake: FakeCluster, hf_token: bool = True, namespace: str = NS) -> None:
    """A cluster with everything the istio environment needs in ``namespace``."""
    fake.install_crds(SCHEMAS)
    fake.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    fake.create({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "istio"},
                 "spec": {"controllerName": "istio.io/gateway-controller"}})
    if hf_token:
        fake.create({"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "vllm-k8s-hf-token", "namespace": namespace}, "data": {"HF_TOKEN": "aGZfeHg="}})


@pytest.fixture
def fake(tmp_path):
    with FakeCluster() as f:
        f.kubeconfig_path = f.kubeconfig(tmp_path / "kubeconfig")
        yield f


@pytest.fixture
def client(fake):
    return Cluster(kubeconfig=str(fake.kubeconfig_path))


def env(postfix: str = "inference-scheduling", *sets: str, name: str = "istio", namespace: str = NS):
    return load_environment(name, namespace=namespace, postfix=postfix, overrides=parse_set(list(sets)))


def target(client: Cluster, postfix: str = "inference-scheduling", namespace: str = NS) -> ClusterTarget:
    return ClusterTarget(env(postfix, namespace=namespace), cluster=client)


def cluster_scoped(fake: FakeCluster) -> dict[str, dict]:
    """``Kind/name`` → object, for the ClusterRoles and ClusterRoleBindings on the cluster."""
    return {f"{k}/{o['metadata']['name']}": o for k in ("ClusterRole", "ClusterRoleBinding") for o in fake.objects(k)}


def test_a_cluster_recreated_at_the_same_address_is_discovered_afresh(tmp_path):
    """kind or minikube recreated at the address of one the kit knew: what the old one served is not taken for the
    new one's (the kubernetes client's default discovery cache is a file per address, shared by every process)."""
    with FakeCluster() as old:
        prepared(old)
        before = apply.prerequisites(env(), Cluster(kubeconfig=str(old.kubeconfig(tmp_path / "old"))))
        assert not any("Gateway API" in p for p in before), before
    with FakeCluster(port=old.port) as new:
        after = apply.prerequisites(env(), Cluster(kubeconfig=str(new.kubeconfig(tmp_path / "new"))))
    assert any("install the Gateway API CRDs" in p for p in after), after


def test_prerequisites_name_every_gap_and_its_fix(fake, client):
    problems = apply.prerequisites(env(), client)
    text = "\n".join(problems)
    assert f"namespace {NS} does not exist: kubectl create namespace {NS}" in text
    assert "Gateway, HTTPRoute (gateway.networking.k8s.io): install the Gateway API CRDs (v1.5.1)" in text
    assert "InferencePool (inference.networking.k8s.io): install the Inference Extension CRDs (v1.4.0)" in text
    assert "DestinationRule (networking.istio.io)" in text and "PodMonitor, ServiceMonitor" in text
    assert "secret vllm-k8s-hf-token is missing: kubectl create secret generic vllm-k8s-hf-token" in text
    prepared(fake)
    assert apply.prerequisites(env(), client) == []
    fake.store.pop(("gateway.networking.k8s.io/v1", "GatewayClass", "", "istio"))
    assert apply.prerequisites(env(), client) == [
        "GatewayClass istio is missing: install the istio gateway control plane (see the guide's gateway-provider "
        "prerequisites)"]


def test_public_models_need_no_token(fake, client):
    prepared(fake, hf_token=False)
    assert apply.prerequisites(env(name="digitalocean"), client) == []


def test_unreachable_api_is_one_clear_problem(tmp_path):
    cfg = tmp_path / "kc"
    cfg.write_text("apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters: [{name: x, cluster: "
                   "{server: 'http://127.0.0.1:1'}}]\nusers: [{name: x, user: {token: t}}]\n"
                   "contexts: [{name: x, context: {cluster: x, user: x}}]\n")
    [problem] = apply.prerequisites(env(), Cluster(kubeconfig=str(cfg)))
    assert problem.startswith("the Kubernetes API at http://127.0.0.1:1 is not reachable")


def test_deploy_applies_in_order_with_field_manager_kit_and_waits(fake, client):
    prepared(fake)
    st = target(client).deploy(timeout=30, **quiet)
    assert st.ready and {r["release"] for r in st.detail["releases"]} == {
        "infra-inference-scheduling", "gaie-inference-scheduling", "ms-inference-scheduling",
        "llm-d-inference-scheduling"}
    assert len(st.detail["pods"]) == 3 and all(p["ready"] for p in st.detail["pods"])  # 2 model servers + the EPP
    patches = [p for m, p in fake.requests if m == "PATCH"]
    assert all("fieldManager=kit" in p for p in patches)
    order = [p.split("?")[0].rsplit("/", 2)[-2] for p in patches]
    assert order.index("gateways") < order.index("inferencepools") < order.index("httproutes")
    dep = fake.get("Deployment", "ms-inference-scheduling-llm-d-modelservice-decode", NS)
    assert [m["manager"] for m in dep["metadata"]["managedFields"]] == ["kit"]
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kit"


def test_deploying_again_changes_nothing(fake, client):
    prepared(fake)
    target(client).deploy(timeout=30, **quiet)
    before = {(o["kind"], o["metadata"]["name"]): o["metadata"]["generation"] for o in fake.objects("Deployment")}
    target(client).deploy(timeout=30, **quiet)
    after = {(o["kind"], o["metadata"]["name"]): o["metadata"]["generation"] for o in fake.objects("Deployment")}
    assert before == after


def test_dry_run_is_checked_server_side_and_changes_nothing(fake, client):
    prepared(fake)
    out = target(client).deploy(dry_run=True, **quiet)
    assert out.detail["dry_run"] and len(out.detail["objects"]) == 20
    assert all("dryRun=All" in p for m, p in fake.requests if m == "PATCH")
    assert fake.objects("Deployment") == [] and fake.objects("InferencePool") == []


def test_missing_prerequisites_stop_the_deploy_before_anything_is_applied(fake, client):
    fake.install_crds(SCHEMAS)
    with pytest.raises(NotReadyError, match="nothing was applied") as err:
        target(client).deploy(**quiet)
    assert any("namespace team-a does not exist" in p for p in err.value.problems)
    assert not [m for m, _ in fake.requests if m == "PATCH"]


def test_a_colliding_postfix_or_a_foreign_object_is_refused_up_front(fake, client):
    prepared(fake)
    fake.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "gaie-inference-scheduling-epp", "namespace": NS, "labels": {"team": "someone-else"}}, "data": {}})
    with pytest.raises(NotReadyError) as err:
        target(client).deploy(**quiet)
    assert "ConfigMap/gaie-inference-scheduling-epp exists and was not created by the kit" in str(err.value)
    assert not [m for m, _ in fake.requests if m == "PATCH"]
    assert fake.get("ConfigMap", "gaie-inference-scheduling-epp", NS)["metadata"]["labels"] == {"team": "someone-else"}


def test_a_failed_apply_reports_what_was_and_was_not_applied(fake, client):
    prepared(fake)
    # Another manager owns a field the kit wants to set differently: a server-side apply conflict.
    other = render(env()).objects
    dep = next(o for o in other if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-epp"))
    dep = {**dep, "spec": {**dep["spec"], "replicas": 3}}
    Cluster(kubeconfig=str(fake.kubeconfig_path)).apply(dep)  # applied as "kit"; now hand it to someone else
    key = ("apps/v1", "Deployment", NS, dep["metadata"]["name"])
    fake.applied[key] = {"helm": fake.applied[key].pop("kit")}
    fake.store[key]["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "kit"
    with pytest.raises(ApplyError) as err:
        target(client).deploy(**quiet)
    e = err.value
    assert e.failed == "Deployment/gaie-inference-scheduling-epp" and "Conflict" in str(e)
    assert "ConfigMap/gaie-inference-scheduling-epp" in e.applied
    assert "InferencePool/gaie-inference-scheduling" in e.not_applied and "HTTPRoute/llm-d-inference-scheduling" in (
        e.not_applied)


def test_a_failing_rollout_is_reported_with_its_reason(fake, client):
    prepared(fake)
    fake.failing_images.add("ghcr.io/llm-d/llm-d-cuda:v0.6.0")
    with pytest.raises(NotReadyError) as err:
        target(client).deploy(timeout=30, **quiet)
    assert "Deployment/ms-inference-scheduling-llm-d-modelservice-decode: rollout failed" in str(err.value)
    assert "ImagePullBackOff" in str(err.value)


def test_waiting_times_out_listing_what_is_not_ready(fake, client):
    prepared(fake)
    fake.rollout_seconds = 3600
    with pytest.raises(NotReadyError) as err:
        target(client).deploy(timeout=1, **quiet)
    assert "Deployment/gaie-inference-scheduling-epp: 0 of 1 replicas updated" in str(err.value)


def test_readiness_rules():
    dep = {"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 1}}
    assert apply.readiness(dep) == (False, "waiting for the controller to see the new spec")
    dep["status"] = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}
    assert apply.readiness(dep) == (False, "1 old replicas pending termination")
    dep["status"]["replicas"] = 2
    assert apply.readiness(dep) == (True, "2/2 available")
    conditions = [{"type": "Accepted", "status": "True"},
                  {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound"}]
    route = {"kind": "HTTPRoute", "status": {"parents": [{"conditions": conditions}]}}
    assert apply.readiness(route) == (False, "references not resolved (BackendNotFound)")
    assert apply.readiness({"kind": "Gateway", "status": {}}) == (False, "not Programmed (no status yet)")


def test_destroy_removes_exactly_this_stack(fake, client):
    prepared(fake)
    target(client, "blue").deploy(timeout=30, **quiet)
    target(client, "green").deploy(timeout=30, **quiet)
    fake.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "unrelated", "namespace": NS, "labels": {"kit.llm-d.ai/stack": "blue"}}})  # not managed by kit
    deleted = target(client, "blue").destroy(**quiet)
    assert len(deleted) == 20 and deleted[0] == "HTTPRoute/llm-d-blue" and deleted[-1].startswith("ConfigMap/infra")
    left = {o["metadata"]["name"] for k in ("Deployment", "ConfigMap", "InferencePool") for o in fake.objects(k)}
    assert not any("blue" in n for n in left - {"unrelated"})
    assert "unrelated" in left and "gaie-green" in left
    assert target(client, "green").status().ready
    assert target(client, "blue").destroy(**quiet) == []


def test_one_postfix_in_two_namespaces_status_and_destroy_stay_in_their_namespace(fake, client):
    a, b = target(client, namespace="team-a"), target(client, namespace="team-b")
    for t in (a, b):
        prepared(fake, namespace=t.env.namespace)
        t.deploy(timeout=30, **quiet)
    role = names(b.env)["epp_cluster_role"]
    theirs = {f"ClusterRole/{role}", f"ClusterRoleBinding/{role}"}
    assert theirs <= set(cluster_scoped(fake))
    listed = {row["object"] for row in a.status().rows}
    assert not listed & theirs and len([r for r in listed if r.startswith("Cluster")]) == 2
    deleted = a.destroy(**quiet)
    assert not set(deleted) & theirs and len(deleted) == 20
    assert theirs <= set(cluster_scoped(fake)) and len(cluster_scoped(fake)) == 2
    assert b.status().ready and len(b.status().rows) == 23  # 20 objects and 3 pods, all still there


def test_long_namespaces_sharing_a_prefix_get_their_own_valid_cluster_scoped_names(fake, client):
    prefix = "team-" + "x" * 45  # 50 characters; the kit allows namespaces of up to 53
    stacks = [target(client, namespace=f"{prefix}-{n}") for n in ("a", "b")]
    for t in stacks:
        prepared(fake, namespace=t.env.namespace)
        t.deploy(timeout=30, **quiet)
    bindings = {o["metadata"]["name"]: o for o in fake.objects("ClusterRoleBinding")}
    assert len(bindings) == 2 and len(fake.objects("ClusterRole")) == 2
    for name, binding in bindings.items():
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
        owner = binding["metadata"]["labels"]["kit.llm-d.ai/namespace"]
        assert [s["namespace"] for s in binding["subjects"]] == [owner]  # the second deploy rewrote nothing
        assert binding["roleRef"]["name"] == name
    assert {b["metadata"]["labels"]["kit.llm-d.ai/namespace"] for b in bindings.values()} == {
        t.env.namespace for t in stacks}


def test_the_longest_postfix_and_namespace_deploy(fake, client):
    t = target(client, "p" * 53, namespace="n" * 53)
    prepared(fake, namespace=t.env.namespace)
    assert t.deploy(timeout=30, **quiet).ready  # the fake refuses names and labels the API server would refuse
    gateway = fake.objects("Gateway")[0]["metadata"]["name"]
    assert len(gateway + "-istio") <= 63  # the Service Istio creates for it is a DNS label


def test_a_cluster_scoped_object_of_another_namespace_is_not_taken_over(fake, client):
    prepared(fake)
    mine = next(o for o in render(env()).objects if o["kind"] == "ClusterRole")
    fake.create({**mine, "metadata": {**mine["metadata"], "labels": {
        **mine["metadata"]["labels"], "kit.llm-d.ai/namespace": "team-z"}}})
    with pytest.raises(NotReadyError) as err:
        target(client).deploy(**quiet)
    assert (f"ClusterRole/{mine['metadata']['name']} exists and belongs to stack 'inference-scheduling' in "
            "namespace team-z") in str(err.value)
    assert target(client).destroy(**quiet) == []  # nor removed: it is not this namespace's
    assert fake.get("ClusterRole", mine["metadata"]["name"]) is not None


def test_switching_the_scheduler_profile_updates_the_epp(fake, client):
    prepared(fake)
    target(client).deploy(timeout=30, **quiet)
    epp = fake.get("Deployment", "gaie-inference-scheduling-epp", NS)
    target(client).deploy("templates/scheduler/random.yaml", timeout=30, **quiet)
    after = fake.get("Deployment", "gaie-inference-scheduling-epp", NS)
    assert after["metadata"]["generation"] == epp["metadata"]["generation"] + 1  # the EPP rolls
    cm = fake.get("ConfigMap", "gaie-inference-scheduling-epp", NS)
    assert "random-picker" in cm["data"]["default-plugins.yaml"]


def test_metrics_of_each_pod_through_the_api_proxy_and_the_gateway_address(fake, client, sim_factory):
    prepared(fake)
    sim = sim_factory()
    fake.pod_backends["ms-inference-scheduling"] = sim.url
    fake.gateway_addresses["infra-inference-scheduling-inference-gateway"] = "203.0.113.7"
    t = target(client)
    t.deploy(timeout=30, **quiet)
    metrics = t.metrics()
    assert len(metrics) == 2 and all(k.startswith("ms-") for k in metrics)
    assert all(m.running == 0 for m in metrics.values())
    assert inventory.gateway_address(env(), client) == "http://203.0.113.7"
    with t.gateway() as url:
        assert url == "http://203.0.113.7"


def test_plan_checks_kinds_the_cluster_lacks_against_the_shipped_crds(fake, client, capsys):
    fake.install_crds(SCHEMAS, only=("inference.networking.k8s.io",))
    plan = target(client).plan()
    assert {"Gateway", "HTTPRoute", "InferencePool", "DestinationRule"} <= {row["kind"] for row in plan}
    assert "note:" not in capsys.readouterr().out  # nothing went unchecked


@pytest.mark.slow
def test_validate_against_the_clusters_own_crds(fake):
    fake.install_crds(SCHEMAS, only=("inference.networking.k8s.io",))
    res = subprocess.run([sys.executable, "-m", "kit", "validate", "-e", "istio", "--schemas", "cluster",
                          "--kubeconfig", str(fake.kubeconfig_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    # Only the InferencePool CRD is installed, so the Gateway API objects could not be checked.
    assert "note: Gateway/infra-inference-scheduling-inference-gateway: no schema" in res.stdout
    assert "note: InferencePool" not in res.stdout


@pytest.mark.slow
def test_the_cli_deploys_reports_and_destroys(fake):
    prepared(fake)
    base = [sys.executable, "-m", "kit"]
    flags = ["-e", "istio", "-n", NS, "--kubeconfig", str(fake.kubeconfig_path)]
    run = lambda *a: subprocess.run([*base, *a, *flags], capture_output=True, text=True, timeout=120,  # noqa: E731
                                    env={**os.environ})
    dep = run("deploy", "--timeout", "30")
    assert dep.returncode == 0, dep.stderr
    assert "applied: InferencePool/gaie-inference-scheduling" in dep.stdout and "ready: HTTPRoute/llm-d-" in dep.stdout
    st = run("status")
    assert st.returncode == 0 and "ms-inference-scheduling" in st.stdout and "Programmed" in st.stdout
    gone = run("destroy")
    assert gone.returncode == 0 and gone.stdout.count("deleted:") == 20
    assert "nothing of stack" in run("status").stdout
