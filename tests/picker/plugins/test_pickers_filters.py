"""Pickers and filters."""

import random
from collections import Counter

import pytest

from kit.picker.framework import CycleState, Endpoint, InferenceRequest
from kit.picker.plugins.filters import (
    ByLabelFilter,
    ByLabelParams,
    DecodeFilter,
    LabelSelectorFilter,
    LabelSelectorParams,
    PrefillFilter,
)
from kit.picker.plugins.pickers import (
    LeastRecentMaxScorePicker,
    MaxScorePicker,
    PickerParams,
    RandomPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)

A, B, C, D, E = (Endpoint(name=n, url=f"http://{n}") for n in ("a:1", "b:1", "c:1", "d:1", "e:1"))


def counts(picker, scored, n=3000):
    return Counter(picker.pick(CycleState(), scored)[0].name for _ in range(n))


def test_max_score_picks_the_highest_and_breaks_ties_randomly():
    picker = MaxScorePicker(rng=random.Random(1))
    assert picker.pick(CycleState(), [(A, 0.2), (B, 0.9), (C, 0.5)]) == [B]
    tie = counts(picker, [(A, 1.0), (B, 1.0), (C, 0.0)])
    assert set(tie) == {"a:1", "b:1"} and min(tie.values()) > 1200


@pytest.mark.parametrize(("n", "scored", "expected"), [
    (1, [(A, 10), (B, 25), (C, 15)], [{"b:1"}]),
    (2, [(A, 50), (B, 50), (C, 30)], [{"a:1", "b:1"}, {"a:1", "b:1"}]),
    (2, [(A, 20), (B, 25), (C, 30)], [{"c:1"}, {"b:1"}]),
    (4, [(A, 20), (B, 25), (C, 30)], [{"c:1"}, {"b:1"}, {"a:1"}]),
    (3, [(A, 30), (B, 25), (C, 30)], [{"a:1", "c:1"}, {"a:1", "c:1"}, {"b:1"}]),
], ids=["single-max", "tie", "more-than-needed", "fewer-than-needed", "exactly-needed"])
def test_upstream_max_score_cases(n, scored, expected):
    """Ported from GIE v1.4.0 picker_test.go TestPickMaxScorePicker (ties: any order among equals)."""
    for seed in range(5):
        got = MaxScorePicker(params=PickerParams(maxNumOfEndpoints=n), rng=random.Random(seed)).pick(
            CycleState(), scored)
        assert len(got) == len(expected)
        assert all(ep.name in allowed for ep, allowed in zip(got, expected, strict=True))


def test_random_picker_is_uniform_and_ignores_scores():
    got = counts(RandomPicker(rng=random.Random(2)), [(A, 1.0), (B, 0.0), (C, 0.0)])
    assert all(800 < got[n] < 1200 for n in ("a:1", "b:1", "c:1"))


@pytest.mark.parametrize("scored", [
    [(A, 10), (B, 90)],
    [(A, 100), (B, 100), (C, 100)],
    [(A, 30), (B, 0)],
    [(A, 100), (B, 90), (C, 50), (D, 30), (E, 20)],
], ids=["high-weight-dominance", "equal-weights", "zero-weight-excluded", "multi-tier"])
def test_upstream_weighted_random_follows_scores(scored):
    """Ported from GIE v1.4.0 picker_test.go TestPickWeightedRandomPicker: each endpoint is picked in
    proportion to its score, within 5 points, over 10,000 picks."""
    got = counts(WeightedRandomPicker(rng=random.Random(3)), scored, 10_000)
    total = sum(s for _, s in scored)
    for ep, s in scored:
        assert abs(got[ep.name] / 10_000 - s / total) <= 0.05


def test_weighted_random_keeps_zero_score_endpoints_selectable():
    """GIE v1.4.0: zero scores get key 0, so they fill places the positive ones cannot."""
    picker = WeightedRandomPicker(params=PickerParams(maxNumOfEndpoints=2), rng=random.Random(4))
    for _ in range(50):
        got = picker.pick(CycleState(), [(A, 0.0), (B, 0.7), (C, 0.0)])
        assert got == [B, A]  # the positive endpoint first, then the first zero-score one


def test_weighted_random_with_every_score_zero_is_uniform():
    zero = counts(WeightedRandomPicker(rng=random.Random(4)), [(A, 0.0), (B, 0.0)])
    assert set(zero) == {"a:1", "b:1"} and min(zero.values()) > 1200


def test_max_num_of_endpoints_below_one_means_the_default():
    assert PickerParams(maxNumOfEndpoints=0).max_num_of_endpoints == 1


def test_round_robin_cycles_in_name_order():
    picker = RoundRobinPicker()
    picks = [picker.pick(CycleState(), [(C, 1.0), (A, 0.0), (B, 0.5)])[0].name for _ in range(6)]
    assert picks == ["a:1", "b:1", "c:1"] * 2


def test_least_recent_max_score_takes_the_top_score_and_rotates_among_ties():
    picker = LeastRecentMaxScorePicker()
    assert picker.pick(CycleState(), [(A, 0.2), (B, 0.9), (C, 0.5)]) == [B]  # the score decides first
    tied = [(C, 1.0), (A, 1.0), (B, 1.0), (D, 0.0)]
    picks = [picker.pick(CycleState(), tied)[0].name for _ in range(6)]
    assert picks == ["a:1", "c:1", "b:1"] * 2  # never-picked first (a, c in name order), then the oldest pick
    assert picker.pick(CycleState(), [(A, 0.5), (B, 0.5)]) == [A]  # a was picked longer ago than b
    two = LeastRecentMaxScorePicker(params=PickerParams(maxNumOfEndpoints=2))
    assert [e.name for e in two.pick(CycleState(), [(A, 1), (B, 1), (C, 2)])] == ["c:1", "a:1"]
    assert [e.name for e in two.pick(CycleState(), [(A, 1), (B, 1), (C, 2)])] == ["c:1", "b:1"]


ROLES = {"d": "decode", "p": "prefill", "pd": "prefill-decode", "none": None}


def labelled():
    return [Endpoint(name=k, url="", labels={"llm-d.ai/role": v} if v else {}) for k, v in ROLES.items()]


@pytest.mark.parametrize(("plugin", "kept"), [
    (DecodeFilter(), ["d", "pd", "none"]),
    (PrefillFilter(), ["p"]),
    (ByLabelFilter(params=ByLabelParams(label="llm-d.ai/role", validValues=["prefill"], allowsNoLabel=True)),
     ["p", "none"]),
    (LabelSelectorFilter(params=LabelSelectorParams(matchLabels={"llm-d.ai/role": "decode"})), ["d"]),
], ids=["decode", "prefill", "by-label", "label-selector"])
def test_filters(plugin, kept):
    req = InferenceRequest(model="m", prompt="")
    assert [ep.name for ep in plugin.filter(CycleState(), req, labelled())] == kept
