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
    MaxScorePicker,
    PickerParams,
    RandomPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)

A, B, C = (Endpoint(name=n, url=f"http://{n}") for n in ("a:1", "b:1", "c:1"))


def counts(picker, scored, n=3000):
    return Counter(picker.pick(CycleState(), scored)[0].name for _ in range(n))


def test_max_score_picks_the_highest_and_breaks_ties_randomly():
    picker = MaxScorePicker(rng=random.Random(1))
    assert picker.pick(CycleState(), [(A, 0.2), (B, 0.9), (C, 0.5)]) == [B]
    tie = counts(picker, [(A, 1.0), (B, 1.0), (C, 0.0)])
    assert set(tie) == {"a:1", "b:1"} and min(tie.values()) > 1200


def test_max_score_returns_the_top_n():
    picker = MaxScorePicker(params=PickerParams(maxNumOfEndpoints=2), rng=random.Random(0))
    assert picker.pick(CycleState(), [(A, 0.2), (B, 0.9), (C, 0.5)]) == [B, C]


def test_random_picker_is_uniform_and_ignores_scores():
    got = counts(RandomPicker(rng=random.Random(2)), [(A, 1.0), (B, 0.0), (C, 0.0)])
    assert all(800 < got[n] < 1200 for n in ("a:1", "b:1", "c:1"))


def test_weighted_random_follows_scores_and_falls_back_to_random():
    got = counts(WeightedRandomPicker(rng=random.Random(3)), [(A, 0.75), (B, 0.25), (C, 0.0)], 4000)
    assert got["c:1"] == 0 and 2700 < got["a:1"] < 3300
    zero = counts(WeightedRandomPicker(rng=random.Random(4)), [(A, 0.0), (B, 0.0)])
    assert set(zero) == {"a:1", "b:1"}


def test_round_robin_cycles_in_name_order():
    picker = RoundRobinPicker()
    picks = [picker.pick(CycleState(), [(C, 1.0), (A, 0.0), (B, 0.5)])[0].name for _ in range(6)]
    assert picks == ["a:1", "b:1", "c:1"] * 2


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
