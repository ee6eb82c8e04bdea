"""llm-d-router v0.10.0's load and affinity plugins: inflight-load-producer, token-load-scorer, active-request-scorer,
prefix-cache-affinity-filter, prefix-cache-scorer, no-hit-lru-scorer. Cases follow upstream's tests
(inflightload/producer_test.go and token_estimator_test.go, tokenload/token_load_test.go,
prefixcacheaffinity/plugin_test.go, prefix/plugin_test.go, activerequest/active_request_test.go), rewritten.
"""

import pytest

from kit.picker import Endpoint, InferenceRequest, load_picker_config
from kit.picker.framework import CycleState
from kit.picker.plugins.router.data import INFLIGHT, PREFIX_MATCH, UNCACHED, MatchInfo, key
from kit.picker.plugins.router.filters import AffinityParams, PrefixCacheAffinityFilter
from kit.picker.plugins.router.inflight import InflightLoadProducer, InflightParams
from kit.picker.plugins.router.scorers import (
    ActiveRequestParams,
    ActiveRequestScorer,
    NoHitLRUScorer,
    PrefixCacheScorer,
    PrefixScorerParams,
    TokenLoadParams,
    TokenLoadScorer,
)


def eps(n: int = 3) -> list[Endpoint]:
    return [Endpoint(name=f"10.0.0.{i}:8000", url=f"http://10.0.0.{i}:8000") for i in range(1, n + 1)]


def tokens_request(n: int, body: dict | None = None, chat: bool = False) -> InferenceRequest:
    req = InferenceRequest("m", "", tokens=list(range(n)), body=body)
    if chat:
        req.messages = []
    return req


class Load:
    """A stand-in InFlightLoad source: fixed (tokens, requests) per endpoint."""

    def __init__(self, loads: dict[str, tuple[int, int]]):
        self.loads = loads

    def load(self, name: str) -> tuple[int, int]:
        return self.loads.get(name, (0, 0))


# ------------------------------------------------------------------------------------------ token-load
def test_token_load_scores_in_flight_tokens_against_the_threshold():
    scorer = TokenLoadScorer(params=TokenLoadParams(queueThresholdTokens=1000))
    a, b, c = eps()
    state = CycleState({key(INFLIGHT): Load({b.name: (500, 1), c.name: (1000, 2)})})
    assert scorer.score(state, tokens_request(1), [a, b, c]) == {a: 1.0, b: 0.5, c: 0.0}


def test_token_load_adds_this_requests_uncached_tokens():
    scorer = TokenLoadScorer(params=TokenLoadParams(queueThresholdTokens=1000))
    a, b, c = eps()
    state = CycleState({key(INFLIGHT): Load({b.name: (250, 1), c.name: (750, 1)}),
                        key(UNCACHED): {a.name: 250, b.name: 250, c.name: 250}})
    assert scorer.score(state, tokens_request(1), [a, b, c]) == {a: 0.75, b: 0.5, c: 0.0}


def test_token_load_without_data_is_no_load_and_a_bad_threshold_means_the_default():
    a, = eps(1)
    assert TokenLoadScorer().score(CycleState(), tokens_request(1), [a]) == {a: 1.0}
    assert TokenLoadScorer(params=TokenLoadParams(queueThresholdTokens=0)).threshold == 4194304


# --------------------------------------------------------------------------------------- in-flight load
def test_tokens_are_released_at_the_first_chunk_and_the_request_at_the_end():
    producer = InflightLoadProducer()
    a, = eps(1)
    req = tokens_request(4)
    state = CycleState()
    producer.prepare_request_data(state, req, [a])
    producer.pre_request(state, req, a)
    assert producer.load(a.name) == (4, 1)
    producer.response_start(req, a)
    assert producer.load(a.name) == (0, 1)
    producer.response_complete(req, a)
    assert producer.load(a.name) == (0, 0)


