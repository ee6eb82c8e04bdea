"""Where `make demo`'s time goes: the walkthrough run as the demo runs it, timed per notebook and per cell.

``--out DIR`` runs every notebook with papermill (``kit.experiments.report.run_walkthrough``, as ``kit demo``
does) on a stack of its own (a free port block, its own release postfix and state folder, so it can run beside
other stacks), then reads papermill's own timings from the executed notebooks: each notebook's duration, its
slowest cells and its size. It prints them and, with ``--json``, keeps them as one run's raw figures.

To compare two versions of the kit in the same conditions, run it from one checkout with ``PYTHONPATH``
pointing at the other one's folder (the kernels and the stack's processes inherit it), alternating the runs:

    .venv/bin/python bench/walkthrough.py --out /tmp/w/a1 --json /tmp/w/a1.json --label after
    PYTHONPATH=/tmp/base .venv/bin/python bench/walkthrough.py --out /tmp/w/b1 --json /tmp/w/b1.json --label before

then ``--record RUN.json ...`` writes them side by side as one results record (family ``workshop``, measurement
``walkthrough-per-notebook``; ``make results`` puts it on docs/results/workshop.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

NAME, TITLE = "walkthrough-per-notebook", "The walkthrough per notebook, before and after (make demo, side by side)"
NOTES = """Seconds per notebook as papermill timed them (`bench/walkthrough.py`), in runs that alternated the
two versions on the shared two-core machine while other engineers' tests and benchmarks ran (load {load}):
every figure is two to three times a quiet machine's, so compare within a pair. *Before* is the walkthrough
at `{before}`, *after* the reworked one at `{after}`: notebook 07 runs one live comparison instead of two
(several pickers and outside traffic at once) and has "one picker or several" on the virtual clock; a
kernel's first figure no longer waits for jsonschema's IRI parsers; 04 runs on four servers; 06 tries four
rates and a longer hot-group run. After / before in all: {ratios}. What the wall clock bounds, not the CPU,
fell by 18 s: the live runs' arrivals (04: two runs of 6.4 s; 07: six runs of 6 s before, three after).
Sizes are papermill's executed copies; a notebook saved from `make lab` is within 20% of them
(`tests/test_jupyterlab.py`).

