"""What a workshop machine needs per participant: N local stacks side by side, as a room would run them.

Run: ``.venv/bin/python bench/workshop.py --stacks 4 [--replicas 4] [--out FILE]``

Each participant gets a stack of their own (``--postfix pI --port BASE+10*I``, as docs/how-to/run-a-workshop.md says),
all deployed at once; then every participant sends the same small shared-prefix workload through their
own gateway at the same moment (notebook 04's live part, smaller), and a notebook kernel's imports are
loaded once to size a kernel. Reported: deploy wall time, resident memory per stack (gateway +
simulators) and per kernel, each participant's TTFT p50/p90 and errors, and the machine's load. Every
stack is destroyed at the end, also on Ctrl-C. Uses a state folder of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kit.targets.processes import free_port_block

KERNEL = ("import kit, kit.notebook, kit.experiments.plots, plotly.graph_objects, ipywidgets, ipykernel.kernelapp; "
          "kit.experiments.plots.setup(); print(open('/proc/self/status').read())")


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _kit(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", type=int, default=4, help="participants (default: 4)")
    ap.add_argument("--replicas", type=int, default=4, help="simulators per participant (default: 4)")
    ap.add_argument("--requests", type=int, default=64, help="requests each participant sends (default: 64)")
    ap.add_argument("--rate", type=float, default=10.0, help="each participant's request rate (default: 10)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    env = {**os.environ, "KIT_STATE_DIR": tempfile.mkdtemp(prefix="kit-workshop-")}
    base = free_port_block(10 * args.stacks)
    people = [(f"p{i}", base + 10 * i) for i in range(args.stacks)]
    print(f"deploying {args.stacks} stacks of {args.replicas} simulators (ports {base}..{base + 10 * args.stacks - 1})",
          file=sys.stderr)
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.stacks) as pool:
            deployed = list(pool.map(lambda p: _kit("deploy", "-e", "local", "--postfix", p[0], "--port", str(p[1]),
                                                    "--replicas", str(args.replicas), env=env), people))
        deploy_s = time.monotonic() - t0
        failed = [p for p, r in zip(people, deployed, strict=True) if r.returncode]
        if failed:
            raise SystemExit(f"deploy failed for {failed}: {deployed[0].stderr[-500:]}")
        print(f"deployed in {deploy_s:.1f} s; measuring memory", file=sys.stderr)
        stack_rss = []
        for postfix, _ in people:
            st = json.loads(_kit("status", "-e", "local", "--postfix", postfix, "--json", env=env).stdout)
            stack_rss.append(sum(_rss_mib(p["pid"]) for p in st["processes"]))
        kernel = subprocess.run([sys.executable, "-c", KERNEL], capture_output=True, text=True, check=True).stdout
        kernel_rss = next(int(x.split()[1]) / 1024 for x in kernel.splitlines() if x.startswith("VmRSS:"))
        print(f"every participant sends {args.requests} requests at {args.rate:g}/s at once", file=sys.stderr)
        load_before = os.getloadavg()[0]
        bench = ["bench", "--workload", "shared-prefix", "--groups", "8", "--prompts-per-group", "8",
                 "--system-prompt-len", "3000", "--question-len", "100", "--output-len", "16",
                 "--rate", str(args.rate), "--requests", str(args.requests)]
        with ThreadPoolExecutor(args.stacks) as pool:
            runs = list(pool.map(lambda p: _kit(*bench, "--url", f"http://127.0.0.1:{p[1]}", env=env), people))
        summaries = [json.loads(r.stdout) for r in runs]
        rows = [{"participant": p, "ttft_p50_ms": round(1000 * s["ttft_p50_s"], 1),
                 "ttft_p90_ms": round(1000 * s["ttft_p90_s"], 1), "errors": s["errors"],
                 "hit_rate": s["prefix_cache_hit_rate"]} for (p, _), s in zip(people, summaries, strict=True)]
        out = {"stacks": args.stacks, "replicas": args.replicas, "cpus": os.cpu_count(), "deploy_s": round(deploy_s, 1),
               "stack_rss_mib_median": round(statistics.median(stack_rss), 1),
               "kernel_rss_mib": round(kernel_rss, 1),
               "ttft_p50_ms_median": statistics.median(r["ttft_p50_ms"] for r in rows),
               "ttft_p90_ms_median": statistics.median(r["ttft_p90_ms"] for r in rows),
               "errors": sum(r["errors"] for r in rows), "load_avg_1m": [round(load_before, 2),
                                                                           round(os.getloadavg()[0], 2)],
               "participants": rows}
    finally:
        for postfix, _ in people:
            _kit("destroy", "-e", "local", "--postfix", postfix, env=env)
        print(f"destroyed {len(people)} stacks", file=sys.stderr)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
