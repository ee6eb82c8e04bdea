"""Where `make demo`'s time goes: the walkthrough run as the demo runs it, timed per notebook and per cell.

Runs every notebook with papermill (``kit.experiments.report.run_walkthrough``, as ``kit demo`` does) on a
stack of its own (a free port block, its own release postfix and state folder, so it can run beside other
stacks), then reads papermill's own timings from the executed notebooks: each notebook's duration, its
slowest cells, and its size. Prints a table and writes one JSON file (``--json``).

To compare two versions of the kit in the same conditions, run this file from one checkout with
``PYTHONPATH`` pointing at the other one's folder (the kernels and the stack's processes inherit it), and
alternate the runs: ``PYTHONPATH=/tmp/base .venv/bin/python bench/walkthrough.py --out /tmp/w-before``.

    .venv/bin/python bench/walkthrough.py --out /tmp/walkthrough [--json bench/results/walkthrough/NAME.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the executed notebooks, the report and the stack's state")
    ap.add_argument("--json", help="write the figures here (one file per run)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    os.environ["KIT_STATE_DIR"] = str(out / "state")
    from kit.experiments import report
    from kit.notebook import session
    from kit.targets.processes import free_port_block

    port = free_port_block(12)
    postfix = f"bench{os.getpid()}"
    params = {"environment": "local", "release_postfix": postfix, "gateway_port": port}
    load_before = os.getloadavg()
    start = time.monotonic()
    try:
        report.run_walkthrough(out, params)
    finally:
        session("local", release_postfix=postfix, gateway_port=port).destroy(say=lambda _m: None)
    total = time.monotonic() - start
    per = timings(out / "executed")
    print(f"\n{'notebook':24s} {'seconds':>8s} {'KB':>6s}  slowest cells (code cell: seconds)")
    for name, t in per.items():
        cells = ", ".join(f"{c['code_cell']}: {c['seconds']}" for c in t["slowest_cells"])
        print(f"{name:24s} {t['seconds']:8.1f} {t['bytes'] // 1024:6d}  {cells}")
    print(f"{'total (with the report)':24s} {total:8.1f}   load average before/after: "
          f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}")
    if args.json:
        kit_root = Path(report.__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(kit_root), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        result = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                  "machine": f"{platform.node()} ({os.cpu_count()} cores, load average {load_before[0]:.1f} at start)",
                  "command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": commit,
                  "kit": str(kit_root), "total_seconds": round(total, 1), "notebooks": per}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
