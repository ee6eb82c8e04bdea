"""Saturation, staleness and admission, on a virtual clock.

Saturation cases are ported from GIE v1.4.0
``pkg/epp/saturationdetector/framework/plugins/utilizationdetector/detector_test.go``; the filter follows
llm-d-router's ``utilization-detector``; the admitter follows llm-d-router's ``probabilistic-admitter``.
"""

import pytest

from kit.picker import InferenceRequest, load_picker_config
from kit.picker.framework import CycleState, Endpoint
from kit.picker.plugins.admission import (
    ProbabilisticAdmitter,
    ProbabilisticParams,
    UtilizationDetector,
    UtilizationParams,
)
from kit.vllm_metrics import EndpointMetrics

NOW = 1000.0
HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


class Clock:
    """A virtual clock the test moves by hand."""

    def __init__(self, t: float = NOW):
        self.t = t

    def __call__(self) -> float:
        return self.t


def ep(name, waiting=0.0, kv=0.0, age=0.0, scraped=True):
    return Endpoint(name=name, url="", metrics=EndpointMetrics(waiting=waiting, kv_usage=kv),
                    updated=NOW - age if scraped else 0.0)


def detector(**params):
    d = UtilizationDetector(params=UtilizationParams.model_validate(params))
    d.clock = Clock()
    return d


UPSTREAM = {"queueDepthThreshold": 5, "kvCacheUtilThreshold": 0.9, "metricsStalenessThreshold": "100ms"}


@pytest.mark.parametrize(("pods", "expected"), [
    ([], 1.0),
    ([(2, 0.5, 0.0)], 0.5 / 0.9),
    ([(1, 0.1, 0.2)], 1.0),
    ([(10, 0.1, 0.0)], 2.0),
    ([(1, 0.95, 0.0)], 0.95 / 0.90),
    ([(1, 0.1, None)], 1.0),
    ([(1, 0.1, 0.0), (0, 0.2, 0.0)], (0.2 + 0.2 / 0.9) / 2),
    ([(1, 0.1, 0.0), (0, 0.2, 0.3)], 0.6),
    ([(1, 0.1, 0.0), (15, 0.2, 0.0)], 1.6),
    ([(1, 0.1, 0.2), (20, 0.2, 0.0), (1, 0.99, 0.0)], (1.0 + 4.0 + 1.1) / 3),
    ([(5, 0.1, 0.0)], 1.0),
    ([(1, 0.1, 0.101)], 1.0),
], ids=["no-pods", "good", "stale", "high-queue", "high-kv", "never-scraped", "all-good", "one-stale",
        "one-bad", "all-bad", "queue-at-threshold", "just-stale"])
def test_upstream_saturation(pods, expected):
    eps = [ep(f"p{i}", w, kv, age or 0.0, scraped=age is not None) for i, (w, kv, age) in enumerate(pods)]
    assert detector(**UPSTREAM).saturation(eps) == pytest.approx(expected, abs=1e-4)


def test_staleness_follows_the_injected_clock():
    d = detector()
    a = ep("a", waiting=1)
    assert d.saturation([a]) == pytest.approx(0.2)
    d.clock.t += 0.5  # the simulator's clock moves; no scrape happened
    assert d.saturation([a]) == 1.0


def test_the_filter_drops_stale_and_saturated_endpoints():
    d = detector(headroom=0.2)  # limits: queue 6, KV 0.96
    fresh, busy, full, stale = ep("fresh", 5, 0.95), ep("busy", 6), ep("full", 0, 0.96), ep("stale", age=0.3)
    kept = d.filter(CycleState(), InferenceRequest(model="m", prompt=""), [fresh, busy, full, stale])
    assert kept == [fresh]


def test_the_filter_fails_open():
    d = detector()
    eps = [ep("stale", age=5.0), ep("busy", waiting=50)]
    assert d.filter(CycleState(), InferenceRequest(model="m", prompt=""), eps) == eps


