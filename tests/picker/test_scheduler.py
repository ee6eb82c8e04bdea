"""One scheduling cycle: filters, weighted totals, explanation, lifecycle hooks, the clock."""

import re
import time
from pathlib import Path

import pytest

from kit.picker import NoEndpoints, load_picker_config
from kit.picker.framework import Endpoint, InferenceRequest, PluginBase
from kit.picker.plugins import BUILTINS
from kit.picker.registry import Registry
from kit.vllm_metrics import EndpointMetrics

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def ep(name, waiting=0.0, kv=0.0, labels=None, age=0.0):
    return Endpoint(name=name, url=f"http://{name}", labels=labels or {},
                    metrics=EndpointMetrics(waiting=waiting, kv_usage=kv), updated=time.monotonic() - age)


def test_weighted_totals_pick_and_explanation():
    cfg = load_picker_config(HEAD + """
plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}]
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer, weight: 2}, {pluginRef: kv-cache-utilization-scorer, weight: 1}]
""")
    a, b = ep("a:1", waiting=0, kv=0.9), ep("b:1", waiting=4, kv=0.0)
    decision, state = cfg.scheduler.schedule(InferenceRequest(model="m", prompt="x", request_id="r1"), [a, b])
    rows = {c["endpoint"]: c for c in decision.candidates}
    assert rows["a:1"]["scores"] == {"queue-scorer": 1.0, "kv-cache-utilization-scorer": pytest.approx(0.1)}
    assert rows["a:1"]["total"] == pytest.approx(2.1) and rows["b:1"]["total"] == pytest.approx(1.0)
    assert decision.picked == ["a:1"] and state["picked"] == [a]


def test_filtered_endpoints_are_explained_and_an_empty_result_is_no_endpoints():
    cfg = load_picker_config(HEAD + "plugins: [{type: decode-filter}, {type: queue-scorer}]\n")
    d, p = ep("d:1", labels={"llm-d.ai/role": "decode"}), ep("p:1", labels={"llm-d.ai/role": "prefill"})
    decision, _ = cfg.scheduler.schedule(InferenceRequest(model="m", prompt="x"), [d, p])
    assert decision.picked == ["d:1"]
    assert {c["endpoint"]: c["filtered_by"] for c in decision.candidates} == {"d:1": None, "p:1": "decode-filter"}
    with pytest.raises(NoEndpoints, match="decode-filter left no endpoint"):
        cfg.scheduler.schedule(InferenceRequest(model="m", prompt="x"), [p])


def test_unhealthy_and_excluded_endpoints_are_skipped():
    cfg = load_picker_config(HEAD + "plugins: [{type: random-picker}]\n")
    a, b = ep("a:1"), ep("b:1")
    b.healthy = False
    for _ in range(20):
        assert cfg.scheduler.schedule(InferenceRequest(model="m", prompt=""), [a, b])[0].picked == ["a:1"]
    with pytest.raises(NoEndpoints):
        cfg.scheduler.schedule(InferenceRequest(model="m", prompt=""), [a, b], exclude=frozenset({"a:1"}))


class Recorder(PluginBase):
    """A test plugin that implements every request-lifecycle hook and records the calls."""

    type = "recorder"

    def __init__(self, name=None, params=None):
        super().__init__(name, params)
        self.calls = []

    def pre_request(self, state, req, ep):
        self.calls.append(("pre", req.request_id, ep.name))

    def response_headers(self, req, ep):
        return {"x-recorded": ep.name}

    def response_complete(self, req, ep):
        self.calls.append(("done", req.request_id, ep.name))

    def gauges(self):
        return {"recorder_calls": float(len(self.calls))}


def test_lifecycle_hooks_reach_every_configured_plugin_that_implements_them():
    registry = Registry({**BUILTINS, "recorder": Recorder})
    cfg = load_picker_config(HEAD + """
plugins: [{type: recorder}, {type: queue-scorer}, {type: prefix-cache-scorer}, {type: session-affinity-scorer}]
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: prefix-cache-scorer}, {pluginRef: session-affinity-scorer}]
""", registry=registry)
    sched = cfg.scheduler
    [recorder] = [p for p in sched.plugins if isinstance(p, Recorder)]  # configured, in no profile
    a, b = ep("a:1"), ep("b:1")
    req = InferenceRequest(model="m", prompt="p" * 200, request_id="r7")
    _, state = sched.schedule(req, [a, b])
    chosen = state["picked"][0]
    sched.pre_request(state, req, chosen)
    headers = sched.response_headers(req, chosen)
    sched.response_complete(req, chosen)
    assert recorder.calls == [("pre", "r7", chosen.name), ("done", "r7", chosen.name)]
    assert headers["x-recorded"] == chosen.name and "x-session-token" in headers  # session affinity's token
    assert sched.gauges()["recorder_calls"] == 2.0
    assert sched.gauges()["inference_extension_prefix_indexer_size"] > 0  # the prefix index learned at pre_request


PLUGINS = Path(__file__).resolve().parents[2] / "kit/picker/plugins"


def test_no_plugin_reads_a_system_clock():
    """Time-dependent logic reads ``self.clock``, so a fleet simulator can run the picker on virtual time."""
    pattern = re.compile(r"\bimport time\b|\btime\.(monotonic|time|perf_counter)|datetime\.now|\bfrom time import")
    offenders = [f.name for f in PLUGINS.rglob("*.py") if pattern.search(f.read_text())]
    assert offenders == []


def test_the_loader_gives_every_plugin_and_the_detector_the_clock():
    def clock():
        return 42.0

    cfg = load_picker_config(HEAD + """
plugins: [{type: queue-scorer}, {type: utilization-detector, name: filter}, {type: probabilistic-admitter}]
""", clock=clock)
    sched = cfg.scheduler
    assert cfg.clock is clock and sched.clock is clock and sched.saturation.clock is clock
    assert all(p.clock is clock for p in sched.plugins)
    fresh = Endpoint(name="a:1", url="", updated=41.9)
    assert sched.saturation.saturation([fresh]) == 0.0  # 0.1 s old on the virtual clock: fresh
