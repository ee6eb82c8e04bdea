"""The session API beside what tests/test_notebooks.py covers: ``compare_profiles(reuse=...)`` (a live run already
made with the same workload and load is not run again), and which profiles route by prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

import kit.fleet
import kit.notebook
from kit.experiments.results import Comparison, ProfileRun, RequestResult, summarize
from kit.experiments.workloads import Load, SharedPrefix
from kit.notebook import session

WORKLOAD, LOAD = SharedPrefix(groups=2, prompts_per_group=2, seed=1), Load(rate=5.0, requests=4)


@pytest.fixture
def ran(monkeypatch) -> list[tuple[str, tuple[str, ...]]]:
    """What the session asked to run (live or virtual), in place of running it."""
    asked: list[tuple[str, tuple[str, ...]]] = []

    def fake(kind):
        def run(*args):
            workload, load, profiles = (args[1:4] if kind == "live" else args[0:3])
            asked.append((kind, tuple(profiles)))
            env = "fleet simulator" if kind == "virtual" else "local"
            one = summarize([RequestResult(200, ttft=0.01)], 1.0)
            return Comparison(workload.model_dump(), load.model_dump(), env,
                              [ProfileRun(p, one, [], []) for p in profiles])
        return run

    monkeypatch.setattr(kit.notebook, "compare_profiles", fake("live"))
    monkeypatch.setattr(kit.fleet, "compare_profiles", fake("virtual"))
    return asked


def test_a_profile_already_run_live_with_the_same_workload_and_load_is_reused(ran, capsys):
    s = session("local", release_postfix="reuse")
    earlier = s.compare_profiles(WORKLOAD, LOAD, ("random", "default-plugins"), progress=False)
    now = s.compare_profiles(WORKLOAD, LOAD, ("default-plugins", "optimized-baseline"), progress=False, reuse=earlier)
    assert ran[-1] == ("live", ("optimized-baseline",))
    assert [r.profile for r in now.runs] == ["default-plugins", "optimized-baseline"]
    assert now.run("default-plugins") is earlier.run("default-plugins")
    assert "profile default-plugins: as run above (same workload and load)" in capsys.readouterr().out


@pytest.mark.parametrize("change", [{"load": Load(rate=6.0, requests=4)},
                                    {"workload": WORKLOAD.model_copy(update={"seed": 2})}, {"virtual": True}])
def test_another_workload_load_or_a_virtual_run_runs_every_profile(ran, change):
    s = session("local", release_postfix="reuse")
    earlier = s.compare_profiles(WORKLOAD, LOAD, ("default-plugins",), progress=False)
    args = {"workload": WORKLOAD, "load": LOAD, **change}
    s.compare_profiles(args["workload"], args["load"], ("default-plugins", "optimized-baseline"), progress=False,
                       virtual=args.get("virtual", False), reuse=earlier)
    assert ran[-1][1] == ("default-plugins", "optimized-baseline")


def test_todays_llm_d_profiles_route_by_prefix_through_their_affinity_filter(tmp_path):
    from kit import paths
    from kit.notebook import routes_by_prefix

    for profile in ("optimized-baseline", "optimized-baseline-output-aware", "precise-prefix-cache-routing"):
        assert routes_by_prefix(paths.scheduler_profile(profile)), profile
    off = tmp_path / "off.yaml"  # a threshold of 0 disables the filter: the picker then follows load alone
    off.write_text(Path(paths.scheduler_profile("optimized-baseline")).read_text().replace("affinityThreshold: 0.80",
                                                                                     "affinityThreshold: 0"))
    assert not routes_by_prefix(str(off))
