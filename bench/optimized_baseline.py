"""The guide's default profile against today's optimized-baseline, on the virtual clock (the fleet simulator).

The guide's EPP (release v0.7) ranks servers by queue depth (2), KV-cache use (2) and an approximate prefix
score (3); today's llm-d default (llm-d-router v0.10's optimized-baseline guide) first narrows the candidates to
the servers holding most of the prompt (``prefix-cache-affinity-filter``) and then takes the one with the fewest
prompt tokens in flight (``token-load-scorer``). The same profiles files the gateway loads
(templates/scheduler/default-plugins.yaml, optimized-baseline.yaml) run over 16 simulated servers with the
guide's shared-prefix workload: at the guide's scale (long answers, so decoding fills the KV caches), with
short answers (the capacity notebook's quarter-scale lengths), and with two hot groups taking half the
traffic, each at several rates and seeds (the workload's prompts and arrivals, and the pickers' random
choices). ``default-plugins@v0.10`` is the guide's profile loaded as release v0.10 (the same plugins, today's
prefix hashing), to tell the profile's effect from the release's; ``optimized-baseline-output-aware`` is the kit's
variant whose in-flight load also counts the expected output tokens (``addEstimatedOutputTokens``).

Per point it keeps the median over the seeds of TTFT p50/p90, E2E p90, hit rate and served requests per
second, with the range of TTFT p90; prints one JSON document; ``--record`` writes one record per scenario
under bench/results/optimized-baseline/ (``make results`` renders docs/results/optimized-baseline.md).

    .venv/bin/python bench/optimized_baseline.py --record            # about 40 min on 2 cores
    .venv/bin/python bench/optimized_baseline.py --scenario short-answers --seeds 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROFILES = ("default-plugins", "default-plugins@v0.10", "optimized-baseline", "optimized-baseline-output-aware")

# name → (title, workload parameters, num_gpu_blocks per server, requests, rates)
SCENARIOS: dict[str, tuple[str, dict, int, int, tuple[float, ...]]] = {
    "guide-scale": (
        "At the guide's scale: 6,000-token system prompts, 1,000-token answers",
        {"groups": 150, "prompts_per_group": 5, "system_prompt_len": 6000, "question_len": 1200, "output_len": 1000},
        9630, 1500, (20, 30, 40, 50)),
    "short-answers": (
        "Short answers: the capacity notebook's lengths (1,500 / 300 / 200 tokens)",
        {"groups": 150, "prompts_per_group": 5, "system_prompt_len": 1500, "question_len": 300, "output_len": 200},
        2400, 1500, (150, 300, 450, 600)),
    "hot-groups": (
        "Two hot groups take half the traffic (short answers)",
        {"groups": 150, "prompts_per_group": 5, "system_prompt_len": 1500, "question_len": 300, "output_len": 200,
         "hot_groups": 2, "hot_share": 0.5},
        2400, 1500, (300, 600)),
}


def point(task: tuple[str, str, float, int]) -> dict:
    """One simulation: (scenario, profile[@release], rate, seed) → its figures."""
    import kit
    import kit.fleet
    from kit.experiments.workloads import Skewed

    scenario, profile, rate, seed = task
    _, params, blocks, requests, _ = SCENARIOS[scenario]
    name, _, release = profile.partition("@")
    cls = Skewed if "hot_groups" in params else kit.SharedPrefix
    workload = cls(**params, seed=seed)
    fleet = kit.fleet.Fleet(replicas=16, profile=name, release=release or None, seed=seed,
                            sim=kit.fleet.SimConfig(num_gpu_blocks=blocks, max_model_len=min(40960, 16 * blocks)))
    start = time.perf_counter()
    run = kit.fleet.simulate(workload, kit.Load(rate=rate, requests=requests), fleet)
    s = run.summary
    per = [e.requests for e in s.per_endpoint.values()]
    return {"scenario": scenario, "profile": profile, "rate": rate, "seed": seed, "ok": s.ok, "errors": s.errors,
            "hit_rate": s.prefix_cache_hit_rate, "ttft_p50_s": s.ttft_p50_s, "ttft_p90_s": s.ttft_p90_s,
            "e2e_p90_s": s.e2e_p90_s, "requests_per_s": s.requests_per_s, "busiest_server": max(per),
            "quietest_server": min(per), "wall_s": round(time.perf_counter() - start, 1)}


def summarize(points: list[dict]) -> list[dict]:
    """Per (scenario, profile, rate): medians over the seeds, and the range of TTFT p90."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["scenario"], p["profile"], p["rate"]), []).append(p)
    out = []
    for (scenario, profile, rate), ps in groups.items():
        med = {k: statistics.median(p[k] for p in ps) for k in ("hit_rate", "ttft_p50_s", "ttft_p90_s", "e2e_p90_s",
                                                                  "requests_per_s", "busiest_server")}
        p90 = [p["ttft_p90_s"] for p in ps]
        out.append({"scenario": scenario, "profile": profile, "rate": rate, "seeds": len(ps), **med,
                    "ttft_p90_min_s": min(p90), "ttft_p90_max_s": max(p90), "errors": sum(p["errors"] for p in ps)})
    return out


