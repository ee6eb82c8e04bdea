"""no-hit-lru-scorer, with cases ported from llm-d-inference-scheduler v0.7.0
``pkg/plugins/scorer/no_hit_lru_test.go``."""

import pytest

from kit.picker import InferenceRequest, load_picker_config
from kit.picker.framework import CycleState, Endpoint
from kit.picker.plugins.approx_prefix import PrefixMatch
from kit.picker.plugins.scorers.no_hit_lru import NoHitLRUParams, NoHitLRUScorer

A, B, C = (Endpoint(name=n, url=f"http://{n}") for n in ("pod-a", "pod-b", "pod-c"))
REQ = InferenceRequest(model="m", prompt="")


def state_with(servers):
    state = CycleState()
    if servers is not None:
        state["prefix-cache-scorer"] = PrefixMatch(hashes=[1, 2], servers=servers)
    return state


@pytest.mark.parametrize(("eps", "servers", "expected"), [
    ([A, B, C], {}, [1.0, 0.5, 0.0]),
    ([A, B, C], {"server1": 5}, [0.5, 0.5, 0.5]),
    ([A], {}, [1.0]),
    ([A], None, [1.0]),
], ids=["cold-never-used", "cache-hit-neutral", "single-endpoint", "no-prefix-state-is-cold"])
def test_upstream_scores(eps, servers, expected):
    got = NoHitLRUScorer().score(state_with(servers), REQ, eps)
    assert [got[e] for e in eps] == expected


def test_upstream_prefers_the_least_recently_used_after_cold_requests():
    s = NoHitLRUScorer()
    eps = [A, B, C]

    def cold_pick(target):
        state = state_with({})
        s.score(state, REQ, eps)
        s.pre_request(state, REQ, target)

    def scores(servers=None):
        got = s.score(state_with({} if servers is None else servers), REQ, eps)
        return [got[e] for e in eps]

    cold_pick(A)
    assert scores() == [0.0, 1.0, 0.5]  # b and c never took a cold request; a did
    warm = state_with({"server1": 1})
    assert set(s.score(warm, REQ, eps).values()) == {0.5}
    s.pre_request(warm, REQ, B)  # a warm request leaves the LRU untouched
    assert scores() == [0.0, 1.0, 0.5]
    cold_pick(B)
    assert max(zip(scores(), "abc", strict=True))[1] == "c"
    cold_pick(C)
    assert max(zip(scores(), "abc", strict=True))[1] == "a"


def test_lru_size_bounds_the_memory_and_non_positive_means_the_default():
    s = NoHitLRUScorer(params=NoHitLRUParams(lruSize=2))
    for target in (A, B, C):
        state = state_with({})
        s.score(state, REQ, [A, B, C])
        s.pre_request(state, REQ, target)
    assert list(s.lru) == ["pod-b", "pod-c"]
    assert NoHitLRUParams(lruSize=0).lru_size == 1024


def test_with_the_prefix_scorer_in_one_profile():
    cfg = load_picker_config("""apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: prefix-cache-scorer, parameters: {autoTune: false, blockSizeTokens: 1}}
- {type: no-hit-lru-scorer}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: no-hit-lru-scorer}]
""")
    sched = cfg.scheduler
    a, b = Endpoint(name="a:1", url=""), Endpoint(name="b:1", url="")
    first = InferenceRequest(model="m", prompt="aaaabbbb")
    decision, state = sched.schedule(first, [a, b])
    assert {c["scores"]["no-hit-lru-scorer"] for c in decision.candidates} == {1.0, 0.0}  # cold: ranked
    sched.pre_request(state, first, state["picked"][0])
    decision, _ = sched.schedule(InferenceRequest(model="m", prompt="aaaacccc"), [a, b])
    assert {c["scores"]["no-hit-lru-scorer"] for c in decision.candidates} == {0.5}  # warm: neutral
