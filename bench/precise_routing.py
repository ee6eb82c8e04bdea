"""Approximate vs precise vs random prefix-cache routing under cache pressure on the local stack (issue #11).

Starts the local environment on free ports with its own state folder, runs one shared-prefix workload
under each profile (fresh gateway per profile, caches reset), prints hit rate and TTFT p90 per profile,
and writes the comparison (``--out``). The numbers in docs/benchmarks.md come from this script.

    .venv/bin/python bench/precise_routing.py --repeat 2 --out build/precise.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="random,default-plugins,precise")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--groups", type=int, default=12)
    ap.add_argument("--prompts-per-group", type=int, default=12)
    ap.add_argument("--system-prompt-len", type=int, default=3000)
    ap.add_argument("--question-len", type=int, default=100)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--requests", type=int, default=288)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    os.environ.setdefault("KIT_STATE_DIR", tempfile.mkdtemp(prefix="kit-precise-"))

    import kit
    from kit.targets.processes import port_in_use

    port = next(p for p in range(20000 + os.getpid() % 20000, 60000, 17)
                if not any(port_in_use(p + i) for i in range(args.replicas + 2)))
    s = kit.session("local", replicas=args.replicas, gateway_port=port, release_postfix="precise-bench")
    workload = kit.SharedPrefix(groups=args.groups, prompts_per_group=args.prompts_per_group,
                                system_prompt_len=args.system_prompt_len, question_len=args.question_len,
                                output_len=args.output_len, seed=1)
    load = kit.Load(rate=args.rate, requests=args.requests)
    rows = []
    try:
        for r in range(args.repeat):
            cmp = s.compare_profiles(workload, load, kit.check_profiles(args.profiles), progress=False)
            for run in cmp.runs:
                su = run.summary
                rows.append({"repeat": r, "profile": run.profile, "hit_rate": su.prefix_cache_hit_rate,
                             "ttft_p50_s": su.ttft_p50_s, "ttft_p90_s": su.ttft_p90_s, "errors": su.errors})
            if args.out:
                cmp.save(str(Path(args.out).with_suffix(f".{r}.json")))
    finally:
        s.destroy()
    print(json.dumps({"workload": workload.model_dump(), "load": load.model_dump(), "replicas": args.replicas,
                      "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
