"""The picker's cycle with another checkout's approximate prefix plugin and with this one, picks interleaved.

Run: ``.venv/bin/python bench/picker_ab.py --baseline DIR [--requests 2000] [--distinct] [--out FILE]``,
where DIR holds the other checkout (e.g. ``git archive <commit> kit | tar -x -C DIR``). Both schedulers
load the default profile; in the first, every ``prefix-cache-scorer`` gets DIR's
``approx-prefix-cache-producer`` (its hashing and index) instead of this checkout's. Each request goes
through both, one after the other (which goes first alternates), so a shared machine slows both
alike: compare the two within a row. CPU time (``time.thread_time``) and wall-clock time of each pick
(schedule and PreRequest, as ``kit bench-picker``) are kept; the first 200 picks warm the indexes.
Prints a Markdown table; ``--out`` writes the rows as JSON.

``--runs``: instead, whole ``bench_picker`` runs (as ``kit bench-picker`` and ``bench/gateway_bench.py``
time them: CPU time in one run, wall clock in another) of DIR's checkout and of this one, in turn, in
fresh processes: each side's picker alone in its process, the way the earlier tables were measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from kit import paths
from kit.picker.bench import WARMUP, endpoints, make_requests, percentiles
from kit.picker.config import load_picker_file
from kit.picker.plugins.scorers.prefix import PrefixCacheScorer
from kit.picker.scheduler import Scheduler

GRID = [(n, chars) for n in (4, 16, 64, 256) for chars in (1000, 32000, 128000)]


def load_plugin(checkout: Path) -> ModuleType:
    """``kit/picker/plugins/approx_prefix.py`` of ``checkout``, as a module of its own."""
    path = checkout / "kit/picker/plugins/approx_prefix.py"
    spec = importlib.util.spec_from_file_location("baseline_approx_prefix", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no approximate prefix plugin at {path}")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scheduler(plugin: ModuleType | None) -> Scheduler:
    sched = load_picker_file(paths.default_scheduler_config()).scheduler
    for profile in sched.profiles.values():
        for scorer, _ in profile.scorers:
            if plugin is not None and isinstance(scorer, PrefixCacheScorer):
                scorer.producer = plugin.ApproxPrefixCacheProducer(scorer.name, scorer.producer.p)
    return sched


def ab(plugin: ModuleType, n: int, chars: int, requests: int, distinct: bool) -> dict:
    rng = random.Random(0)
    eps = endpoints(rng, n)
    scheds = {"before": scheduler(plugin), "after": scheduler(None)}
    cpu: dict[str, list[float]] = {k: [] for k in scheds}
    wall: dict[str, list[float]] = {k: [] for k in scheds}
    for i, req in enumerate(make_requests(rng, chars, requests + WARMUP, distinct)):
        for name in (("before", "after") if i % 2 else ("after", "before")):
            sched = scheds[name]
            w0, c0 = time.perf_counter(), time.thread_time()
            _, state = sched.schedule(req, eps)
            sched.pre_request(state, req, state["picked"][0])
            c1, w1 = time.thread_time(), time.perf_counter()
            if i >= WARMUP:
                cpu[name].append(c1 - c0)
                wall[name].append(w1 - w0)
    row = {"endpoints": n, "prompt_chars": chars, "requests": requests, "distinct": distinct}
    for name in scheds:
        c, w = percentiles(cpu[name]), percentiles(wall[name])
        row[name] = {"cpu_p50_us": c["p50_us"], "cpu_p99_us": c["p99_us"], "wall_p50_us": w["p50_us"],
                     "wall_p99_us": w["p99_us"]}
    return row


RUN = """
import json, sys, time
from kit.picker.bench import bench_picker
n, chars, requests, distinct = (int(a) for a in sys.argv[1:])
extra = {"distinct": True} if distinct else {}  # (an older bench_picker has no such parameter)
cpu = bench_picker(n, chars, requests, clock=time.thread_time, **extra)
wall = bench_picker(n, chars, requests, **extra)
print(json.dumps({"cpu_p50_us": cpu["p50_us"], "cpu_p99_us": cpu["p99_us"],
                  "wall_p50_us": wall["p50_us"], "wall_p99_us": wall["p99_us"]}))
"""


def runs(baseline: Path, n: int, chars: int, requests: int, distinct: bool) -> dict:
    """``bench_picker`` in a fresh process with DIR's code, then with this checkout's (``distinct`` needs
    this checkout's ``bench_picker`` on both sides: run with DIR holding this ``kit/picker/bench.py``)."""
    row: dict = {"endpoints": n, "prompt_chars": chars, "requests": requests, "distinct": distinct}
    here = Path(__file__).resolve().parents[1]
    for name, tree in (("before", baseline), ("after", here)):
        env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
        argv = [sys.executable, "-c", RUN, str(n), str(chars), str(requests), str(int(distinct))]
        out = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, check=True)
        row[name] = json.loads(out.stdout)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| endpoints | prompt chars | CPU p50 µs before → after | CPU p99 µs before → after "
             "| wall p50 µs before → after | wall p99 µs before → after |", "|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        cells = [f"{b[k]:.0f} → **{a[k]:.0f}**" for k in ("cpu_p50_us", "cpu_p99_us", "wall_p50_us", "wall_p99_us")]
        lines.append(f"| {r['endpoints']} | {r['prompt_chars']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="the other checkout's directory")
    ap.add_argument("--requests", type=int, default=2000, help="timed picks per configuration and side")
    ap.add_argument("--distinct", action="store_true", help="every prompt new: nothing matches, nothing repeats")
    ap.add_argument("--grid", default=",".join(f"{n}x{c}" for n, c in GRID),
                    help="configurations, ENDPOINTSxCHARS separated by commas")
    ap.add_argument("--runs", action="store_true", help="whole runs in turn, each side in its own process")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    args = ap.parse_args(argv)
    plugin = None if args.runs else load_plugin(args.baseline)
    rows = []
    for cfg in args.grid.split(","):
        n, chars = (int(x) for x in cfg.split("x"))
        rows.append(runs(args.baseline, n, chars, args.requests, args.distinct) if plugin is None
                    else ab(plugin, n, chars, args.requests, args.distinct))
        print(f"picker a/b: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
