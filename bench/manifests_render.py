"""Render and offline-validation time of every cluster environment, both release tracks, and its object count.

    .venv/bin/python bench/manifests_render.py [--repeat 5] [--out bench/results/manifests/DATE.json]

Median of ``--repeat`` runs per environment, in one process (the first run of each is a warm-up and not
counted). Today's environments render with the scheduler file both pickers accept, so they run before
today's profile is in the kit too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

from kit.manifests.environments import available, load_environment
from kit.manifests.render import render
from kit.manifests.validate import validate

CONFIG = "templates/scheduler/default-plugins.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="JSON file for the figures")
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
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        out = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {platform.node()}",
               "command": f"bench/manifests_render.py --repeat {args.repeat}", "commit": commit, "environments": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
