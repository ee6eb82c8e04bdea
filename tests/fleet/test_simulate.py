"""The fleet on a virtual clock: the picker, simulated servers and workloads together."""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest

from kit.experiments.results import Summary
from kit.experiments.workloads import Load, MultiTurn, SharedPrefix, Skewed
from kit.fleet import Fleet, simulate
from kit.sim.config import SimConfig

SMALL = SimConfig(max_num_seqs=16, num_gpu_blocks=512, max_model_len=8192)
WORKLOAD = SharedPrefix(groups=8, prompts_per_group=8, system_prompt_len=1500, question_len=100, output_len=24,
                        seed=1)


def run(profile="default-plugins", workload=WORKLOAD, load=None, **kw):
    fleet = Fleet(replicas=kw.pop("replicas", 4), profile=profile, sim=kw.pop("sim", SMALL), **kw)
    return simulate(workload, load or Load(rate=60, requests=128), fleet)


def test_the_summary_has_kit_bench_keys_and_counts_every_request():
    r = run()
    s = r.summary
    assert set(s.to_dict()) == {f for f in Summary.__dataclass_fields__}
    assert (s.requests, s.ok, s.errors) == (128, 128, 0)
    assert sum(e.requests for e in s.per_endpoint.values()) == 128 and len(s.per_endpoint) == 4
    assert all(q.ttft and q.e2e >= q.ttft and q.completion_tokens == 24 for q in r.requests)
    assert s.itl_p50_s and s.requests_per_s and s.duration_s > 0
    assert {m.endpoint for m in r.samples} == set(s.per_endpoint) and r.decision["picked"]


def test_stepping_every_step_gives_the_same_result():
    for profile in ("random", "default-plugins"):
        fast, slow = run(profile), run(profile, fast=False)
        assert json.dumps(asdict(fast)) == json.dumps(asdict(slow))


def test_prefix_aware_routing_keeps_groups_together_and_hits_the_cache():
    rnd, default = run("random").summary, run("default-plugins").summary
    assert default.prefix_cache_hit_rate > rnd.prefix_cache_hit_rate + 0.3
    assert default.ttft_p90_s < rnd.ttft_p90_s


def test_the_picker_sees_metrics_only_at_scrape_ticks():
    # Under load (queues form), a slower scrape leaves the load signals staler: between two scrapes load-only
    # routing keeps choosing whichever endpoint looked least loaded, so requests pile up and wait.
    fresh = run("load-only", load=Load(rate=300, requests=600)).summary
    stale = run("load-only", load=Load(rate=300, requests=600), refresh_interval=0.5).summary
    busiest = [max(e.requests for e in s.per_endpoint.values()) for s in (fresh, stale)]
    assert busiest[1] > 1.2 * busiest[0], busiest
    assert stale.ttft_p90_s > 2 * fresh.ttft_p90_s, (fresh.ttft_p90_s, stale.ttft_p90_s)


def test_closed_loop_keeps_the_concurrency():
    r = run(load=Load(concurrency=3, requests=30))
    events = sorted([(q.started, 1) for q in r.requests] + [(q.started + q.e2e, -1) for q in r.requests])
    level = top = 0
    for _, d in events:
        level += d
        top = max(top, level)
    assert r.summary.ok == 30 and top == 3


def test_multi_turn_conversations_reuse_their_history():
    w = MultiTurn(conversations=8, turns=4, system_prompt_len=300, question_len=40, output_len=30)
    r = run(workload=w, load=Load(rate=4))
    assert r.summary.ok == 32
    by_conv: dict[int, list] = {}
    for q in r.requests:
        by_conv.setdefault(q.group, []).append(q)
    for turns in by_conv.values():
        lengths = [q.prompt_tokens for q in sorted(turns, key=lambda q: q.started)]
        assert lengths == sorted(lengths) and lengths[-1] == lengths[0] + 3 * 70  # + question and answer
        later = [q for q in turns if q.started > min(x.started for x in turns)]
        assert all(q.cached_tokens > 0.5 * q.prompt_tokens for q in later)  # the last turn was cached


def test_skewed_traffic_overloads_a_prefix_only_picker():
    w = Skewed(groups=10, prompts_per_group=10, hot_groups=1, hot_share=0.9, system_prompt_len=1500,
               question_len=50, output_len=24)
    load = Load(rate=100, requests=200)
    prefix, default = run("prefix-only", w, load).summary, run("default-plugins", w, load).summary
    assert max(e.requests for e in prefix.per_endpoint.values()) > 150  # the hot group stays on one server
    assert default.ttft_p90_s < prefix.ttft_p90_s


def test_a_request_that_cannot_fit_is_an_error_not_a_crash():
    tiny = SimConfig(max_num_seqs=4, num_gpu_blocks=64, max_model_len=1024)  # 1,024 tokens of KV
    s = run(sim=tiny, load=Load(rate=10, requests=6)).summary
    assert s.errors == 6 and s.error_kinds == {"400": 6}


def test_the_same_inputs_give_byte_identical_json_in_another_process():
    code = ("import json; from dataclasses import asdict; from tests.fleet.test_simulate import run; "
            "print(json.dumps(asdict(run('default-plugins'))))")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert outs[0] == outs[1] == json.dumps(asdict(run("default-plugins"))) + "\n"
    assert json.dumps(asdict(run("default-plugins", seed=1))) != outs[0]  # the seed matters


@pytest.mark.parametrize("bad", [{"replicas": 0}, {"refresh_interval": 0}])
def test_bad_fleet_settings_are_refused(bad):
    from kit.errors import KitError

    with pytest.raises(KitError):
        Fleet(**bad)
