"""The precise prefix scorer on the virtual clock, and the scenarios that leave an approximate index stale."""

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict

import pytest

from kit.errors import KitError
from kit.experiments.workloads import Load, SharedPrefix
from kit.fleet import Fleet, simulate
from kit.fleet.loop import _Run
from kit.fleet.scenario import Trace
from kit.picker.plugins.kv_index import Entry
from kit.sim.config import SimConfig
from kit.sim.kv_events import external

# The local stack's servers (environments/local.yaml) and bench/precise_routing.py's workload: twelve groups of
# 2,000-token system prompts, 1,500 blocks in all, on four servers of 512 blocks (each holds about three groups).
LOCAL = SimConfig(max_num_seqs=16, num_gpu_blocks=512, max_model_len=8192)
WORKLOAD = SharedPrefix(groups=12, prompts_per_group=16, system_prompt_len=2000, question_len=100, output_len=16,
                        seed=1)
LOAD = Load(rate=64, requests=192)


def run(profile="precise", trace=None, **kw):
    fleet = Fleet(replicas=kw.pop("replicas", 4), profile=profile, sim=kw.pop("sim", LOCAL), **kw)
    return simulate(kw.pop("workload", WORKLOAD), kw.pop("load", LOAD), fleet, trace=trace)


def routed_hit_rate(r):
    ok = [q for q in r.requests if q.ok]
    return sum(q.cached_tokens for q in ok) / sum(q.prompt_tokens for q in ok)


def test_the_index_holds_exactly_what_the_servers_cache():
    # Every server's events, applied by the scorer's own code, leave the index with each server's cache.
    sim = _Run(Fleet(replicas=4, profile="precise", sim=LOCAL, outside_rate=16), WORKLOAD, LOAD, False)
    r = sim.run()
    scorer = sim.feed.scorers[0]
    assert r.summary.ok == 192 and scorer.in_process and scorer.subscriber is None  # no socket was opened
    sim.feed.catch_up(sim, math.inf)
    index = scorer.index
    assert sim.feed.delivered == sim.feed.published > 100
    for node in sim.nodes:
        cached = {index.engine_to_request[external(h)] for h in node.engine.pool.cached}
        held = {rk for rk, entries in index.data.items() if Entry(node.name) in entries}
        assert held == cached and len(cached) > 100, node.name


def test_precise_routing_follows_evictions_that_outside_traffic_causes():
    # Outside traffic (fresh prompts sent around the picker) evicts prefixes the approximate index still
    # believes cached: it sends requests to servers that lost them. The precise index sees the evictions.
    approx, precise = Trace(), Trace()
    a = run("default-plugins", approx, outside_rate=32)
    p = run("precise", precise, outside_rate=32)
    assert approx.outside == precise.outside > 50
    assert approx.stale_picks(a) > 20 and precise.stale_picks(p) <= 2
    assert routed_hit_rate(p) > routed_hit_rate(a) + 0.04
    assert p.summary.ttft_p90_s < a.summary.ttft_p90_s
    assert len(p.requests) == 192  # outside requests are not the run's


def test_with_all_traffic_through_the_picker_both_indexes_agree():
    a, p = run("default-plugins"), run("precise")
    assert abs(routed_hit_rate(p) - routed_hit_rate(a)) < 0.02
    assert routed_hit_rate(p) > routed_hit_rate(run("random")) + 0.4


def test_picker_replicas_split_what_the_approximate_index_learns():
    # Four pickers each learn a quarter of the traffic: each places a group on its own, so the groups are
    # copied and spill out of the caches. Precise pickers read every server's events and agree.
    one, four = run("default-plugins"), run("default-plugins", picker_replicas=4)
    precise_four = run("precise", picker_replicas=4)
    assert routed_hit_rate(four) < routed_hit_rate(one) - 0.1
    assert routed_hit_rate(precise_four) > routed_hit_rate(four) + 0.1
    served = {q.endpoint for q in four.requests}
    assert len(served) == 4


def test_a_late_event_feed_makes_the_precise_index_stale():
    # Half a second late, the index misses the evictions (stale picks) and the placements of the last
    # half second (a group's next requests go elsewhere).
    fresh, late = Trace(), Trace()
    on_time = run("precise", fresh, outside_rate=32)
    slow = run("precise", late, outside_rate=32, event_lag=0.5)
    assert late.stale_picks(slow) > fresh.stale_picks(on_time) + 20
    assert routed_hit_rate(slow) < routed_hit_rate(on_time) - 0.2
    assert late.event_batches < fresh.event_batches  # the last half second's batches never arrived


def test_scenarios_step_by_step_give_the_same_result():
    for profile in ("default-plugins", "precise"):
        kw = {"outside_rate": 16, "picker_replicas": 2}
        assert json.dumps(asdict(run(profile, **kw))) == json.dumps(asdict(run(profile, fast=False, **kw)))


def test_precise_runs_are_byte_identical_in_another_process():
    code = ("import json; from dataclasses import asdict; from tests.fleet.test_precise import run; "
            "print(json.dumps(asdict(run('precise', outside_rate=16, picker_replicas=2))))")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert outs[0] == outs[1] == json.dumps(asdict(run("precise", outside_rate=16, picker_replicas=2))) + "\n"


def test_one_picker_and_no_outside_traffic_change_nothing():
    base = run("default-plugins")
    assert json.dumps(asdict(base)) == json.dumps(asdict(run("default-plugins", picker_replicas=1, outside_rate=0,
                                                             event_lag=1.0)))


def test_a_block_size_the_profile_does_not_share_is_refused():
    big = SimConfig(max_num_seqs=16, num_gpu_blocks=256, block_size=32, max_model_len=8192)
    with pytest.raises(KitError, match="blockSize is 16 but the simulated servers use blocks of 32"):
        run("precise", sim=big)


@pytest.mark.parametrize("bad", [{"picker_replicas": 0}, {"outside_rate": -1}, {"event_lag": -0.1},
                                 {"outside_rate": 1, "outside_prompt_len": 9000}])
def test_bad_scenario_settings_are_refused(bad):
    with pytest.raises(KitError):
        Fleet(sim=LOCAL, **bad)