def test_a_single_chunk_answer_releases_both():
    producer = InflightLoadProducer()
    a, = eps(1)
    req = tokens_request(4)
    state = CycleState()
    producer.pre_request(state, req, a)
    producer.response_complete(req, a)  # no separate first chunk: the end releases everything
    assert producer.load(a.name) == (0, 0)


def test_the_cached_prefix_is_not_counted_and_release_returns_to_zero():
    producer = InflightLoadProducer(params=InflightParams(addEstimatedOutputTokens=True))
    a, b = eps(2)
    req = tokens_request(8)
    # block size 4: 2 blocks; a holds 1 of them, b holds both
    state = CycleState({key(PREFIX_MATCH): {a.name: MatchInfo(1, 2, 4), b.name: MatchInfo(2, 2, 4)}})
    producer.prepare_request_data(state, req, [a, b])
    assert state[key(UNCACHED, producer.name)] == {a.name: 4 + 12, b.name: 0 + 12}  # uncached input + round(8 × 1.5)
    producer.pre_request(state, req, a)
    assert producer.load(a.name) == (16, 1)
    producer.response_start(req, a)  # with the estimated output counted, tokens stay until the end
    assert producer.load(a.name) == (16, 1)
    producer.response_complete(req, a)
    assert producer.load(a.name) == (0, 0)


def test_the_prefix_index_is_trusted_over_a_smaller_prompt_estimate():
    producer = InflightLoadProducer()
    assert producer.request_tokens(MatchInfo(1, 2, 4), 5, tokens_request(5)) == 4


@pytest.mark.parametrize(("ratio", "cap", "operator", "prompt", "expected"), [
    (2.0, None, None, 0, 0), (2.0, None, None, 8, 16), (0.0, None, None, 100, 0), (1.5, 50, None, 100, 50),
    (1.5, 500, None, 100, 150), (1.5, 0, None, 100, 0), (1.5, -10, None, 100, 150), (1.5, None, 40, 100, 40),
    (1.5, 30, 80, 100, 30), (1.5, 80, 30, 100, 30), (1.5, 500, 500, 100, 150), (1.5, None, None, 1, 2),
], ids=["zero input", "no caps", "zero ratio", "client cap binds", "client cap looser", "client cap zero",
        "negative client cap ignored", "operator cap binds", "client tighter", "operator tighter", "estimate tightest",
        "rounds half away from zero"])
def test_the_expected_output_is_bounded_by_both_caps(ratio, cap, operator, prompt, expected):
    producer = InflightLoadProducer(params=InflightParams(outputRatio=ratio, maxEstimatedOutputTokens=operator))
    req = tokens_request(prompt, body={} if cap is None else {"max_tokens": cap})
    assert producer.estimate_output(prompt, req) == expected


def test_a_chat_caps_output_by_max_completion_tokens_first():
    producer = InflightLoadProducer()
    req = tokens_request(10, body={"max_completion_tokens": 3, "max_tokens": 9}, chat=True)
    assert producer.estimate_output(10, req) == 3


def test_the_producer_reads_the_prefix_producer_it_is_told_to():
    producer = InflightLoadProducer(params=InflightParams(prefixMatchInfoProducerName="precise-prefix-cache-producer"))
    assert producer.data_consumed() == ({"TokenizedPrompt/token-producer"},
                                        {"PrefixCacheMatchInfoDataKey/precise-prefix-cache-producer"})