Slowest cells after (run 1): {slowest}."""


def timings(executed: Path) -> dict:
    """Per notebook: seconds, size, and the slowest cells (index among code cells, seconds, first line)."""
    out = {}
    for nb in sorted(executed.glob("*.ipynb")):
        doc = json.loads(nb.read_text())
        cells = [c for c in doc["cells"] if c["cell_type"] == "code"
                 and "injected-parameters" not in c["metadata"].get("tags", [])]
        timed = [(i, c["metadata"].get("papermill", {}).get("duration") or 0.0, "".join(c["source"]).split("\n")[0])
                 for i, c in enumerate(cells)]
        out[nb.stem] = {"seconds": round(doc["metadata"]["papermill"]["duration"], 1), "bytes": nb.stat().st_size,
                        "slowest_cells": [{"code_cell": i, "seconds": round(t, 1), "starts": src[:60]}
                                          for i, t, src in sorted(timed, key=lambda x: -x[1])[:3]]}
    return out


def run(out: Path, label: str, raw: str | None) -> None:
    os.environ["KIT_STATE_DIR"] = str(out / "state")
    from kit.experiments import report
    from kit.notebook import session
    from kit.targets.processes import free_port_block

    port = free_port_block(12)
    postfix = f"bench{os.getpid()}"
    load = os.getloadavg()[0]
    start = time.monotonic()
    try:
        report.run_walkthrough(out, {"environment": "local", "release_postfix": postfix, "gateway_port": port})
    finally:
        session("local", release_postfix=postfix, gateway_port=port).destroy(say=lambda _m: None)
    total = time.monotonic() - start
    per = timings(out / "executed")
    print(f"\n{'notebook':24s} {'seconds':>8s} {'KB':>6s}  slowest cells (code cell: seconds)")
    for name, t in per.items():
        cells = ", ".join(f"{c['code_cell']}: {c['seconds']}" for c in t["slowest_cells"])
        print(f"{name:24s} {t['seconds']:8.1f} {t['bytes'] // 1024:6d}  {cells}")
    print(f"{'total (with the report)':24s} {total:8.1f}   load average {load:.1f} → {os.getloadavg()[0]:.1f}")
    if raw:
        kit_root = Path(report.__file__).resolve().parents[2]
        sha = subprocess.run(["git", "-C", str(kit_root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        Path(raw).write_text(json.dumps({"label": label, "commit": sha or None, "kit": str(kit_root),
                                         "load": [round(load, 1), round(os.getloadavg()[0], 1)],
                                         "total_seconds": round(total, 1), "notebooks": per}, indent=1) + "\n")


def record(paths: list[str], before: str | None) -> None:
    """One results record: the runs side by side, in the order given."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from record import write_record

    runs = [json.loads(Path(p).read_text()) for p in paths]
    names = list(runs[0]["notebooks"])
    seen: dict[str, int] = {}
    heads = []
    for r in runs:
        seen[r["label"]] = seen.get(r["label"], 0) + 1
        heads.append(f"{r['label']} ({seen[r['label']]}) (s)")
    first = {r["label"]: r for r in reversed(runs)}
    labels = list(dict.fromkeys(r["label"] for r in runs))
    columns = ["notebook", *heads, *(f"saved size {lab} (KB)" for lab in labels)]
    rows = [[f"`{n}`", *(r["notebooks"][n]["seconds"] for r in runs),
             *(first[lab]["notebooks"][n]["bytes"] // 1024 for lab in labels)] for n in names]
    rows.append(["**total** (with the report)", *(r["total_seconds"] for r in runs), *([None] * len(labels))])
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs) - 1, 2)]
    ratios = ", ".join(f"{b['total_seconds'] / a['total_seconds']:.2f}" for a, b in pairs)
    after = next(r for r in runs if r["label"] == labels[-1])
    slowest = "; ".join(f"`{n}` " + ", ".join(f"cell {c['code_cell']} ({c['starts'].strip()[:40]}…) {c['seconds']} s"
                                             for c in t["slowest_cells"][:2])
                        for n, t in after["notebooks"].items() if t["seconds"] > 15)
    loads = [x for r in runs for x in r["load"]]
    notes = NOTES.format(load=f"{min(loads):g}–{max(loads):g}", before=before or runs[0]["commit"],
                         after=after["commit"], ratios=ratios, slowest=slowest)
    command = "\n".join(["# alternating, each run on a stack of its own:",
                         ".venv/bin/python bench/walkthrough.py --out /tmp/w/after-1 --json after-1.json --label after",
                         "PYTHONPATH=<checkout of the version before> .venv/bin/python bench/walkthrough.py \\",
                         "    --out /tmp/w/before-1 --json before-1.json --label before",
                         ".venv/bin/python bench/walkthrough.py --record before-1.json after-1.json ..."])
    path = write_record("workshop", NAME, TITLE, notes=notes, table={"columns": columns, "rows": rows},
                        load=f"{min(loads):g}–{max(loads):g}")
    data = json.loads(path.read_text())  # the figures belong to the runs' commits and commands, not this one's
    data |= {"command": command, "commit": after["commit"]}
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="run the walkthrough: folder for the executed notebooks and the stack's state")
    ap.add_argument("--json", help="keep this run's figures here (raw, for --record)")
    ap.add_argument("--label", default="after", help="what this run is, e.g. before or after (default: after)")
    ap.add_argument("--record", nargs="+", metavar="RUN.json", help="write these runs as one results record")
    ap.add_argument("--before", help="the commit of the version before, if its runs could not tell")
    args = ap.parse_args()
    if args.record:
        record(args.record, args.before)
    elif args.out:
        run(Path(args.out).resolve(), args.label, args.json)
    else:
        ap.error("give --out DIR (a run) or --record RUN.json ... (a record)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