def test_a_hung_server_leaves_the_candidates_once_its_metrics_go_stale():
    """The picker's half of a hung server: with the detector as a filter, stale metrics take an endpoint out."""
    clock = Clock()
    cfg = load_picker_config(HEAD + """
plugins: [{type: utilization-detector}, {type: queue-scorer}]
schedulingProfiles:
- name: default
  plugins: [{pluginRef: utilization-detector}, {pluginRef: queue-scorer}]
saturationDetector: {pluginRef: utilization-detector}
""", clock=clock)
    hung, ok = ep("hung:1"), ep("ok:1", waiting=3)
    req = InferenceRequest(model="m", prompt="")
    assert cfg.scheduler.schedule(req, [hung, ok])[0].picked == ["hung:1"]  # shorter queue
    clock.t += 1.0
    ok.updated = clock.t  # only ok:1 keeps answering its scrapes
    decision, _ = cfg.scheduler.schedule(req, [hung, ok])
    assert decision.picked == ["ok:1"]
    assert {c["endpoint"]: c["filtered_by"] for c in decision.candidates}["hung:1"] == "utilization-detector"


def test_sheddable_requests_are_refused_while_the_pool_is_saturated():
    clock = Clock()
    cfg = load_picker_config(HEAD + "plugins: [{type: queue-scorer}]\n", clock=clock)
    a = ep("a", waiting=1)
    shed = InferenceRequest(model="m", prompt="", priority=-1)
    assert cfg.scheduler.admit(shed, [a]) is None
    assert cfg.scheduler.admit(InferenceRequest(model="m", prompt=""), []) is None  # not sheddable
    clock.t += 1.0  # metrics now stale: saturated
    assert "saturated" in cfg.scheduler.admit(shed, [a])


class FixedRandom:
    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


@pytest.mark.parametrize(("sat", "probability"), [(0.0, 0.0), (0.15, 0.0228), (0.2, 0.096), (0.3, 0.729),
                                                  (0.34, 1.0), (2.0, 1.0)])
def test_the_admitter_shedding_curve(sat, probability):
    assert ProbabilisticAdmitter().shed_probability(sat) == pytest.approx(probability, abs=1e-3)


def test_the_admitter_sheds_only_sheddable_requests():
    low, high = ProbabilisticAdmitter(rng=FixedRandom(0.5)), ProbabilisticAdmitter(rng=FixedRandom(0.99))
    busy = [ep("a", waiting=1.5), ep("b", waiting=1.5)]  # saturation 0.3: probability 0.73
    sheddable, normal = InferenceRequest(model="m", prompt="", priority=-1), InferenceRequest(model="m", prompt="")
    assert "shed" in low.admit(sheddable, busy)
    assert high.admit(sheddable, busy) is None
    assert low.admit(normal, busy) is None
    assert low.admit(sheddable, []) is None
    assert ProbabilisticAdmitter(rng=FixedRandom(0.99)).pool_saturation([ep("x", scraped=False)]) == 1.0


def test_the_scheduler_runs_configured_admitters():
    cfg = load_picker_config(HEAD + """
plugins:
- {type: probabilistic-admitter, parameters: {k: 1000000}}
- {type: random-picker}
- {type: utilization-detector, parameters: {queueDepthThreshold: 999999999, kvCacheUtilThreshold: 1.0}}
saturationDetector: {pluginRef: utilization-detector}
""", clock=Clock())
    busy = [ep("a", waiting=2)]
    assert "probabilistic-admitter" in cfg.scheduler.admit(InferenceRequest(model="m", prompt="", priority=-1), busy)


@pytest.mark.parametrize("params", [{"queueDepthThreshold": 0}, {"kvCacheUtilThreshold": 0}, {"power": -1},
                                    {"k": 0}])
def test_admitter_parameters_must_be_positive(params):
    with pytest.raises(ValueError):
        ProbabilisticParams.model_validate(params)
