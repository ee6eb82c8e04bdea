"""Approximate vs precise vs random prefix-cache routing on the virtual clock, at 16 servers past saturation
(docs/results/precise.md, the virtual-clock figures).

Every point is one ``kit.fleet.simulate`` run: a shared-prefix workload whose groups fill 73% of the fleet's
KV cache, under one profile, at one rate, in one scenario, with one seed (the workload's prompts and
arrivals, and the pickers' random choices). Scenarios (docs/explanation/fleet-simulator.md):

* ``all``: all traffic through one picker;
* ``replicas``: ``--picker-replicas`` pickers split the traffic at random, each with its own state;
* ``outside``: besides the routed rate, ``--outside-share`` × that rate of fresh 1,000-token prompts go
  straight to the servers, around the picker.

Settings: ``local`` is ``environments/local.yaml``'s simulator (16 sequences, 512 blocks of 16 tokens; time
scale 1, so times are the model's) with bench/precise_routing.py's workload scaled to 16 servers (48 groups
× 16 prompts, system 2,000 + question 100 → 16 tokens: prefill-bound, like upstream's 32B model); ``h100``
is the kit's default server (Qwen3-0.6B on an H100) with the guide's workload (150 × 5, 6,000 + 1,200 →
1,000) and 9,630 blocks, as the guide-scale run in docs/results/scheduling.md.

Profiles: shipped names or files, plus ``precise-speculative``: ``precise.yaml`` with ``speculativeIndexing``
on and ``speculativeTTL`` from ``--speculative-ttl``. *Hit rate* is that of the routed requests; *stale
picks* are requests sent where the prefix scorer believed ≥ 90% of the prompt cached and the server found
< 50% (bench/precise_routing.py's definition); *servers per group*: the median number of servers a group's
requests went to. Points run in parallel processes (``--jobs``).

    .venv/bin/python bench/precise_fleet.py --setting local --seeds 1,2 --out build/precise_fleet_local.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {
    "local": {"sim": {"max_num_seqs": 16, "num_gpu_blocks": 512, "max_model_len": 8192},
              "workload": {"groups": 48, "prompts_per_group": 16, "system_prompt_len": 2000, "question_len": 100,
                           "output_len": 16},
              "rates": "400,800,1200,1600", "requests": 1536},
    "h100": {"sim": {"num_gpu_blocks": 9630},
             "workload": {"groups": 150, "prompts_per_group": 5, "system_prompt_len": 6000, "question_len": 1200,
                          "output_len": 1000},
             "rates": "40,60", "requests": 1500},
}
SPECULATIVE = "precise-speculative"


def speculative_profile(ttl: str, folder: str) -> str:
    """``precise.yaml`` with speculative indexing on, written to ``folder``."""
    import yaml

    from kit import paths

    doc = yaml.safe_load(Path(paths.scheduler_profile("precise")).read_text())
    scorer = next(p for p in doc["plugins"] if p["type"] == "precise-prefix-cache-scorer")
    scorer["parameters"].update({"speculativeIndexing": True, "speculativeTTL": ttl})
    out = Path(folder) / f"{SPECULATIVE}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(out)


def point(task: dict) -> dict:
    """One simulation; the row the tables are made of."""
    from kit.experiments.workloads import Load, SharedPrefix
    from kit.fleet import Fleet, SimConfig, simulate
    from kit.fleet.scenario import Trace

    s = SETTINGS[task["setting"]]
    w = SharedPrefix(**s["workload"], seed=task["seed"])
    rate = task["rate"]
    extra = {}
    if task["scenario"] == "replicas":
        extra["picker_replicas"] = task["picker_replicas"]
    elif task["scenario"] == "outside":
        extra["outside_rate"] = task["outside_share"] * rate
    fleet = Fleet(replicas=task["replicas"], profile=task["profile_file"], sim=SimConfig(**s["sim"]),
                  seed=task["seed"], event_lag=task["event_lag"], **extra)
    trace = Trace()
    start = time.perf_counter()
    run = simulate(w, Load(rate=rate, requests=task["requests"]), fleet, trace=trace)
    wall = time.perf_counter() - start
    su = run.summary
    ok = [r for r in run.requests if r.ok]
    routed = sum(r.cached_tokens for r in ok) / max(1, sum(r.prompt_tokens for r in ok))
    servers: dict[int | None, set] = {}
    for r in ok:
        servers.setdefault(r.group, set()).add(r.endpoint)
    return {**{k: task[k] for k in ("setting", "scenario", "profile", "rate", "seed", "event_lag")},
            "hit_rate": round(routed, 4), "server_hit_rate": su.prefix_cache_hit_rate,
            "ttft_p50_ms": round(1000 * (su.ttft_p50_s or 0), 1), "ttft_p90_ms": round(1000 * (su.ttft_p90_s or 0), 1),
            "stale_picks": trace.stale_picks(run) if trace.beliefs else None, "served_rps": su.requests_per_s,
            "servers_per_group": statistics.median(len(v) for v in servers.values()),
            "cold": sum(1 for r in ok if r.cached_tokens < 0.5 * r.prompt_tokens),
            "errors": su.errors, "outside_sent": trace.outside, "event_batches": trace.event_batches,
            "wall_s": round(wall, 1)}


def tables(rows: list[dict], seeds: list[int]) -> str:
    """Markdown: per scenario, one row per (rate, profile); each cell the median, then every seed's value."""
    def cell(values: list, fmt: str) -> str:
        if any(v is None for v in values):
            return "—"
        med = statistics.median(values)
        return f"{fmt.format(med)} ({', '.join(fmt.format(v) for v in values)})" if len(values) > 1 else fmt.format(med)

    columns = [("hit_rate", "hit rate %", "{:.1f}", 100), ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}", 1),
               ("ttft_p90_ms", "TTFT p90 ms", "{:.0f}", 1), ("stale_picks", "stale picks", "{:.0f}", 1),
               ("servers_per_group", "servers per group", "{:g}", 1), ("served_rps", "served req/s", "{:.0f}", 1)]
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        out += [f"\n**{scenario}**\n", "| rate (req/s) | profile | " + " | ".join(c[1] for c in columns) + " |",
                "|---" * (2 + len(columns)) + "|"]
        mine = [r for r in rows if r["scenario"] == scenario]
        for rate, profile in sorted(dict.fromkeys((r["rate"], r["profile"]) for r in mine), key=lambda k: k[0]):
            by_seed = {r["seed"]: r for r in mine if (r["rate"], r["profile"]) == (rate, profile)}
            got = [by_seed[s] for s in seeds if s in by_seed]
            cells = [cell([None if r[k] is None else scale * r[k] for r in got], fmt) for k, _, fmt, scale in columns]
            out.append(f"| {rate:g} | {profile} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="local")
    ap.add_argument("--scenarios", default="all,replicas,outside")
    ap.add_argument("--profiles", default=f"random,default-plugins,precise,{SPECULATIVE}")
    ap.add_argument("--rates", help="comma-separated requests per second (default: the setting's)")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--replicas", type=int, default=16, help="simulated servers")
    ap.add_argument("--requests", type=int, help="requests per point (default: the setting's)")
    ap.add_argument("--picker-replicas", type=int, default=4)
    ap.add_argument("--outside-share", type=float, default=0.5, help="outside requests per routed request")
    ap.add_argument("--event-lag", type=float, default=0.003, help="seconds from a step to the precise index")
    ap.add_argument("--speculative-ttl", default="200ms", help=f"speculativeTTL of {SPECULATIVE}")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="build/precise_fleet.json")
    args = ap.parse_args()

    from tqdm import tqdm

    from kit import paths

    s = SETTINGS[args.setting]
    rates = [float(r) for r in (args.rates or s["rates"]).split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    folder = tempfile.mkdtemp(prefix="kit-precise-fleet-")
    files = {}
    for p in args.profiles.split(","):
        files[p] = speculative_profile(args.speculative_ttl, folder) if p == SPECULATIVE else paths.scheduler_profile(p)
    tasks = [{"setting": args.setting, "scenario": sc, "profile": p, "profile_file": files[p], "rate": r, "seed": seed,
              "replicas": args.replicas, "requests": args.requests or s["requests"],
              "picker_replicas": args.picker_replicas, "outside_share": args.outside_share,
              "event_lag": args.event_lag}
             for sc in args.scenarios.split(",") for r in rates for p in files for seed in seeds]
    print(f"precise_fleet: {len(tasks)} simulations ({args.setting} setting, {args.replicas} servers, scenarios "
          f"{args.scenarios}, rates {rates}, profiles {', '.join(files)}, seeds {seeds}) on {args.jobs} processes",
          file=sys.stderr)
    start = time.perf_counter()
    rows = []
    bar = tqdm(total=len(tasks), desc="simulations", unit="run")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for f in as_completed([pool.submit(point, t) for t in tasks]):
            rows.append(f.result())
            bar.update()
    bar.close()
    order = {(t["scenario"], t["rate"], t["profile"], t["seed"]): i for i, t in enumerate(tasks)}
    rows.sort(key=lambda r: order[(r["scenario"], r["rate"], r["profile"], r["seed"])])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setting": args.setting, "settings": s, "args": vars(args), "rows": rows}, indent=1))
    print(tables(rows, seeds))
    print(f"precise_fleet: {len(rows)} simulations in {time.perf_counter() - start:.0f} s; wrote {out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