def table(rows: list[dict]) -> dict:
    columns = ["profile", "rate (req/s)", "hit rate", "TTFT p50 ms", "TTFT p90 ms (median)", "TTFT p90 ms (range)",
               "E2E p90 s", "served req/s", "busiest server (requests)"]
    return {"columns": columns, "rows": [[
        r["profile"], r["rate"], f"{100 * r['hit_rate']:.1f}%", round(1000 * r["ttft_p50_s"]),
        round(1000 * r["ttft_p90_s"]), f"{1000 * r['ttft_p90_min_s']:,.0f}–{1000 * r['ttft_p90_max_s']:,.0f}",
        round(r["e2e_p90_s"], 2), round(r["requests_per_s"], 1), r["busiest_server"]] for r in rows]}


def figures(rows: list[dict]) -> dict:
    """At the highest rate: each profile's median TTFT p90, and the guide's against optimized-baseline."""
    top = max(r["rate"] for r in rows)
    at = {r["profile"]: r for r in rows if r["rate"] == top}
    out = {f"TTFT p90 at {top:g} req/s, {p} (ms)": round(1000 * r["ttft_p90_s"]) for p, r in at.items()}
    if "default-plugins" in at and "optimized-baseline" in at:
        out[f"TTFT p90 at {top:g} req/s: default-plugins against optimized-baseline"] = (
            f"{1000 * at['default-plugins']['ttft_p90_s']:,.0f} ms against "
            f"{1000 * at['optimized-baseline']['ttft_p90_s']:,.0f} ms")
    return out


NOTES = {
    "guide-scale": (
        "16 simulated servers (the kit's H100-like latency model, 9,630 KV blocks of 16 tokens each, so the working "
        "set fills about three quarters of the fleet's cache), the guide's shared-prefix workload: 150 groups × 5 "
        "prompts, 1,500 requests at each rate (Poisson arrivals). Medians over {seeds} seeds (each seeds the prompts, "
        "the arrivals and the pickers' random choices). default-plugins: the guide's EPP (release v0.7); "
        "default-plugins@v0.10: the same profile on llm-d-router v0.10; optimized-baseline: today's llm-d default "
        "(release v0.10, the guide's values). Up to 30 req/s the two tie on TTFT, but optimized-baseline's E2E p90 "
        "is already longer and its busiest server takes more requests. Long answers keep every server decoding with "
        "its KV cache nearly full: the token-load scorer counts only the prompt tokens still to prefill (released at "
        "the first token), so it does not see a server whose cache is full of decoding requests, and the affinity "
        "filter keeps each group on its servers (its gate opens only some 286,000 in-flight tokens behind, from "
        "defaults calibrated for Qwen3-32B on two H100s); past the knee queues form there while other servers have "
        "room. The guide's profile sees KV use and queue depth and stays flat. The release alone changes nothing "
        "(default-plugins@v0.10). Counting the expected output tokens as in-flight load "
        "(optimized-baseline-output-aware: addEstimatedOutputTokens) lets the token load see decoding servers, "
        "and optimized-baseline then matches the guide's profile at every rate."),
    "short-answers": (
        "The same fleet and workload shape with the capacity notebook's lengths (1,500-token system prompts, "
        "300-token questions, 200-token answers) and 2,400 KV blocks per server, 1,500 requests per rate. "
        "Medians over {seeds} seeds. Short answers leave the caches room, and here optimized-baseline is the "
        "better profile up to the knee: at 300–450 req/s its TTFT p90 is 10–12 ms against 12–17 ms and its hit "
        "rate stays near 80% while the guide's falls to 75%: its load signal is the picker's own in-flight count, "
        "live, where the guide's queue and KV-cache signals are scraped every 50 ms and look the same for every "
        "request between two scrapes. Past the knee (600 req/s) both queue and their ranges over the seeds "
        "overlap, but the output-aware variant does not: 11 ms against 245 ms, and 431 served requests per "
        "second against 373, its hit rate 83%."),
    "hot-groups": (
        "Short answers with two of the 150 groups taking half the requests (the Skewed workload). Medians over "
        "{seeds} seeds. The guide's profile wins: the affinity filter keeps a hot group on the servers that hold its "
        "prefix (the busiest server takes 417 requests against 305), since each hot request brings only its "
        "question's uncached tokens and the gate needs hundreds of thousands in flight to open; decoding is not "
        "counted at all. TTFT p90 at 300 req/s: 613 ms against 23 ms. Counting expected output tokens "
        "(output-aware) brings it to 29 ms at 300 req/s, but at 600 req/s the guide's profile is still better "
        "(383 ms against 1.8 s; the guide's own range over the seeds is wide, 42 ms to 1.8 s)."),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                    help="scenarios to run (default: all), repeatable")
    ap.add_argument("--profiles", default=",".join(PROFILES), help="profile[@release], comma-separated")
    ap.add_argument("--rates", default="", help="override the scenarios' rates, comma-separated")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--record", action="store_true", help="write one record per scenario for the results pages")
    args = ap.parse_args()
    scenarios = args.scenario or list(SCENARIOS)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = []
    for sc in scenarios:
        rates = [float(r) for r in args.rates.split(",")] if args.rates else SCENARIOS[sc][4]
        tasks += [(sc, p, float(r), s) for p in profiles for r in rates for s in seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(tasks)))) as pool:
        points = list(pool.map(point, tasks))
    rows = summarize(points)
    print(json.dumps({"points": points, "summary": rows, "wall_s": round(time.perf_counter() - start, 1)}, indent=1))
    if args.record:
        from bench.record import write_record

        for sc in scenarios:
            mine = [r for r in rows if r["scenario"] == sc]
            write_record("optimized-baseline", sc, SCENARIOS[sc][0], table=table(mine), figures=figures(mine),
                         notes=NOTES[sc].format(seeds=len(seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
