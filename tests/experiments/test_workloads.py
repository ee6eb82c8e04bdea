"""Shared-prefix prompt generation and the run summary."""

from collections import Counter

import pytest

from kit import tokenizer
from kit.experiments.loadgen import WorkloadRun
from kit.experiments.results import EndpointSummary, RequestResult
from kit.experiments.workloads import Load, SharedPrefix, shared_prefix_prompts
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
