"""Run the same workload under several scheduler profiles on a target, keeping everything the plots need."""

from __future__ import annotations

from kit import paths
from kit.experiments.loadgen import run_workload
from kit.experiments.observe import Sampler
from kit.experiments.results import Comparison, ProfileRun
from kit.experiments.workloads import Load, SharedPrefix
from kit.targets import Target

DEFAULT_PROFILES = paths.COMPARED_PROFILES


def run_profile(target: Target, profile: str, workload: SharedPrefix, load: Load, progress: bool = True) -> ProfileRun:
    """Switch the picker to ``profile``, start with cold caches (where the target can), run, sample metrics."""
    target.deploy(scheduler_config=paths.scheduler_profile(profile), say=lambda _m: None)
    target.reset_caches()
    with target.gateway() as url, Sampler(target.metrics) as sampler:
        run = run_workload(url, workload, load, progress=progress)
    # Explain one late request: by then the prefix index has seen every group.
    last = next((r for r in reversed(run.results) if r.ok and r.request_id), None)
    decision = target.decision(last.request_id) if last and last.request_id else None
    return ProfileRun(profile, run.summary(), run.results, sampler.rows, decision)


def compare_profiles(target: Target, workload: SharedPrefix, load: Load,
                     profiles: tuple[str, ...] = DEFAULT_PROFILES, progress: bool = True) -> Comparison:
    """Each profile in turn, printing one line as each starts and ends."""
    out = Comparison(workload.model_dump(), load.model_dump(), target.env.name)
    for p in profiles:
        print(f"profile {p}: running {load.requests or workload.groups * workload.prompts_per_group} requests",
              flush=True)
        out.runs.append(run_profile(target, p, workload, load, progress))
        r = out.runs[-1].summary
        print(f"profile {p}: hit rate {100 * r.prefix_cache_hit_rate:.1f}%, TTFT p90 "
              f"{1000 * (r.ttft_p90_s or 0):.1f} ms, errors {r.errors}", flush=True)
    return out
