"""The scheduling cycle's one-pass code (docs/results/gateway.md, instructions per request) gives what the
straightforward formulas give, bit for bit: weighted totals, min/max normalisation, the max-score picker's
top scores, and admission without admitters."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from kit.picker import load_picker_config
from kit.picker.framework import Endpoint, InferenceRequest, min_max
from kit.picker.plugins.pickers import MaxScorePicker, PickerParams, RoundRobinPicker
from kit.picker.scheduler import _weighted_totals

EPS = [Endpoint(name=f"e{i}:8000", url=f"http://e{i}:8000") for i in range(6)]
any_float = st.floats(allow_nan=True, allow_infinity=True)
score = st.one_of(st.floats(0.0, 1.0), any_float, st.integers(-3, 3))


def clamp(s: float) -> float:
    return s if 0.0 <= s <= 1.0 else float(s > 1.0)


def straightforward_totals(eps, scored):
    """Σ weight × clamped score per endpoint, by endpoint, scorer after scorer."""
    totals = {ep: 0.0 for ep in eps}
    for w, sc in scored:
        for ep, s in sc.items():
            totals[ep] = totals[ep] + w * clamp(s)
    return [(ep, totals[ep]) for ep in eps]


def same(a: list, b: list) -> bool:
    """Equal, NaN equal to NaN and 0.0 told from -0.0."""
    return len(a) == len(b) and all(
        x is y or (isinstance(x, float) and isinstance(y, float)
                   and ((math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))))
        for x, y in zip(a, b, strict=True))


@st.composite
def scorer_outputs(draw):
    n = draw(st.integers(1, len(EPS)))
    eps = EPS[:n]
    scored = []
    for _ in range(draw(st.integers(0, 4))):
        w = draw(st.one_of(st.floats(-5, 5), st.integers(0, 5)))
        keys = list(eps)
        if draw(st.booleans()):  # a scorer that leaves endpoints out or returns them in another order
            keys = draw(st.permutations(eps))[:draw(st.integers(0, n))]
        scored.append((w, {ep: draw(score) for ep in keys}))
    return eps, scored


@given(scorer_outputs())
def test_weighted_totals_equal_the_straightforward_sum(case):
    eps, scored = case
    got = _weighted_totals(eps, scored)
    want = straightforward_totals(eps, scored)
    assert [ep for ep, _ in got] == eps
    assert same([t for _, t in got], [t for _, t in want])


@given(st.lists(st.one_of(any_float, st.integers(-10, 10)), max_size=len(EPS)), st.booleans())
def test_min_max_equals_min_and_max(values, invert):
    vals = dict(zip(EPS, values, strict=False))
    got = min_max(vals, invert)
    if not vals:
        assert got == {}
        return
    lo, hi = min(vals.values()), max(vals.values())
    want = dict.fromkeys(vals, 1.0) if hi == lo else \
        {ep: ((hi - v) if invert else (v - lo)) / (hi - lo) for ep, v in vals.items()}
    assert list(got) == list(want)
    assert same(list(got.values()), list(want.values()))


@given(st.lists(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 7.0]), any_float), max_size=len(EPS)), st.integers(0, 99))
def test_max_score_picker_draws_as_max_then_filter(scores, seed):
    scored = list(zip(EPS, scores, strict=False))
    top = max((s for _, s in scored), default=0.0)
    best = [ep for ep, s in scored if s == top]
    want = [best[0] if len(best) == 1 else random.Random(seed).choice(best)] if best else []
    assert MaxScorePicker(rng=random.Random(seed)).pick(None, scored) == want


def test_admission_without_admitters_refuses_only_sheddable_requests_on_a_saturated_pool():
    sched = load_picker_config("apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
                               "kind: EndpointPickerConfig\nplugins:\n- type: queue-scorer\n"
                               "schedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n").scheduler
    eps = [Endpoint(name="a:1", url="http://a:1")]
    eps[0].metrics.waiting = 10_000
    eps[0].updated = sched.clock()
    assert sched.admit(InferenceRequest("m", "p", priority=0), eps) is None
    assert "saturated" in sched.admit(InferenceRequest("m", "p", priority=-1), eps)


@given(st.permutations(EPS), st.integers(1, 8))
def test_round_robin_takes_each_endpoint_in_name_order_in_turn(order, n):
    picker = RoundRobinPicker(params=PickerParams(maxNumOfEndpoints=n))
    by_name = sorted(EPS, key=lambda ep: ep.name)
    for turn in range(len(EPS) + 2):
        start = turn % len(EPS)
        assert picker.pick(None, [(ep, 0.0) for ep in order]) == (by_name[start:] + by_name[:start])[:n]
