"""Render and offline-validation time of every cluster environment, both release tracks, and its object count.

    .venv/bin/python bench/manifests_render.py [--repeat 5] [--record]

Median of ``--repeat`` runs per environment, in one process (the first run of each is a warm-up and not
counted). Today's environments render with the scheduler file both pickers accept, so they run before
today's profile is in the kit too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.record import write_record
from kit.manifests.environments import available, load_environment
from kit.manifests.render import render
from kit.manifests.validate import validate

CONFIG = "templates/scheduler/default-plugins.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--record", action="store_true", help="write the figures to bench/results/manifests/")
    args = ap.parse_args()
    rows = []
    for name in available():
        env = load_environment(name)
        if env.target != "cluster":
            continue
        render(env, CONFIG)  # warm-up: templates and schemas load once per process
        r_times, v_times = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            rendered = render(env, CONFIG)
            t1 = time.perf_counter()
            problems, _ = validate(rendered)
            t2 = time.perf_counter()
            assert problems == [], problems
            r_times.append(t1 - t0)
            v_times.append(t2 - t1)
        rows.append({"environment": name, "release": env.release, "objects": len(rendered.objects),
                     "render_ms": round(1000 * statistics.median(r_times), 1),
                     "validate_ms": round(1000 * statistics.median(v_times), 1)})
        print(f"{name:32} {env.release:12} {rows[-1]['objects']:3} objects  render {rows[-1]['render_ms']:7} ms  "
              f"validate {rows[-1]['validate_ms']:7} ms")
    if args.record:
        columns = ["environment", "release", "objects", "render_ms", "validate_ms"]
        today = [r for r in rows if r["release"] == "llm-d-v0.10"]
        write_record(
            "manifests", "render", "Render and validate every cluster environment",
            table={"columns": columns, "rows": [[r[c] for c in columns] for r in rows]},
            figures={"median render (ms)": statistics.median(r["render_ms"] for r in rows),
                     "median validate (ms)": statistics.median(r["validate_ms"] for r in rows),
                     "objects, optimized-baseline standalone": next(
                         r["objects"] for r in today if r["environment"] == "optimized-baseline")},
            notes=f"Median of {args.repeat} runs per environment after a warm-up, in one process. Render is "
                  "templates to objects, with the scheduler config loaded and checked by the picker; validate is "
                  "the Kubernetes schemas, the pinned CRDs, the cross-object and hardening rules. Today's "
                  "environments render with the guide's scheduler file (both pickers accept it). The spread "
                  "between similar environments is the shared machine's noise: read 'well under a second'.")

if __name__ == "__main__":
    main()
