"""Each scorer against scores computed by hand."""

import base64

import pytest

from kit.picker.framework import CycleState, Endpoint, InferenceRequest
from kit.picker.plugins.scorers.active_request import ActiveRequestParams, ActiveRequestScorer
from kit.picker.plugins.scorers.kv_cache import KVCacheUtilizationScorer
from kit.picker.plugins.scorers.load_aware import LoadAwareParams, LoadAwareScorer
from kit.picker.plugins.scorers.queue import QueueScorer
from kit.picker.plugins.scorers.running import RunningRequestsScorer
from kit.picker.plugins.scorers.session_affinity import SessionAffinityScorer
from kit.vllm_metrics import EndpointMetrics


def eps(**per_ep):
    """eps(waiting=[0, 5, 10]) → endpoints a, b, c with those metric values."""
    n = len(next(iter(per_ep.values())))
    out = []
    for i in range(n):
        m = EndpointMetrics(**{k: v[i] for k, v in per_ep.items() if k != "in_flight"})
        ep = Endpoint(name=f"ep{i}:8000", url=f"http://ep{i}:8000", metrics=m)
        ep.in_flight = per_ep.get("in_flight", [0] * n)[i]
        out.append(ep)
    return out


def scores(scorer, endpoints, headers=None):
    req = InferenceRequest(model="m", prompt="", headers=headers or {})
    got = scorer.score(CycleState(), req, endpoints)
    return [round(got[ep], 4) for ep in endpoints]


@pytest.mark.parametrize(("waiting", "expected"), [
    ([0, 5, 10], [1.0, 0.5, 0.0]),
    ([3, 3, 3], [1.0, 1.0, 1.0]),
    ([2, 6], [1.0, 0.0]),
    ([1], [1.0]),
], ids=["spread", "all-equal", "two", "single"])
def test_queue_scorer(waiting, expected):
    assert scores(QueueScorer(), eps(waiting=waiting)) == expected


@pytest.mark.parametrize(("running", "expected"), [([4, 8, 12], [1.0, 0.5, 0.0]), ([7, 7], [1.0, 1.0])],
                         ids=["spread", "equal"])
def test_running_requests_scorer(running, expected):
    assert scores(RunningRequestsScorer(), eps(running=running)) == expected


def test_kv_cache_utilization_scorer():
    assert scores(KVCacheUtilizationScorer(), eps(kv_usage=[0.0, 0.25, 1.0])) == [1.0, 0.75, 0.0]


@pytest.mark.parametrize(("threshold", "waiting", "expected"), [
    (128, [0, 64, 128, 500], [0.5, 0.25, 0.0, 0.0]),
    (10, [0, 1, 5], [0.5, 0.45, 0.25]),
], ids=["default-threshold", "small-threshold"])
def test_load_aware_scorer(threshold, waiting, expected):
    scorer = LoadAwareScorer(params=LoadAwareParams(threshold=threshold))
    assert scores(scorer, eps(waiting=waiting)) == expected


@pytest.mark.parametrize(("params", "in_flight", "expected"), [
    ({}, [0, 2, 4], [1.0, 0.5, 0.0]),
    ({"idleThreshold": 2}, [0, 2, 4], [1.0, 1.0, 0.0]),
    ({"maxBusyScore": 0.5}, [1, 2, 4], [0.375, 0.25, 0.0]),
    ({}, [0, 0], [1.0, 1.0]),
], ids=["default", "idle-threshold", "max-busy", "all-idle"])
def test_active_request_scorer(params, in_flight, expected):
    scorer = ActiveRequestScorer(params=ActiveRequestParams.model_validate(params))
    assert scores(scorer, eps(waiting=[0] * len(in_flight), in_flight=in_flight)) == expected


def test_session_affinity_scorer():
    endpoints = eps(waiting=[0, 0, 0])
    token = base64.b64encode(b"ep1:8000").decode()
    assert scores(SessionAffinityScorer(), endpoints, {"x-session-token": token}) == [0.0, 1.0, 0.0]
    assert scores(SessionAffinityScorer(), endpoints) == [0.0, 0.0, 0.0]
    assert scores(SessionAffinityScorer(), endpoints, {"x-session-token": "%%%"}) == [0.0, 0.0, 0.0]