# ------------------------------------------------------------------------------------------ active request
@pytest.mark.parametrize(("params", "counts", "expected"), [
    ({}, [0, 0, 0], [1.0, 1.0, 1.0]),
    ({}, [2, 1, 0], [0.0, 0.5, 1.0]),
    ({"idleThreshold": 1}, [4, 1, 2], [0.0, 1.0, 0.5]),
    ({"maxBusyScore": 0.5}, [4, 2, 0], [0.0, 0.25, 1.0]),
    ({"maxBusyScore": 3.0}, [2, 1, 0], [0.0, 0.5, 1.0]),  # out of range: ignored
    ({"idleThreshold": -1}, [1, 0, 0], [0.0, 1.0, 1.0]),  # negative: 0
], ids=["all idle", "busy scale", "idle threshold", "max busy score", "busy score out of range", "negative idle"])
def test_active_requests_come_from_the_in_flight_load(params, counts, expected):
    scorer = ActiveRequestScorer(params=ActiveRequestParams(**params))
    e = eps()
    state = CycleState({key(INFLIGHT): Load({ep.name: (0, n) for ep, n in zip(e, counts, strict=True)})})
    assert list(scorer.score(state, tokens_request(1), e).values()) == expected


# ------------------------------------------------------------------------------------------ affinity filter
def affinity(**params) -> PrefixCacheAffinityFilter:
    return PrefixCacheAffinityFilter(params=AffinityParams(**params))


def matched(e: list[Endpoint], shares: list[int], loads: list[int] | None = None,
            ttft: list[float] | None = None) -> CycleState:
    state = CycleState({key(PREFIX_MATCH): {ep.name: MatchInfo(s, 100, 16) for ep, s in zip(e, shares, strict=True)}})
    if loads is not None:
        state[key(INFLIGHT)] = Load({ep.name: (n, 1) for ep, n in zip(e, loads, strict=True)})
    if ttft is not None:
        state["LatencyPredictionInfoDataKey/predicted-latency-producer"] = dict(zip([ep.name for ep in e], ttft,
                                                                                    strict=True))
    return state


@pytest.mark.parametrize(("params", "shares", "loads", "ttft", "kept"), [
    ({"affinityThreshold": 0}, [0, 90], None, None, 2),
    ({}, [10, 20, 50], [0, 0, 0], None, 3),
    ({"maxTTFTPenaltyMs": 5000, "ttftSource": "latencyPredictor"}, [90, 85, 10], None, [100, 120, 50], 2),
    ({"maxTTFTPenaltyMs": 100, "ttftSource": "latencyPredictor"}, [90, 10], None, [500, 50], 2),
    ({"maxTTFTPenaltyMs": 100, "peakPrefillThroughput": 1000}, [90, 10], [500, 50], None, 2),
    ({"maxTTFTPenaltyMs": 1000, "peakPrefillThroughput": 1000}, [90, 10], [500, 50], None, 1),
    ({"maxTTFTPenaltyMs": 0, "peakPrefillThroughput": 1000}, [90, 10], [5000, 50], None, 1),
    ({"explorationProbability": 1.0}, [90, 10], [0, 0], None, 2),
], ids=["threshold 0 disables", "no sticky keeps all", "narrows to sticky", "ttft penalty breaks stickiness",
        "throughput ttft breaks stickiness", "throughput ttft within penalty", "penalty 0 always sticks",
        "exploration skips the gate"])
def test_the_affinity_filter(params, shares, loads, ttft, kept):
    e = eps(len(shares))
    assert len(affinity(**params).filter(matched(e, shares, loads, ttft), tokens_request(1), e)) == kept


def test_a_single_candidate_always_passes():
    a, = eps(1)
    assert affinity().filter(matched([a], [90]), tokens_request(1), [a]) == [a]


def test_the_affinity_filter_consumes_what_its_gate_needs():
    assert affinity(maxTTFTPenaltyMs=0).data_consumed()[0] == {key(PREFIX_MATCH)}
    assert key(INFLIGHT) in affinity(peakPrefillThroughput=1000).data_consumed()[0]
    assert "LatencyPredictionInfoDataKey/predicted-latency-producer" in \
        affinity(ttftSource="latencyPredictor").data_consumed()[0]


