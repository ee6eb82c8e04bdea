"""Every sentence of the walkthrough that states a result, and the assertion that backs it.

``SENTENCES`` lists them, notebook by notebook, each with the test that checks it. The first test makes sure
every listed sentence is still in its notebook word for word (edit the prose and this file must follow) and
that its test exists. The tests read the notebook's own parameters from its parameters cell and, where the
result depends on chance, run several seeds. Results that need no HTTP are checked on the virtual clock
(``kit.fleet``: the same picker and engine code as the live stack, the same numbers on every machine); the
one result about the HTTP path (03's repeated prompt) runs the notebook on a local stack.
"""

from __future__ import annotations

import ast
import json
import re
import statistics
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path

import papermill
import pytest

from kit import fleet as kf
from kit.experiments.workloads import Load, SharedPrefix, Skewed
from kit.notebook import session

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"


def parameters(name: str) -> dict:
    declared = papermill.inspect_notebook(str(NB / f"{name}.ipynb"))
    return {k: ast.literal_eval(v["default"]) for k, v in declared.items()}


P2, P4, P6, P7 = (parameters(n) for n in ("02-deploy", "04-routing-and-cache", "06-capacity", "07-precise-routing"))
SEEDS = range(5)

# notebook → [(sentence, as it reads in the notebook's markdown; the test that checks it)]
SENTENCES: dict[str, list[tuple[str, str]]] = {
    "03-inference": [
        ("The prompt opens with a new ticket number on every run, so the first request finds nothing cached even "
         "when you run this notebook again on the same stack.",
         "test_03_a_repeated_prompt_goes_to_the_same_server_and_finds_its_prefix_cached"),
        ("The next three times, the picker's prefix-cache scorer recognises the prompt and sends it to the same "
         "server, whose prefix cache already holds its KV blocks: most prompt tokens come from the cache and the "
         "first token arrives sooner.",
         "test_03_a_repeated_prompt_goes_to_the_same_server_and_finds_its_prefix_cached"),
        ("if the stack runs one that does not (say you picked `load-only` or `random` in notebook 2), the cell says "
         "so and runs these requests under the guide's default, then puts your profile back.",
         "test_03_a_repeated_prompt_goes_to_the_same_server_and_finds_its_prefix_cached"),
    ],
    "04-routing-and-cache": [
        ("Random routing spreads each group over most servers",
         "test_04_random_spreads_each_group_prefix_aware_keeps_it"),
        ("Prefix-aware routing keeps each group on one server: one dark cell per row.",
         "test_04_random_spreads_each_group_prefix_aware_keeps_it"),
        ("with four, the groups' system prompts fill about three quarters of the servers' KV caches",
         "test_04_four_servers_hold_the_groups_system_prompts"),
        ("Under a prefix-aware picker, once a group has been seen most of its later requests find their system "
         "prompt cached; under random routing most do not.", "test_04_once_a_group_is_seen_its_prompt_is_cached"),
        ("The server with the largest total wins.", "test_04_the_server_with_the_largest_total_wins"),
        ("Run it again and you get the same numbers.", "test_04_the_virtual_clock_gives_the_same_numbers_again"),
        ("the virtual clock gives the same answer every time, for everyone in the room.",
         "test_04_the_virtual_clock_gives_the_same_numbers_again"),
        ("A cache hit skips the prefill of the shared system prompt, so its first token comes sooner",
         "test_04_a_cache_hit_gets_its_first_token_sooner"),
        ("With the guide's default the first token comes roughly three times sooner than with random routing, or "
         "better (TTFT p90).", "test_04_prefix_aware_routing_triples_the_hit_rate_and_the_default_answers_sooner"),
        ("A picker that only follows the prefix sends every request of the hot group to the one server that holds "
         "its prompt, however long that server's queue.",
         "test_04_a_hot_group_overloads_prefix_only_and_not_the_default"),
        ("its time to first token (p90) is several times lower than prefix-only's.",
         "test_04_a_hot_group_overloads_prefix_only_and_not_the_default"),
        ("Prefix-aware routing keeps each group's system prompt cached on one server: the hit rate roughly triples.",
         "test_04_prefix_aware_routing_triples_the_hit_rate_and_the_default_answers_sooner"),
        ("With the guide's default, which also weighs load, the first token comes roughly three times sooner than "
         "with random routing, or better.",
         "test_04_prefix_aware_routing_triples_the_hit_rate_and_the_default_answers_sooner"),
        ("following the prefix alone piles a hot group onto one server.",
         "test_04_a_hot_group_overloads_prefix_only_and_not_the_default"),
        # Section 3: today's llm-d (optimized-baseline, release v0.10) against the guide's default.
        ("At this light load both keep each group together, and optimized-baseline never moves one: every request "
         "of a group goes to the server its first request went to (one cell per row), where the default may move a "
         "few when that server looks busy.", "test_04_optimized_baseline_never_moves_a_group"),
        ("so the prompts fill about three quarters of the fleet's cache",
         "test_04_the_scaled_benchmark_fills_three_quarters_of_the_cache"),
        ("2,400 KV blocks per server (the same three quarters)",
         "test_04_the_scaled_benchmark_fills_three_quarters_of_the_cache"),
        ("at 0.25, four servers reproduce what sixteen show", "test_04_long_answers_default_holds_short_answers_today"),
        ("At the guide's lowest rate both profiles' TTFT p90 stays under 50 ms.",
         "test_04_long_answers_default_holds_short_answers_today"),
        ("At its highest, the default still answers within a quarter of a second, while optimized-baseline's TTFT "
         "p90 runs to seconds, more than ten times the default's.",
         "test_04_long_answers_default_holds_short_answers_today"),
        ("Under optimized-baseline, requests queue at a server whose KV cache is full while another server's is "
         "mostly empty.", "test_04_optimized_baseline_queues_at_a_full_server_beside_an_empty_one"),
        ("At the guide's 2,000 requests per second (scaled), optimized-baseline's first tokens come sooner than the "
         "default's (TTFT p90) and it finds more of each prompt cached.",
         "test_04_long_answers_default_holds_short_answers_today"),
        ("(decoding fills the KV caches): the guide's default.",
         "test_04_long_answers_default_holds_short_answers_today"),
        ("(the work is prefill): optimized-baseline", "test_04_long_answers_default_holds_short_answers_today"),
        ("Today's llm-d default (optimized-baseline) wins when answers are short; when long answers fill the caches, "
         "the guide's default wins.", "test_04_long_answers_default_holds_short_answers_today"),
    ],
    "06-capacity": [
        ("the same seed gives the same numbers every time", "test_04_the_virtual_clock_gives_the_same_numbers_again"),
        ("all the system prompts and questions together fill about three quarters of the fleet's cache",
         "test_06_the_working_set_fills_three_quarters_of_the_cache"),
        ("At the lowest rate every profile meets the objective on 16 servers",
         "test_06_at_the_lowest_rate_every_profile_meets_the_objective"),
        ("the hit rate below stays under a third of the prefix-aware profiles'",
         "test_06_blind_routing_finds_under_a_third_of_what_prefix_aware_routing_finds"),
        ("the best possible is the share of a request's tokens that the group's earlier requests wrote (here about "
         "two thirds)", "test_06_no_hit_rate_beats_the_best_possible"),
        ("at the price of a few cache hits when servers are busy",
         "test_06_the_default_gives_up_a_few_hits_when_servers_are_busy"),
        ("A picker that only follows the prefix sends every request of the hot group to the one server that holds "
         "it, and that server's queue grows: prefix-only misses the objective.", "test_06_a_hot_group"),
        ("The default profile steers work away from the busy server and keeps its latency within the objective.",
         "test_06_a_hot_group"),
        ("at a rate both profiles met the objective at with uniform groups", "test_06_a_hot_group"),
        ("Below saturation the profile hardly matters for TTFT; past it, the profile decides everything.",
         "test_06_below_saturation_the_profile_hardly_matters_past_it_everything"),
        ("approximate prefix-aware routing's TTFT p90 stays low where random routing's grows by more than an "
         "order of magnitude.", "test_06_below_saturation_the_profile_hardly_matters_past_it_everything"),
        ("Cache affinity is capacity", "test_06_cache_affinity_is_capacity_and_load_only_is_no_better_than_random"),
        ("Load-only routing balances queues but not work, and ends up no better than random here.",
         "test_06_cache_affinity_is_capacity_and_load_only_is_no_better_than_random"),
        ("with uniform groups, prefix-only does about as well as the default (on 16 servers even better: it never "
         "gives up a cache hit)", "test_06_with_uniform_groups_prefix_only_does_about_as_well_as_the_default"),
        ("as soon as a group runs hot it overloads its server, and the default profile keeps its latency.",
         "test_06_a_hot_group"),
        ("Capacity grows with replicas, but by how much depends on the profile",
         "test_06_capacity_grows_with_replicas_by_how_much_depends_on_the_profile"),
    ],
    "07-precise-routing": [
        ("The precise profile makes far fewer stale picks than the approximate one.",
         "test_07_with_several_pickers_and_outside_traffic_precise_routing_pays"),
        ("So precise routing finds more of each prompt cached than approximate routing, which finds more than random "
         "routing, and its first tokens come sooner than approximate routing's",
         "test_07_with_several_pickers_and_outside_traffic_precise_routing_pays"),
        ("with precise routing all the pickers read the same events, agree on where each prefix lives, and a group's "
         "requests stay together.", "test_07_with_several_pickers_and_outside_traffic_precise_routing_pays"),
        ("With one picker, the approximate index is rarely wrong (it saw every pick) and precise and approximate "
         "routing find about as much cached and answer about as fast (approximate routing even a little sooner).",
         "test_07_one_picker_or_several_at_a_larger_scale"),
        ("With several pickers, only the precise indexes agree: precise routing finds at least twice as much cached, "
         "and its first tokens come several times sooner.", "test_07_one_picker_or_several_at_a_larger_scale"),
        ("With several pickers sharing the servers and traffic going around them, the precise index makes far fewer "
         "stale picks, finds more of each prompt cached and answers sooner.",
         "test_07_with_several_pickers_and_outside_traffic_precise_routing_pays"),
        ("With one picker, precise and approximate routing are about even",
         "test_07_one_picker_or_several_at_a_larger_scale"),
    ],
}


