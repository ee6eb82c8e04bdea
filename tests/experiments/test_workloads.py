"""Shared-prefix prompt generation and the run summary."""

from collections import Counter

import pytest

from kit import tokenizer
from kit.experiments.loadgen import WorkloadRun
from kit.experiments.results import EndpointSummary, RequestResult
from kit.experiments.workloads import (
    Load,
    MultiTurn,
    SharedPrefix,
    Skewed,
    arrival_times,
    body,
    jobs,
    plan,
    shared_prefix_prompts,
)
from kit.vllm_metrics import EndpointMetrics


def test_prompts_have_exact_token_lengths_and_share_prefixes_by_group():
    w = SharedPrefix(groups=3, prompts_per_group=4, system_prompt_len=120, question_len=30, seed=5)
    prompts = shared_prefix_prompts(w)
    assert len(prompts) == 12 and Counter(p.group for p in prompts) == {0: 4, 1: 4, 2: 4}
    for p in prompts:
        assert len(tokenizer.encode(p.system)) == 120
        assert len(tokenizer.encode(p.text)) == 150
    systems = {p.group: p.system for p in prompts}
    assert all(p.system == systems[p.group] for p in prompts) and len(set(systems.values())) == 3
    assert [p.group for p in prompts] != sorted(p.group for p in prompts)  # shuffled once
    assert shared_prefix_prompts(w) == prompts  # deterministic per seed


def test_load_needs_exactly_one_mode():
    with pytest.raises(ValueError, match="exactly one of rate or concurrency"):
        Load()
    with pytest.raises(ValueError):
        Load(rate=1, concurrency=2)


def test_summary_fields_and_pool_hit_rate_from_counter_deltas():
    ok = RequestResult(status=200, endpoint="a:1", ttft=0.1, e2e=0.5, itls=[0.01, 0.03], completion_tokens=3)
    bad = RequestResult(status=503, error="no")
    run = WorkloadRun([ok, ok, bad], wall_s=2.0,
                      before={"a:1": EndpointMetrics(prefix_hits=100, prefix_queries=200)},
                      after={"a:1": EndpointMetrics(prefix_hits=400, prefix_queries=600)})
    s = run.summary()
    assert (s.requests, s.ok, s.errors, s.error_kinds) == (3, 2, 1, {"503": 1})
    assert s.prefix_cache_hit_rate == 0.75 and s.per_endpoint == {"a:1": EndpointSummary(requests=2, hit_rate=0.75)}
    assert s.ttft_p50_s == 0.1 and s.requests_per_s == 1.0 and s.output_tokens_per_s == 3.0
    d = s.to_dict()
    for key in ("ttft_p90_s", "ttft_p99_s", "itl_p50_s", "e2e_p90_s"):
        assert key in d
    assert d["per_endpoint"] == {"a:1": {"requests": 2, "hit_rate": 0.75}}


def test_stages_parse_and_bad_stages_name_the_problem():
    assert [(s.rate, s.duration) for s in Load(stages="5:10, 20:2.5").stages] == [(5, 10), (20, 2.5)]
    for bad in ("5", "5:x", "0:3"):
        with pytest.raises(ValueError, match="stages"):
            Load(stages=bad)


def test_arrivals_follow_the_rate_of_each_stage():
    times = arrival_times(Load(stages="10:20,50:20"), None, seed=0)
    first = sum(t < 20 for t in times)
    assert 150 < first < 250 and 800 < len(times) - first < 1200 and times == sorted(times) and times[-1] < 40
    constant = arrival_times(Load(rate=4, arrival="constant"), 5, seed=0)
    assert constant == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert arrival_times(Load(rate=4), 50, seed=1) == arrival_times(Load(rate=4), 50, seed=1)
    assert arrival_times(Load(rate=4), 50, seed=1) != arrival_times(Load(rate=4), 50, seed=2)


def test_a_conversation_resends_its_history_each_turn():
    w = MultiTurn(conversations=2, turns=3, system_prompt_len=40, question_len=10, output_len=5)
    js = jobs(w, Load(rate=1))
    assert [len(j.questions) for j in js] == [3, 3]
    p = js[0].prompt(2, ["first answer", "second answer"])
    assert [m["role"] for m in p.messages()] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert p.text == js[0].system + js[0].questions[0] + "first answer" + js[0].questions[1] + "second answer" \
        + js[0].questions[2]
    assert body(p, 5, Load(rate=1, chat=True))["messages"] == p.messages()
    assert [len(j.questions) for j in jobs(w, Load(rate=1, requests=5))] == [3, 2]  # capped at 5 requests


def test_skewed_traffic_favours_the_hot_groups():
    w = Skewed(groups=10, prompts_per_group=4, hot_groups=2, hot_share=0.75)
    groups = Counter(j.group for j in jobs(w, Load(rate=1, requests=2000)))
    assert 0.7 < (groups[0] + groups[1]) / 2000 < 0.8 and set(groups) == set(range(10))
    with pytest.raises(ValueError, match="hot_groups"):
        Skewed(groups=2, hot_groups=3)


def test_the_plan_is_open_or_closed_loop():
    js, times = plan(SharedPrefix(groups=2, prompts_per_group=3), Load(concurrency=2))
    assert len(js) == 6 and times is None
    js, times = plan(SharedPrefix(groups=2, prompts_per_group=3), Load(stages="10:1"))
    assert len(js) == len(times) > 3  # as many jobs as the stages bring, prompts repeated
