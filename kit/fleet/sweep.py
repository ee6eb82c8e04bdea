"""Sweep rates × replicas × profiles, each point a separate simulation in its own process.

The points are independent, so they run in a process pool (one per core by default) and come back in
a fixed order: the sweep's result does not depend on which process finished first.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

from tqdm.auto import tqdm

from kit.errors import KitError
from kit.experiments.results import Summary, Sweep, SweepPoint
from kit.experiments.workloads import Load, Workload
from kit.fleet.loop import Fleet, simulate


def _point(args: tuple[Workload, Load, Fleet]) -> Summary:
    w, load, fleet = args
    return simulate(w, load, fleet).summary


def sweep(workload: Workload, load: Load, rates: list[float], replicas: list[int], profiles: list[str],
          fleet: Fleet | None = None, jobs: int | None = None, progress: bool = True) -> Sweep:
    """Every (profile, replicas, rate) point of ``workload``; ``load`` gives everything but the rate."""
    if load.concurrency is not None or load.stages is not None:
        raise KitError("a sweep varies the rate: give the load as a rate (not stages or concurrency)")
    if not rates or not replicas or not profiles:
        raise KitError("a sweep needs at least one rate, one replica count and one profile")
    base = fleet or Fleet()
    grid = [(p, n, r) for p in profiles for n in sorted(set(replicas)) for r in sorted(set(rates))]
    tasks = [(workload, load.model_copy(update={"rate": r}), replace(base, replicas=n, profile=p))
             for p, n, r in grid]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    out: list[Summary | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc="sweep points", unit="point", disable=not progress)
    if jobs == 1:
        for i, t in enumerate(tasks):
            out[i] = _point(t)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_point, t): i for i, t in enumerate(tasks)}
            for f in as_completed(futures):
                out[futures[f]] = f.result()
                bar.update()
    bar.close()
    return Sweep(workload.model_dump(), load.model_dump(),
                 [SweepPoint(p, n, r, s) for (p, n, r), s in zip(grid, out, strict=True) if s is not None],
                 scale=f"virtual clock ({base.sim.model}, refresh {base.refresh_interval:g} s)")
