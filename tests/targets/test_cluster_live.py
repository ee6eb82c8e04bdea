"""Opt-in: the whole cycle against the cluster your kubeconfig points to (``pytest -m cluster``).

Uses the CPU-only ``sim`` environment (upstream's vLLM simulator image), so a kind or minikube
cluster with Istio is enough; docs/how-to/deploy-to-a-cluster.md shows how to set one up. Namespace: $KIT_TEST_NAMESPACE
(default kit-e2e, created by you); release postfix: kit-e2e-<random>, removed at the end.
"""

from __future__ import annotations

import os
import uuid

import pytest

from kit.experiments.client import request
from kit.manifests.environments import load_environment
from kit.targets import target_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def live():
    env = load_environment("sim", namespace=os.environ.get("KIT_TEST_NAMESPACE", "kit-e2e"),
                           postfix=f"kit-e2e-{uuid.uuid4().hex[:6]}")
    target = target_for(env, kubeconfig=os.environ.get("KUBECONFIG"))
    problems = target.check()
    if problems:
        pytest.fail("the cluster is not ready for the kit:\n" + "\n".join(problems))
    yield target
    target.destroy(say=print)


def test_deploy_request_status_destroy(live):
    st = live.deploy(timeout=600, say=print)
    assert st.ready and len([p for p in st.detail["pods"] if p["role"] == "model-server"]) == live.env.replicas
    with live.gateway() as url:
        res = request(url, "Hello from the kit's live test", chat=True, max_tokens=8)
        assert res.ok, res.error
    assert sum(m.requests_ok for m in live.metrics().values()) >= 1
    assert live.destroy(say=print)
    assert not live.status().deployed
