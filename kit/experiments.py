"""Run the same workload under several scheduler profiles and keep everything the plots need."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kit.observe import Sampler
from kit.session import Session
from kit.workloads import Load, SharedPrefix, run_workload

DEFAULT_PROFILES = ("random", "load-only", "prefix-only", "default-plugins")


@dataclass
class ProfileRun:
    profile: str
    summary: dict[str, Any]
    requests: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    decision: dict[str, Any] | None = None


@dataclass
class Comparison:
    workload: dict[str, Any]
    load: dict[str, Any]
    environment: str
    runs: list[ProfileRun] = field(default_factory=list)

    def run(self, profile: str) -> ProfileRun:
        return next(r for r in self.runs if r.profile == profile)

    def table(self) -> list[dict[str, Any]]:
        return [{"profile": r.profile, "hit_rate": r.summary["prefix_cache_hit_rate"],
                 "ttft_p50_s": r.summary["ttft_p50_s"], "ttft_p90_s": r.summary["ttft_p90_s"],
                 "e2e_p90_s": r.summary["e2e_p90_s"], "requests_per_s": r.summary["requests_per_s"],
                 "errors": r.summary["errors"]} for r in self.runs]

    def save(self, path: str | Path) -> Path:
        """The machine-readable results file."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"environment": self.environment, "workload": self.workload, "load": self.load,
                                 "profiles": {r.profile: r.summary for r in self.runs}, "table": self.table(),
                                 "runs": [asdict(r) for r in self.runs]}, indent=1))
        return p


def run_profile(s: Session, profile: str, workload: SharedPrefix, load: Load, progress: bool = True) -> ProfileRun:
    """Switch the picker to ``profile``, start with cold caches (locally), run, sample metrics throughout."""
    s.deploy(scheduler_config=profile, say=lambda _m: None)
    s.reset_caches()
    with s.gateway() as url, Sampler(s.metrics) as sampler:
        run = run_workload(url, workload, load, progress=progress)
    requests = [{"group": g, "endpoint": r.endpoint, "ok": r.ok, "ttft_s": r.ttft, "e2e_s": r.e2e,
                 "cached_tokens": r.cached_tokens, "prompt_tokens": r.prompt_tokens, "request_id": r.request_id}
                for r, g in zip(run.results, run.groups, strict=True)]
    # Explain one late request: by then the prefix index has seen every group.
    last = next((r for r in reversed(requests) if r["ok"] and r["request_id"]), None)
    decision = s.decision(last["request_id"]) if last else None
    return ProfileRun(profile, run.summary(), requests, sampler.rows, decision)


def compare_profiles(s: Session, workload: SharedPrefix, load: Load, profiles: tuple[str, ...] = DEFAULT_PROFILES,
                     progress: bool = True) -> Comparison:
    out = Comparison(workload.model_dump(), load.model_dump(), s.env.name)
    for p in profiles:
        print(f"profile {p}: running {load.requests or workload.groups * workload.prompts_per_group} requests",
              flush=True)
        out.runs.append(run_profile(s, p, workload, load, progress))
        r = out.runs[-1].summary
        print(f"profile {p}: hit rate {100 * r['prefix_cache_hit_rate']:.1f}%, TTFT p90 "
              f"{1000 * (r['ttft_p90_s'] or 0):.1f} ms, errors {r['errors']}", flush=True)
    return out
