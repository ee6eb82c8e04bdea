"""One workload under several scheduler profiles on the virtual clock: a ``Comparison``, as on the local stack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from kit.experiments.results import Comparison
from kit.experiments.workloads import Load, Workload
from kit.fleet.loop import Fleet, simulate
from kit.paths import COMPARED_PROFILES as DEFAULT_PROFILES


def compare_profiles(workload: Workload, load: Load, profiles: tuple[str, ...] | list[str] = DEFAULT_PROFILES,
                     fleet: Fleet | None = None, progress: bool = False,
                     say: Callable[[str], None] = print) -> Comparison:
    """Each profile in turn on a fresh fleet (cold caches), one line printed per profile."""
    base = fleet or Fleet()
    out = Comparison(workload.model_dump(), load.model_dump(), "fleet simulator",
                     scale=f"virtual clock, {base.replicas} replicas")
    for p in profiles:
        run = simulate(workload, load, replace(base, profile=p), progress=progress)
        out.runs.append(run)
        s = run.summary
        say(f"profile {p}: {s.ok} requests, hit rate {100 * s.prefix_cache_hit_rate:.1f}%, TTFT p90 "
            f"{1000 * (s.ttft_p90_s or 0):.1f} ms, errors {s.errors}")
    return out