def _prose(name: str) -> str:
    cells = json.loads((NB / f"{name}.ipynb").read_text())["cells"]
    return " ".join(" ".join("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")


def _code(name: str) -> str:
    cells = json.loads((NB / f"{name}.ipynb").read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_every_listed_sentence_is_in_its_notebook_and_has_a_test():
    for name, sentences in SENTENCES.items():
        prose = _prose(name)
        for sentence, test in sentences:
            assert " ".join(sentence.split()) in prose, f"{name} no longer says: {sentence}"
            assert callable(globals().get(test)), f"{name}: no test {test} for: {sentence}"


# ------------------------------------------------------------------------------------------- 04, on the virtual clock
def _workload4(seed: int, cls=SharedPrefix, **kw) -> SharedPrefix:
    return cls(groups=P4["groups"], prompts_per_group=P4["prompts_per_group"],
               system_prompt_len=P4["system_prompt_len"], question_len=P4["question_len"],
               output_len=P4["output_len"], seed=seed, **kw)


def _compare4(seed: int, workload, profiles: str):
    s = session("local", replicas=P4["replicas"])  # the stack 04 runs on
    return s.compare_profiles(workload, Load(rate=P4["rate"], requests=P4["requests"]), tuple(profiles.split(",")),
                              progress=False, virtual=True, seed=seed)


@cache
def _ranking4(seed: int):
    """The notebook's ranking (section 2) with ``seed`` for the workload and the fleet."""
    return _compare4(seed, _workload4(seed), P4["profiles"])


@cache
def _live4(seed: int):
    """Section 1's live comparison, on the virtual clock over the same stack."""
    return _compare4(seed, _workload4(seed), P4["live_profiles"])


@cache
def _hot4(seed: int):
    w = _workload4(seed, Skewed, hot_groups=1, hot_share=0.5).model_copy(update={"output_len": P4["hot_output_len"]})
    return _compare4(seed, w, "random,prefix-only,default-plugins")


def _distinct_servers(run) -> float:
    """Mean number of servers each group's requests went to."""
    where: dict[int, set[str]] = {}
    for r in run.requests:
        where.setdefault(r.group, set()).add(r.endpoint)
    return statistics.mean(len(v) for v in where.values())


def _kept_together(run) -> float:
    """Mean share of each group's requests on the group's busiest server."""
    return statistics.mean(run.top_share(g) for g in {r.group for r in run.requests})


def test_04_the_notebook_compares_what_the_tests_check():
    code = _code("04-routing-and-cache")
    assert "seed=1" in code and "hot_groups=1, hot_share=0.5" in code and "virtual=True" in code
    assert P4["live_profiles"] == "random,default-plugins" and "prefix-only" in P4["profiles"]


def test_04_four_servers_hold_the_groups_system_prompts():
    from kit.manifests.environments import load_environment

    sim = load_environment("local").local.simulator
    share = P4["groups"] * P4["system_prompt_len"] / (P4["replicas"] * sim["num_gpu_blocks"] * 16)
    assert P4["replicas"] == 4 and 0.7 <= share <= 0.8, share  # "about three quarters"


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_04_random_spreads_each_group_prefix_aware_keeps_it(seed):
    cmp = _live4(seed)
    assert _distinct_servers(cmp.run("random")) >= 0.75 * P4["replicas"], "random leaves groups on few servers"
    assert _kept_together(cmp.run("default-plugins")) >= 0.75, "the default scatters groups"


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_04_once_a_group_is_seen_its_prompt_is_cached(seed):
    def warm_hits(run) -> float:
        seen, hits, later = set(), 0, 0
        for r in sorted(run.requests, key=lambda r: r.started):
            if r.group in seen:
                later += 1
                hits += r.cached_tokens >= 0.9 * P4["system_prompt_len"]
            seen.add(r.group)
        return hits / later

    cmp = _live4(seed)
    assert warm_hits(cmp.run("default-plugins")) > 0.5 > warm_hits(cmp.run("random"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_04_the_server_with_the_largest_total_wins(seed):
    d = _live4(seed).run("default-plugins").decision
    totals = {c["endpoint"]: sum(d["weights"][k] * v for k, v in c["scores"].items()) for c in d["candidates"]
              if not c["filtered_by"]}
    assert d["picked"][0] in {e for e, t in totals.items() if t == max(totals.values())}, (d["picked"], totals)


@pytest.mark.slow
def test_04_the_virtual_clock_gives_the_same_numbers_again():
    again = _compare4(1, _workload4(1), P4["profiles"])
    assert again.table() == _ranking4(1).table()
    assert [r.requests for r in again.runs] == [r.requests for r in _ranking4(1).runs]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_04_a_cache_hit_gets_its_first_token_sooner(seed):
    for run in _ranking4(seed).runs:
        hit = [r.ttft for r in run.requests if r.cached_tokens >= 0.9 * P4["system_prompt_len"]]
        miss = [r.ttft for r in run.requests if r.cached_tokens < 0.1 * P4["system_prompt_len"]]
        if hit and miss:
            assert statistics.median(hit) < statistics.median(miss), run.profile


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_04_prefix_aware_routing_triples_the_hit_rate_and_the_default_answers_sooner(seed):
    r = {run.profile: run.summary for run in _ranking4(seed).runs}
    for aware in ("prefix-only", "default-plugins"):
        for blind in ("random", "load-only"):
            assert r[aware].prefix_cache_hit_rate >= 2.5 * r[blind].prefix_cache_hit_rate, (aware, blind)
    # What the summary prints: the guide's default against random routing ("roughly three times sooner, or better").
    assert r["default-plugins"].ttft_p90_s * 2.5 <= r["random"].ttft_p90_s, (r["default-plugins"], r["random"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_04_a_hot_group_overloads_prefix_only_and_not_the_default(seed):
    runs = {run.profile: run for run in _hot4(seed).runs}
    assert runs["prefix-only"].top_share(0) == 1.0  # every request of the hot group on one server
    p90 = {p: run.summary.ttft_p90_s for p, run in runs.items()}
    assert p90["default-plugins"] * 3 <= p90["prefix-only"], p90


# ------------------------------------------------- 04 section 3: today's llm-d against the guide's default
TODAY = tuple(P4["today_profiles"].split(","))
GUIDE_LONG = {"system_prompt_len": 6000, "question_len": 1200, "output_len": 1000}  # and 9,630 blocks per server
GUIDE_SHORT = {"system_prompt_len": 1500, "question_len": 300, "output_len": 50}  # and 2,400 blocks per server


def test_04_section_3_runs_what_the_tests_check():
    code = _code("04-routing-and-cache")
    assert TODAY == ("default-plugins", "optimized-baseline") and "reuse=watched" in code
    assert "system_prompt_len=6000, question_len=1200, output_len=1000" in code and "num_gpu_blocks=9630" in code
    assert '"system_prompt_len": 1500, "question_len": 300, "output_len": 50' in code
    assert "num_gpu_blocks=2400, max_model_len=16 * 2400" in code
    assert all(f"round({n} * fleet_scale)" in code for n in (16, 150, 1500, 3000))
    assert P4["fleet_scale"] == 0.25 and P4["long_rates"] == "20,50" and P4["short_rate"] == 2000.0


def _scaled(scale: float, seed: int, lengths: dict, blocks: int) -> tuple[SharedPrefix, kf.Fleet]:
    """The notebook's scaled benchmark: its workload and fleet at ``scale`` of the guide's."""
    w = SharedPrefix(groups=round(150 * scale), prompts_per_group=5, seed=seed, **lengths)
    sim = kf.SimConfig(num_gpu_blocks=blocks, **({} if blocks == 9630 else {"max_model_len": 16 * blocks}))
    return w, kf.Fleet(replicas=max(1, round(16 * scale)), seed=seed, sim=sim)


@cache
def _today(scale: float, seed: int, case: str, rate: float):
    """One profile run per profile of section 3 (``case``: long or short answers), at a rate of the guide's scale."""
    w, fleet = _scaled(scale, seed, GUIDE_LONG if case == "long" else GUIDE_SHORT, 9630 if case == "long" else 2400)
    requests = round((1500 if case == "long" else 3000) * scale)
    return {p: kf.simulate(w, Load(rate=scale * rate, requests=requests), replace(fleet, profile=p)) for p in TODAY}


def test_04_the_scaled_benchmark_fills_three_quarters_of_the_cache():
    for scale in (P4["fleet_scale"], 1.0):
        for lengths, blocks in ((GUIDE_LONG, 9630), (GUIDE_SHORT, 2400)):
            w, fleet = _scaled(scale, 1, lengths, blocks)
            working = w.groups * (w.system_prompt_len + w.prompts_per_group * w.question_len)
            assert 0.7 <= working / (fleet.replicas * blocks * 16) <= 0.8, (scale, lengths)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_04_optimized_baseline_never_moves_a_group(seed):
    cmp = _compare4(seed, _workload4(seed), ",".join(TODAY))
    assert _kept_together(cmp.run("default-plugins")) >= 0.75  # both keep each group together
    run = cmp.run("optimized-baseline")
    first: dict[int, str] = {}
    for r in sorted(run.requests, key=lambda r: r.started):
        first.setdefault(r.group, r.endpoint)
        assert r.endpoint == first[r.group], (r.group, r.endpoint, first[r.group])


# The notebook's scale with several seeds, and the guide's own scale with the notebook's seed ("four servers reproduce
# what sixteen show").
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("scale", "seed"), [*((P4["fleet_scale"], s) for s in SEEDS), (1.0, 1)])
def test_04_long_answers_default_holds_short_answers_today(scale, seed):
    low, high = (float(r) for r in P4["long_rates"].split(","))
    p90 = {p: run.summary.ttft_p90_s for p, run in _today(scale, seed, "long", low).items()}
    assert max(p90.values()) < 0.05, p90  # both under 50 ms at the lowest rate
    p90 = {p: run.summary.ttft_p90_s for p, run in _today(scale, seed, "long", high).items()}
    assert p90["default-plugins"] <= 0.25, p90
    assert p90["optimized-baseline"] >= 1.0 and p90["optimized-baseline"] > 10 * p90["default-plugins"], p90
    short = {p: run.summary for p, run in _today(scale, seed, "short", P4["short_rate"]).items()}
    ob, guide = short["optimized-baseline"], short["default-plugins"]
    assert ob.ttft_p90_s < guide.ttft_p90_s and ob.prefix_cache_hit_rate > guide.prefix_cache_hit_rate, short


def _full_beside_empty(run) -> int:
    """Samples at which a server whose KV cache is full has requests waiting while another's is mostly empty."""
    at: dict[float, list] = {}
    for s in run.samples:
        at.setdefault(s.t, []).append(s)
    return sum(any(s.kv_usage >= 0.95 and s.waiting >= 3 for s in ss) and min(s.kv_usage for s in ss) < 0.5
               for ss in at.values())


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_04_optimized_baseline_queues_at_a_full_server_beside_an_empty_one(seed):
    runs = _today(P4["fleet_scale"], seed, "long", float(P4["long_rates"].split(",")[-1]))
    seen = {p: _full_beside_empty(run) for p, run in runs.items()}
    assert seen["optimized-baseline"] >= 10 and seen["default-plugins"] * 5 <= seen["optimized-baseline"], seen


# ------------------------------------------------------------------------------------------- 06, on the virtual clock
SWEEP_SEEDS = (1, 0, 2)  # the notebook's first


def _workload6(seed: int, cls=SharedPrefix, **kw):
    return cls(groups=P6["groups"], prompts_per_group=P6["prompts_per_group"],
               system_prompt_len=P6["system_prompt_len"], question_len=P6["question_len"],
               output_len=P6["output_len"], seed=seed, **kw)


def _fleet6(seed: int) -> kf.Fleet:
    kv = P6["kv_tokens_per_replica"]
    return kf.Fleet(replicas=P6["replicas"], seed=seed, sim=kf.SimConfig(num_gpu_blocks=kv // 16, max_model_len=kv))


RATES6 = sorted(float(r) for r in P6["rates"].split(","))
COUNTS6 = sorted({P6["replicas"], *(int(n) for n in P6["replica_counts"].split(",") if n.strip())})
PROFILES6 = P6["profiles"].split(",")


@cache
def _sweep6(seed: int):
    return kf.sweep(_workload6(seed), Load(rate=1.0, requests=P6["requests"]), RATES6, COUNTS6, PROFILES6,
                    _fleet6(seed), jobs=P6["jobs"], progress=False)


def _point(sweep, profile, replicas, rate):
    return next(p.summary for p in sweep.points if (p.profile, p.replicas, p.rate) == (profile, replicas, rate))


def _capacity(sweep) -> dict[tuple[str, int], float]:
    return {(r["profile"], r["replicas"]): r["capacity_rps"] or 0.0 for r in sweep.capacity(P6["objective_ttft_p90"])}


def test_06_the_notebook_sweeps_what_the_tests_check():
    code = _code("06-capacity")
    assert "seed=1" in code and "hot_groups=1, hot_share=hot_share" in code and "Load(rate=hot_rate" in code


def test_06_the_working_set_fills_three_quarters_of_the_cache():
    working = P6["groups"] * (P6["system_prompt_len"] + P6["prompts_per_group"] * P6["question_len"])
    assert round(100 * working / (P6["replicas"] * P6["kv_tokens_per_replica"])) == 73


@pytest.mark.slow
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_06_at_the_lowest_rate_every_profile_meets_the_objective(seed):
    for profile in PROFILES6:
        assert _point(_sweep6(seed), profile, P6["replicas"], RATES6[0]).ttft_p90_s <= P6["objective_ttft_p90"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_06_blind_routing_finds_under_a_third_of_what_prefix_aware_routing_finds(seed):
    for n in COUNTS6:
        for rate in RATES6:
            hit = {p: _point(_sweep6(seed), p, n, rate).prefix_cache_hit_rate for p in PROFILES6}
            assert max(hit["random"], hit["load-only"]) < min(hit["prefix-only"], hit["default-plugins"]) / 3, hit


@pytest.mark.slow
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_06_no_hit_rate_beats_the_best_possible(seed):
    block = 16  # the simulated servers' block size: only whole blocks of the system prompt are reused
    cached = (P6["system_prompt_len"] // block) * block
    best = (P6["prompts_per_group"] - 1) / P6["prompts_per_group"] * cached / (P6["system_prompt_len"]
                                                                             + P6["question_len"])
    assert 0.6 < best < 0.7  # "about two thirds"
    assert all(p.summary.prefix_cache_hit_rate <= best for p in _sweep6(seed).points)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_06_the_default_gives_up_a_few_hits_when_servers_are_busy(seed):
    for n in COUNTS6:
        top = {p: _point(_sweep6(seed), p, n, RATES6[-1]).prefix_cache_hit_rate
               for p in ("prefix-only", "default-plugins")}
        assert top["prefix-only"] - 0.15 < top["default-plugins"] < top["prefix-only"], top


@pytest.mark.slow
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_06_below_saturation_the_profile_hardly_matters_past_it_everything(seed):
    n = P6["replicas"]
    low = [_point(_sweep6(seed), p, n, RATES6[0]).ttft_p90_s for p in PROFILES6]
    high = {p: _point(_sweep6(seed), p, n, RATES6[-1]).ttft_p90_s for p in PROFILES6}
    assert max(low) <= P6["objective_ttft_p90"] / 2  # all well inside the objective
    assert max(high.values()) >= 10 * min(high.values()), high
    for aware in ("prefix-only", "default-plugins"):
        assert high[aware] <= P6["objective_ttft_p90"], high
    assert high["random"] >= 10 * _point(_sweep6(seed), "random", n, RATES6[0]).ttft_p90_s


@pytest.mark.slow
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_06_cache_affinity_is_capacity_and_load_only_is_no_better_than_random(seed):
    cap = _capacity(_sweep6(seed))
    for n in COUNTS6:
        assert min(cap["prefix-only", n], cap["default-plugins", n]) >= max(cap["random", n], cap["load-only", n])
        assert cap["load-only", n] <= cap["random", n]
    n = P6["replicas"]
    assert min(cap["prefix-only", n], cap["default-plugins", n]) > max(cap["random", n], cap["load-only", n])


@pytest.mark.slow
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_06_with_uniform_groups_prefix_only_does_about_as_well_as_the_default(seed):
    cap, n = _capacity(_sweep6(seed)), P6["replicas"]
    rates = [0.0, *RATES6]
    for m in COUNTS6:  # within one rate step of each other
        assert abs(rates.index(cap["prefix-only", m]) - rates.index(cap["default-plugins", m])) <= 1
    top = {p: _point(_sweep6(seed), p, n, RATES6[-1]).ttft_p90_s for p in ("prefix-only", "default-plugins")}
    assert top["prefix-only"] < top["default-plugins"], top  # on 16 servers even better


@pytest.mark.slow
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_06_capacity_grows_with_replicas_by_how_much_depends_on_the_profile(seed):
    cap = _capacity(_sweep6(seed))
    small, big = COUNTS6[0], COUNTS6[-1]
    growth = {p: cap[p, big] / cap[p, small] for p in PROFILES6 if cap[p, small]}
    assert all(cap[p, big] >= cap[p, small] for p in PROFILES6)
    assert max(growth.values()) > min(growth.values()), growth


@pytest.mark.slow
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_06_a_hot_group(seed):
    w = _workload6(seed, Skewed, hot_groups=1, hot_share=P6["hot_share"])
    hot = kf.compare_profiles(w, Load(rate=P6["hot_rate"], requests=P6["hot_requests"]),
                              ("prefix-only", "default-plugins"), _fleet6(seed), say=lambda _m: None)
    runs = {r.profile: r for r in hot.runs}
    objective = P6["objective_ttft_p90"]
    assert runs["prefix-only"].top_share(0) == 1.0
    assert runs["prefix-only"].summary.ttft_p90_s > objective >= runs["default-plugins"].summary.ttft_p90_s
    # the rate both met the objective at with uniform groups
    assert P6["hot_rate"] in RATES6
    for p in runs:
        assert _point(_sweep6(seed), p, P6["replicas"], P6["hot_rate"]).ttft_p90_s <= objective


# ------------------------------------------------------------------------------------------- 07, on the virtual clock
def _workload7(seed: int, **kw) -> SharedPrefix:
    return SharedPrefix(groups=P7["groups"], prompts_per_group=P7["prompts_per_group"],
                        system_prompt_len=P7["system_prompt_len"], question_len=P7["question_len"],
                        output_len=P7["output_len"], seed=seed).model_copy(update=kw)


def test_07_the_notebook_runs_what_the_tests_check():
    code = _code("07-precise-routing")
    assert "with_pickers(picker_replicas)" in code and "outside_traffic(s.target, outside_rate)" in code
    assert "s.with_pickers(1).fleet(1, fleet_replicas)" in code and '"groups": fleet_groups' in code
    assert P7["replicas"] and P7["picker_replicas"] > 1 and P7["outside_rate"] > 0


@cache
def _live7(seed: int):
    """The live run (several pickers, outside traffic) on the virtual clock over the notebook's stack: each
    profile's run and what its pickers believed (for stale picks)."""
    base = session("local", replicas=P7["replicas"]).with_pickers(P7["picker_replicas"]).fleet(seed)
    base = replace(base, outside_rate=P7["outside_rate"])  # kit.outside_traffic's prompts: 1,000 tokens, 1 out
    out = {}
    for profile in P7["profiles"].split(","):
        trace = kf.Trace()
        run = kf.simulate(_workload7(seed), Load(rate=P7["rate"], requests=P7["requests"]),
                          replace(base, profile=profile), trace=trace)
        out[profile] = (run, trace)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_07_with_several_pickers_and_outside_traffic_precise_routing_pays(seed):
    runs = _live7(seed)
    stale = {p: trace.stale_picks(run) for p, (run, trace) in runs.items()}
    hit = {p: run.routed_hit_rate() for p, (run, _) in runs.items()}
    p90 = {p: run.summary.ttft_p90_s for p, (run, _) in runs.items()}
    assert stale["precise"] * 4 <= stale["default-plugins"] and stale["default-plugins"] >= 5, stale
    assert hit["precise"] > hit["default-plugins"] > hit["random"], hit
    assert p90["precise"] < p90["default-plugins"], p90
    assert _kept_together(runs["precise"][0]) > _kept_together(runs["default-plugins"][0])


@cache
def _fleet7(seed: int, pickers: int):
    w = _workload7(seed, groups=P7["fleet_groups"])
    f = session("local", replicas=P7["replicas"]).with_pickers(pickers).fleet(seed, P7["fleet_replicas"])
    profiles = P7["profiles"].split(",") if pickers > 1 else [p for p in P7["profiles"].split(",") if p != "random"]
    return {r.profile: r.summary for r in kf.compare_profiles(
        w, Load(rate=P7["fleet_rate"], requests=P7["fleet_requests"]), profiles, f, say=lambda _m: None).runs}


@pytest.mark.slow
@pytest.mark.parametrize("seed", (1, 0, 2))  # the notebook's first
def test_07_one_picker_or_several_at_a_larger_scale(seed):
    one, several = _fleet7(seed, 1), _fleet7(seed, P7["picker_replicas"])
    a, p = one["default-plugins"], one["precise"]
    assert abs(a.prefix_cache_hit_rate - p.prefix_cache_hit_rate) <= 0.05  # about as much cached
    assert a.ttft_p90_s <= p.ttft_p90_s <= 2 * a.ttft_p90_s  # about as fast, approximate even a little sooner
    a, p = several["default-plugins"], several["precise"]
    assert p.prefix_cache_hit_rate >= 2 * a.prefix_cache_hit_rate
    assert p.ttft_p90_s * 3 <= a.ttft_p90_s


# --------------------------------------------------------------------------------------------- 03, on a local stack
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_03_a_repeated_prompt_goes_to_the_same_server_and_finds_its_prefix_cached(tmp_path, monkeypatch):
    """The notebook itself, run twice on one stack a participant deployed from 02's pickers: first with the guide's
    default, then after picking ``load-only`` (the notebook says so, shows the hit anyway, and puts load-only back).
    The simulators keep their caches between the runs, so the second run's first request starts cold only because
    its prompt is new."""
    from kit.targets.processes import free_port_block
    from kit.ui import Selection

    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path / "state"))
    port = free_port_block(4)
    params = {"release_postfix": "lessons", "gateway_port": port}

    def run(profile: str) -> str:
        Selection.remembered.clear()
        Selection("local", P2["replicas"], profile, release_postfix="lessons", gateway_port=port).deploy(
            say=lambda _m: None)
        out = tmp_path / f"03-{profile}.ipynb"
        papermill.execute_notebook(str(NB / "03-inference.ipynb"), str(out), parameters=params,
                                   kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
        return "".join("".join(o.get("text", "")) for c in json.loads(out.read_text())["cells"]
                       for o in c.get("outputs", []))

    try:
        printed = {p: run(p) for p in ("default-plugins", "load-only")}
        s = session("local", release_postfix="lessons", gateway_port=port)
        assert s.profile() == "load-only"  # put back
    finally:
        session("local", release_postfix="lessons", gateway_port=port).destroy(say=lambda _m: None)
        Selection.remembered.clear()
    assert "whose picker weighs where each prompt's prefix is cached" in printed["default-plugins"]
    assert "load-only, whose picker does not look at prefixes" in printed["load-only"]
    assert "back on load-only" in printed["load-only"]
    for text in printed.values():
        m = re.search(r"the same server, with (\d+) of (\d+) prompt tokens from the prefix cache; first token after "
                      r"(\d+) ms \(median of 3\) instead of (\d+) ms for the first, which found (\d+) cached", text)
        assert m, text[-2000:]
        cached, prompt, again, first, first_cached = map(int, m.groups())
        assert cached >= 0.9 * prompt and first_cached < 0.1 * prompt and again < first, m.group(0)


if __name__ == "__main__":  # list the sentences and their tests
    for name, sentences in SENTENCES.items():
        print(name)
        for sentence, test in sentences:
            print(f"  - {sentence}\n    → {test}")
    sys.exit(0)