@pytest.mark.parametrize(("params", "words"), [
    ("{affinityThreshold: 1.5}", "affinityThreshold"), ("{explorationProbability: -0.1}", "explorationProbability"),
    ("{peakPrefillThroughput: -1}", "peakPrefillThroughput"), ("{ttftSource: bogus}", "ttftSource"),
    ("{ttftSource: ''}", "ttftSource"),
    ("{ttftSource: prefillThroughput, peakPrefillThroughput: 0}",
     "peakPrefillThroughput must be > 0 when ttftSource is prefillThroughput"),
])
def test_the_affinity_filters_parameters_are_checked(params, words):
    with pytest.raises(Exception) as err:
        load_picker_config("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
                           f"- type: prefix-cache-affinity-filter\n  parameters: {params}\n", release="v0.10")
    assert words in str(err.value)


def test_partial_parameters_keep_the_defaults():
    p = AffinityParams(affinityThreshold=0.95)
    assert (p.affinity_threshold, p.exploration_probability, p.max_ttft_penalty_ms, p.ttft_source,
            p.peak_prefill_throughput) == (0.95, 0.0, 18000.0, "prefillThroughput", 15928.0)
    assert AffinityParams(maxTTFTPenaltyMs=0, peakPrefillThroughput=0).peak_prefill_throughput == 0


# ------------------------------------------------------------------------------------------- prefix scorer
@pytest.mark.parametrize(("weight", "info", "expected"), [
    (0.0, MatchInfo(5, 10, 16), 0.5),
    (0.0, MatchInfo(0, 0, 16), 0.0),
    (0.5, MatchInfo(5, 10, 16), 0.5 * (80 / 8192) ** 2 + 0.5 * 0.5),
    (1.0, MatchInfo(1000, 1000, 16), 1.0),  # the length term saturates at the scale
], ids=["ratio only", "no blocks", "ratio and length", "long match"])
def test_the_prefix_scorer_scores_matched_share_and_length(weight, info, expected):
    a, b = eps(2)
    scorer = PrefixCacheScorer(params=PrefixScorerParams(matchLengthWeight=weight))
    scores = scorer.score(CycleState({key(PREFIX_MATCH): {a.name: info}}), tokens_request(1), [a, b])
    assert scores[a] == pytest.approx(expected) and scores[b] == 0.0


def test_the_prefix_scorer_reads_the_named_producer():
    a, = eps(1)
    scorer = PrefixCacheScorer(params=PrefixScorerParams(prefixMatchInfoProducerName="precise-prefix-cache-producer"))
    state = CycleState({key(PREFIX_MATCH): {a.name: MatchInfo(1, 1, 16)},
                        key(PREFIX_MATCH, "precise-prefix-cache-producer"): {a.name: MatchInfo(1, 4, 16)}})
    assert scorer.score(state, tokens_request(1), [a]) == {a: 0.25}


def test_the_match_length_weight_needs_a_scale():
    with pytest.raises(ValueError, match="matchLengthScaleTokens must be greater than 0"):
        PrefixScorerParams(matchLengthWeight=0.5, matchLengthScaleTokens=0)


# --------------------------------------------------------------------------------------------- no-hit LRU
def test_no_hit_lru_reads_the_prefix_producers_matches():
    a, b, c = eps()
    scorer = NoHitLRUScorer()
    warm = CycleState({key(PREFIX_MATCH): {a.name: MatchInfo(1, 4, 64), b.name: MatchInfo(0, 4, 64)}})
    assert set(scorer.score(warm, tokens_request(1), [a, b, c]).values()) == {0.5}
    cold = CycleState({key(PREFIX_MATCH): {a.name: MatchInfo(0, 4, 64)}})
    assert scorer.score(cold, tokens_request(1), [a, b, c]) == {a: 1.0, b: 0.5, c: 0.0}
    scorer.pre_request(cold, tokens_request(1), a)
    again = CycleState({key(PREFIX_MATCH): {}})
    assert scorer.score(again, tokens_request(1), [a, b, c]) == {b: 1.0, c: 0.5, a: 0.0}
