"""The scheduling-quality bar on the virtual clock: the kit's profiles against round-robin, per rate.

Run: ``.venv/bin/python bench/scheduling_quality.py [--seeds 0 1] [--out FILE]``

The routers bench (``bench/routers.py``) compares routers over HTTP on this machine's cores; this script asks
the scheduling question alone, where the machine cannot bias it: the fleet simulator with the local stack's
servers (4 replicas, 512 KV blocks of 16 tokens, 16 sequences, time scale 4: times are what the local stack's
clock shows), the same three workloads as the routers bench, a rate sweep from light load to past saturation.
Per point: hit rate against the ideal (an unbounded cache that saw every earlier prompt), TTFT p50/p90, and
whether the profile met the bar (hit rate ≥ 0.9 × ideal where prefixes are shared; TTFT p90 ≤ round-robin's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from tqdm import tqdm

from kit import tokenizer
from kit.experiments.workloads import Load, MultiTurn, SharedPrefix, ideal_hit_rate, plan
from kit.fleet import compare_profiles
from kit.notebook import session

PROFILES = ("round-robin", "load-only", "prefix-only", "default-plugins", "prefix-active")
WORKLOADS = {  # the routers bench's three, and rates from light to past saturation (local-stack clock)
    "shared-prefix": (SharedPrefix(groups=16, prompts_per_group=32, system_prompt_len=1200, question_len=40,
                                   output_len=24, seed=11), (15, 30, 60, 90, 120)),
    "no-shared-prefix": (SharedPrefix(groups=512, prompts_per_group=1, system_prompt_len=1200, question_len=40,
                                      output_len=24, seed=12), (10, 20, 30, 45, 60)),
    "multi-turn": (MultiTurn(conversations=48, turns=4, system_prompt_len=600, question_len=60, output_len=24,
                             seed=13), (4, 8, 15, 22, 30)),
}
REQUESTS = 768


def ideal(w: SharedPrefix, load: Load) -> float:
    """The ideal hit rate of the run's prompts in arrival order (shared-prefix workloads: a conversation's
    history holds the servers' own answers, re-tokenized, which no canned text reproduces)."""
    return ideal_hit_rate([tokenizer.encode(job.prompt(0, []).text) for job in plan(w, load)[0]])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--table", metavar="JSON", help="print the tables of an earlier run's JSON and stop")
    args = ap.parse_args()
    if args.table:
        rows = json.loads(Path(args.table).read_text())
        print(markdown(rows, sorted({r["seed"] for r in rows})))
        return 0
    s = session("local", replicas=4)
    points = [(name, rate, seed) for name, (_, rates) in WORKLOADS.items() for rate in rates for seed in args.seeds]
    rows = []
    for name, rate, seed in tqdm(points, desc="points", unit="point", file=sys.stderr):
        w, _ = WORKLOADS[name]
        w = w.model_copy(update={"seed": w.seed + 100 * seed})
        load = Load(rate=rate, requests=REQUESTS)  # requests (turns, for conversations)
        runs = compare_profiles(w, load, PROFILES, s.fleet(seed), progress=False).runs
        rr = next(r.summary for r in runs if r.profile == "round-robin")
        best = ideal(w, load) if isinstance(w, SharedPrefix) else None
        for r in runs:
            su = r.summary
            shared = name != "no-shared-prefix"
            rows.append({"workload": name, "rate": rate, "seed": seed, "profile": r.profile,
                         "hit_rate": su.prefix_cache_hit_rate, "ideal_hit_rate": best and round(best, 4),
                         "ttft_p50_ms": round(1000 * su.ttft_p50_s, 1), "ttft_p90_ms": round(1000 * su.ttft_p90_s, 1),
                         "hit_ok": not (shared and best) or su.prefix_cache_hit_rate >= 0.9 * best,
                         "p90_ok": su.ttft_p90_s <= rr.ttft_p90_s, "errors": su.errors})
    print(markdown(rows, args.seeds))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def markdown(rows: list[dict], seeds: list[int]) -> str:
    """One table per workload: per profile and rate, ``hit rate (of ideal), p90 ms`` (median over seeds), ✓ where
    the bar held for every seed."""
    out = []
    for name in WORKLOADS:
        rates = sorted({r["rate"] for r in rows if r["workload"] == name})
        unit = "conversations/s" if name == "multi-turn" else "req/s"
        what = "hit rate" if name == "multi-turn" else "hit rate of ideal"
        lines = [f"**{name}** ({what}, TTFT p90 ms; median of seeds {', '.join(map(str, seeds))}; "
                 f"✓ = bar met for every seed)", "",
                 "| profile | " + " | ".join(f"{r:g} {unit}" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
        for p in PROFILES:
            cells = []
            for rate in rates:
                pts = [r for r in rows if r["workload"] == name and r["rate"] == rate and r["profile"] == p]
                hit = statistics.median(r["hit_rate"] / r["ideal_hit_rate"] if r["ideal_hit_rate"] else r["hit_rate"]
                                        for r in pts)
                p90 = statistics.median(r["ttft_p90_ms"] for r in pts)
                ok = all(r["hit_ok"] and r["p90_ok"] for r in pts)
                cells.append(f"{hit:.2f}, {p90:g}{' ✓' if ok else ''}" if name != "no-shared-prefix"
                             else f"{p90:g}{' ✓' if ok else ''}")
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
