"""Opt-in: the whole cycle against the cluster your kubeconfig points to (``pytest -m cluster``).

Uses the CPU-only ``sim`` environment (upstream's vLLM simulator image), so a kind or minikube
cluster with Istio is enough; docs/cluster.md shows how to set one up. Namespace: $KIT_TEST_NAMESPACE
(default kit-e2e, created by you); release postfix: kit-e2e-<random>, removed at the end.
"""

from __future__ import annotations

import os
import uuid

import pytest

from kit import cluster as kc
from kit.client import request
from kit.environments import load_environment
from kit.vllm_metrics import parse_vllm_metrics

pytestmark = pytest.mark.cluster


@pytest.fixture
def live():
    env = load_environment("sim", namespace=os.environ.get("KIT_TEST_NAMESPACE", "kit-e2e"),
                           postfix=f"kit-e2e-{uuid.uuid4().hex[:6]}")
    client = kc.Cluster(kubeconfig=os.environ.get("KUBECONFIG"))
    problems = kc.prerequisites(env, client)
    if problems:
        pytest.fail("the cluster is not ready for the kit:\n" + "\n".join(problems))
    yield env, client
    kc.destroy(env, client, say=print)


def test_deploy_request_status_destroy(live):
    env, client = live
    st = kc.deploy(env, client, timeout=600, say=print)
    assert st["ready"] and len([p for p in st["pods"] if p["role"] == "model-server"]) == env.replicas
    with kc.gateway_url(env, client, kubeconfig=os.environ.get("KUBECONFIG")) as url:
        res = request(url, "Hello from the kit's live test", chat=True, max_tokens=8)
        assert res.ok, res.error
    metrics = kc.pod_metrics(env, client)
    assert sum(parse_vllm_metrics(t).requests_ok for t in metrics.values()) >= 1
    assert kc.destroy(env, client, say=print)
    assert kc.status(env, client)["objects"] == []
