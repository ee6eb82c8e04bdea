"""The load generator sends every workload over real HTTP."""

import pytest

from kit.experiments.loadgen import run_workload
from kit.experiments.workloads import Load, MultiTurn, Skewed


@pytest.mark.parametrize("chat", [False, True])
def test_multi_turn_over_http_carries_the_answers_and_hits_the_cache(sim_factory, chat):
    sim = sim_factory("--time-scale", "0.01")
    w = MultiTurn(conversations=3, turns=3, system_prompt_len=200, question_len=20, output_len=8)
    run = run_workload(sim.url, w, Load(concurrency=2, chat=chat), progress=False)
    s = run.summary()
    assert (s.requests, s.errors) == (9, 0)
    for conv in range(3):
        turns = sorted((r for r in run.results if r.group == conv), key=lambda r: r.started)
        assert [r.prompt_tokens for r in turns] == sorted({r.prompt_tokens for r in turns})  # grows each turn
        assert all(r.cached_tokens >= turns[0].prompt_tokens - 32 for r in turns[1:])  # history from cache
    assert s.prefix_cache_hit_rate > 0.5


def test_skewed_workload_in_rate_stages(sim_factory):
    sim = sim_factory("--time-scale", "0.01")
    run = run_workload(sim.url, Skewed(groups=4, prompts_per_group=2, output_len=4), Load(stages="40:0.25,80:0.25"),
                       progress=False)
    assert 20 < len(run.results) < 50 and all(r.ok for r in run.results)
