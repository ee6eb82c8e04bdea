"""What notebook 04 teaches holds for every seed, not just the one the notebook uses: its ranking runs on the
virtual clock with the notebook's own parameters, over five seeds."""

from __future__ import annotations

import ast
from pathlib import Path

import papermill
import pytest

from kit.experiments.workloads import Load, SharedPrefix, Skewed
from kit.notebook import session

ROOT = Path(__file__).resolve().parents[1]
P = {k: ast.literal_eval(v["default"]) for k, v in
     papermill.inspect_notebook(str(ROOT / "notebooks" / "04-routing-and-cache.ipynb")).items()}
WALKTHROUGH_REPLICAS = ast.literal_eval(
    papermill.inspect_notebook(str(ROOT / "notebooks" / "02-deploy.ipynb"))["replicas"]["default"])


@pytest.fixture(scope="module")
def s():
    return session("local", replicas=WALKTHROUGH_REPLICAS)  # what 04 finds deployed after 02


@pytest.mark.parametrize("seed", range(5))
def test_the_ranking_is_the_same_for_every_seed(s, seed):
    w = SharedPrefix(groups=P["groups"], prompts_per_group=P["prompts_per_group"],
                     system_prompt_len=P["system_prompt_len"], question_len=P["question_len"],
                     output_len=P["output_len"], seed=seed)
    load = Load(rate=P["rate"], requests=P["requests"])
    ranking = s.compare_profiles(w, load, tuple(P["profiles"].split(",")), virtual=True, seed=seed)
    r = {run.profile: run.summary for run in ranking.runs}
    # The guide's default has the soonest first tokens...
    assert min(r, key=lambda p: r[p].ttft_p90_s) == "default-plugins", {p: r[p].ttft_p90_s for p in r}
    # ...and prefix-aware routing finds far more of each prompt cached than blind routing.
    for aware in ("prefix-only", "default-plugins"):
        for blind in ("random", "load-only"):
            assert r[aware].prefix_cache_hit_rate > 2 * r[blind].prefix_cache_hit_rate, (aware, blind, r)


@pytest.mark.parametrize("seed", range(5))
def test_a_hot_group_overloads_prefix_only_and_not_the_default(s, seed):
    w = Skewed(groups=P["groups"], prompts_per_group=P["prompts_per_group"], system_prompt_len=P["system_prompt_len"],
               question_len=P["question_len"], output_len=P["hot_output_len"], seed=seed, hot_groups=1, hot_share=0.5)
    skewed = s.compare_profiles(w, Load(rate=P["rate"], requests=P["requests"]),
                                ("random", "prefix-only", "default-plugins"), virtual=True, seed=seed)
    p90 = {run.profile: run.summary.ttft_p90_s for run in skewed.runs}
    assert p90["default-plugins"] < p90["prefix-only"] < p90["random"], p90


P7 = {k: ast.literal_eval(v["default"]) for k, v in
      papermill.inspect_notebook(str(ROOT / "notebooks" / "07-precise-routing.ipynb")).items()}


@pytest.mark.parametrize("seed", range(5))
def test_with_several_pickers_precise_beats_approximate_and_both_beat_random(s, seed):
    """Notebook 07's live run with ``picker_replicas`` pickers, on the virtual clock over the same stack."""
    w = SharedPrefix(groups=P7["groups"], prompts_per_group=P7["prompts_per_group"],
                     system_prompt_len=P7["system_prompt_len"], question_len=P7["question_len"],
                     output_len=P7["output_len"], seed=seed)
    several = s.with_pickers(P7["picker_replicas"])
    runs = several.compare_profiles(w, Load(rate=P7["rate"], requests=P7["requests"]),
                                    ("random", "default-plugins", "precise"), virtual=True, seed=seed).runs
    hit = {run.profile: run.summary.prefix_cache_hit_rate for run in runs}
    p90 = {run.profile: run.summary.ttft_p90_s for run in runs}
    assert hit["precise"] > hit["default-plugins"] > hit["random"], hit
    assert p90["precise"] < p90["default-plugins"] < p90["random"], p90
