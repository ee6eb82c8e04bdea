"""The main job (``make demo``): the whole walkthrough on the local environment, headless.

Runs every notebook with papermill into ``OUT/executed/``, writes ``OUT/report.html`` (every figure
embedded, offline) and ``OUT/results.json``, and leaves nothing running.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kit.experiments import report
from kit.experiments.results import table
from kit.notebook import session


def run_demo(out: str = "out", port: int = 0) -> int:
    """``port``: the local stack's gateway port (0: the environment's), for a machine where another stack has it."""
    out_dir = Path(out).resolve()
    start = time.monotonic()
    print(f"kit demo: running the walkthrough notebooks on the local environment; output in {out_dir}", flush=True)
    parameters: dict[str, object] = {"environment": "local", **({"gateway_port": port} if port else {})}
    try:
        html = report.run_walkthrough(out_dir, parameters)
    finally:  # in case a notebook stopped early
        session("local", gateway_port=port).destroy(say=lambda m: print(f"cleanup: {m}"))
    results = out_dir / "results.json"
    if results.exists():
        data = json.loads(results.read_text())
        print(f"\nHow the profiles rank (notebook 04, {data.get('scale', 'local stack')}; same workload, cold caches):")
        rows = data["table"]
        print(table({"profile": r["profile"], "prefix-cache hit rate": f"{100 * r['hit_rate']:.1f}%",
                            "TTFT p50": f"{1000 * r['ttft_p50_s']:.0f} ms",
                            "TTFT p90": f"{1000 * r['ttft_p90_s']:.0f} ms", "errors": r["errors"]} for r in rows))
    print(f"\nkit demo: done in {time.monotonic() - start:.0f} s")
    print(f"  executed notebooks: {out_dir / 'executed'}")
    print(f"  results:            {out_dir / 'results.json'}")
    print(f"  report:             {html}")
    return 0
