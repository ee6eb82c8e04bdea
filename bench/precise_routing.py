"""Approximate vs precise vs random prefix-cache routing under cache pressure on the local stack.

Starts the local environment on free ports with its own state folder; per repeat, runs one shared-prefix
workload under each profile (cold caches; the gateway restarts with each profile) while an outside
client sends its own long prompts straight to the servers (``--outside-rate``), and counts *stale picks*:
requests sent where the prefix scorer believed the prompt was cached (score ≥ 0.9) and the server found
less than half of it. The hit rate is that of the routed requests (cached prompt tokens the servers
reported for them over their prompt tokens); the servers' own counters also count the outside traffic.
Prints one JSON summary; the figures in docs/results/precise.md come from it.

    .venv/bin/python bench/precise_routing.py --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="random,default-plugins,precise")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--groups", type=int, default=12)
    ap.add_argument("--prompts-per-group", type=int, default=16)
    ap.add_argument("--system-prompt-len", type=int, default=2000)
    ap.add_argument("--question-len", type=int, default=100)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--rate", type=float, default=16.0)
    ap.add_argument("--requests", type=int, default=192)
    ap.add_argument("--outside-rate", type=float, default=8.0)
    ap.add_argument("--picker-replicas", type=int, default=1,
                    help="kit-only: endpoint pickers in the gateway splitting the requests, each with its own index")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the stack is destroyed on kill too
    os.environ.setdefault("KIT_STATE_DIR", tempfile.mkdtemp(prefix="kit-precise-"))

    import kit
    from kit.targets.processes import free_port_block

    port = free_port_block(args.replicas + 3)  # gateway, simulators, the events port
    s = kit.session("local", replicas=args.replicas, gateway_port=port, release_postfix="precise-bench")
    s = s.with_pickers(args.picker_replicas)
    workload = kit.SharedPrefix(groups=args.groups, prompts_per_group=args.prompts_per_group,
                                system_prompt_len=args.system_prompt_len, question_len=args.question_len,
                                output_len=args.output_len, seed=1)
    load = kit.Load(rate=args.rate, requests=args.requests)
    rows = []
    try:
        for rep in range(args.repeat):
            with kit.outside_traffic(s.target, args.outside_rate) as outside:
                for profile in kit.check_profiles(args.profiles):
                    before = dict(outside)
                    run = kit.run_profile(s.target, profile, workload, load, progress=False)
                    sent = {k: outside[k] - before[k] for k in outside}
                    beliefs = s.prefix_beliefs(run)
                    su = run.summary
                    rows.append({"repeat": rep, "profile": profile, "routed_hit_rate": round(run.routed_hit_rate(), 4),
                                 "server_hit_rate": su.prefix_cache_hit_rate,
                                 "ttft_p50_ms": round(1000 * su.ttft_p50_s, 1),
                                 "ttft_p90_ms": round(1000 * su.ttft_p90_s, 1),
                                 "stale_picks": run.stale_picks(beliefs), "scored": len(beliefs), "errors": su.errors,
                                 "outside_sent": sent["sent"], "outside_failed": sent["failed"]})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        s.destroy(say=lambda _m: None)
    medians = {p: {k: statistics.median(r[k] for r in rows if r["profile"] == p)
                   for k in ("routed_hit_rate", "ttft_p50_ms", "ttft_p90_ms", "stale_picks")}
               for p in dict.fromkeys(r["profile"] for r in rows)}
    print(json.dumps({"workload": workload.model_dump(), "load": load.model_dump(), "replicas": args.replicas,
                      "picker_replicas": args.picker_replicas, "outside_rate": args.outside_rate, "runs": rows,
                      "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
