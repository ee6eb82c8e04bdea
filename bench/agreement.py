"""Hold the simulator to a real engine: two real vLLM servers, the same two simulated, and the fleet simulator.

    .venv/bin/python bench/agreement.py [--profile FILE] [--rates LOW,HIGH] [--requests N] [--repeat R] [--record]

1. **Real stack**: ``kit deploy -e local-vllm`` (two ``vllm serve`` on this CPU, the kit's gateway with the
   guide's default profile) on free ports, in its own state folder (``--reuse DIR`` keeps a running one).
2. **Profile**: ``kit calibrate`` on both real servers at once, as they will serve together (or ``--profile FILE``):
   the simulator's six step coefficients and the request overhead vLLM's API adds outside the engine.
3. **Rates**: the fleet simulator with the profile finds the two servers' saturation throughput; the run uses
   half of it and one and a half times it (or ``--rates``).
4. At each rate, one shared-prefix workload (the same prompts and Poisson arrivals everywhere) through
   (a) the real stack, (b) the local stack on two ``kit sim`` shaped like the real servers (block size 32, 256
   blocks, 16 sequences, a 2,048-token budget) with the profile at time scale 1, their request overhead (measured
   the same way) topped up with ``--extra-latency-ms`` to vLLM's, and (c) ``kit simulate`` with the same settings
   (virtual clock, no HTTP, so without any request overhead).
5. TTFT p50/p90, end-to-end p50/p90, throughput and hit rate of (b) and (c) against (a), printed as a markdown
   table; with ``--record``, one record per rate (``bench/results/real-vllm-agreement/``, the page
   docs/results/real-vllm-agreement.md: ``make results``) and the measured profile beside them.

The machine may be shared: the load average is recorded before and after each run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from kit.experiments.calibrate import calibrate
from kit.experiments.loadgen import run_workload
from kit.experiments.results import Summary
from kit.experiments.workloads import Load, SharedPrefix
from kit.fleet import Fleet, SimConfig, simulate
from kit.manifests.environments import load_environment
from kit.targets.local import LocalTarget
from kit.targets.processes import free_port_block

sys.path.insert(0, str(Path(__file__).parent))
from record import write_record

FAMILY = "real-vllm-agreement"
OUT = Path(__file__).parent / "results" / FAMILY
FIGURES = ("ttft_p50_s", "ttft_p90_s", "e2e_p50_s", "e2e_p90_s", "requests_per_s", "output_tokens_per_s",
           "prefix_cache_hit_rate")
TARGETED = ("ttft_p50_s", "ttft_p90_s", "requests_per_s")  # ±15%
GROUPS, SYSTEM, QUESTION, OUTPUT = 12, 400, 40, 32  # the shared-prefix workload (kit tokens = the model's tokens)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sim_settings(profile: Path, overhead_ms: float) -> dict:
    """The simulators shaped like the local-vllm servers (environments/local-vllm.yaml), at real speed."""
    return {"block_size": 32, "num_gpu_blocks": 256, "max_num_seqs": 16, "max_num_batched_tokens": 2048,
            "max_model_len": 8192, "hardware": str(profile), "time_scale": 1, "extra_latency_ms": overhead_ms}


def workload(requests: int, seed: int) -> SharedPrefix:
    return SharedPrefix(groups=GROUPS, prompts_per_group=max(1, requests // GROUPS), system_prompt_len=SYSTEM,
                        question_len=QUESTION, output_len=OUTPUT, seed=seed)


def fleet(profile: Path) -> Fleet:
    """Two simulated servers on the virtual clock (no HTTP: no request overhead)."""
    return Fleet(replicas=2, sim=SimConfig(**sim_settings(profile, 0.0)))


def saturation(profile: Path) -> float:
    """Requests per second two simulated servers complete when flooded (the fleet simulator, virtual clock)."""
    return simulate(workload(240, 7), Load(rate=200.0), fleet(profile)).summary.requests_per_s or 0.0


PHASES = ("time_to_first_token_seconds", "request_queue_time_seconds", "request_prefill_time_seconds",
          "inter_token_latency_seconds")


def histogram_sums(urls: list[str]) -> dict[str, list[float]]:
    """``name → [sum, count]`` of the phase histograms every vLLM server (and the simulator) exports."""
    out = {n: [0.0, 0.0] for n in PHASES}
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.partition(" ")
                base = name.split("{")[0].removeprefix("vllm:")
                for n in PHASES:
                    if base in (f"{n}_sum", f"{n}_count"):
                        out[n][base.endswith("_count")] += float(value.split()[0])
    return out


def phases(before: dict, after: dict) -> dict[str, float]:
    """Where a request's time went, server side (means, ms): before the engine queued it (the API front:
    parsing, tokenizing, handing over), waiting in the engine's queue, prefilling, and each decode step."""
    mean = {n: (after[n][0] - before[n][0]) / max(1.0, after[n][1] - before[n][1]) for n in PHASES}
    ttft, queue, prefill, itl = (1e3 * mean[n] for n in PHASES)
    return {"front_ms": round(ttft - queue - prefill, 1), "queue_ms": round(queue, 1),
            "prefill_ms": round(prefill, 1), "itl_ms": round(itl, 1)}


def through(target: LocalTarget, w: SharedPrefix, load: Load, alone: bool) -> tuple[Summary, dict[str, float]]:
    """The workload through a stack's gateway (``alone``: straight to its first server, the other idle): the
    client's summary and the servers' own phases."""
    assert target.reset_caches(), "a server refused to reset its prefix cache"
    urls = [p.url for p in target._load().sims][: 1 if alone else None]
    before = histogram_sums(urls)
    with target.gateway() as gateway:
        summary = run_workload(urls[0] if alone else gateway, w, load, progress=True).summary()
    return summary, phases(before, histogram_sums(urls))


def one_rate(real: LocalTarget, sim: LocalTarget, profile: Path, w: SharedPrefix, rate: float,
             alone: bool = False) -> dict:
    """The same prompts and arrivals through the three systems (``alone``: one server of each, no gateway)."""
    load = Load(rate=rate, arrival="poisson")
    one = Fleet(replicas=1, sim=fleet(profile).sim) if alone else fleet(profile)
    rows = {}
    for name, fn in (("real", lambda: through(real, w, load, alone)),
                     ("local-sim", lambda: through(sim, w, load, alone)),
                     ("fleet", lambda: (simulate(w, load, one).summary, None))):
        before = load_average()
        started = time.monotonic()
        summary, inside = fn()
        rows[name] = {**{k: getattr(summary, k) for k in FIGURES}, "ok": summary.ok, "errors": summary.errors,
                      "phases": inside, "load_before": before, "load_after": load_average(),
                      "seconds": round(time.monotonic() - started, 1)}
        print(f"  {name:9s} " + "  ".join(f"{k} {rows[name][k]}" for k in FIGURES), file=sys.stderr)
    for name in ("local-sim", "fleet"):
        rows[name]["error_vs_real"] = {k: round(rows[name][k] / rows["real"][k] - 1, 4) if rows["real"][k] else None
                                       for k in FIGURES}
    return rows


def cell(row: dict, key: str, unit: float, digits: int) -> str:
    """A figure, with its error against the real stack when it has one."""
    v = row[key]
    text = "—" if v is None else f"{v * unit:.{digits}f}"
    err = row.get("error_vs_real", {}).get(key)
    return text + (f" ({100 * err:+.0f}%)" if err is not None else "")


COLUMNS = [("TTFT p50 (ms)", "ttft_p50_s", 1e3, 0), ("TTFT p90 (ms)", "ttft_p90_s", 1e3, 0),
           ("E2E p50 (ms)", "e2e_p50_s", 1e3, 0), ("E2E p90 (ms)", "e2e_p90_s", 1e3, 0),
           ("throughput (req/s)", "requests_per_s", 1, 2), ("hit rate", "prefix_cache_hit_rate", 1, 2)]


def record(which: str, runs: list[dict], profile: Path) -> None:
    """One record per rate: each run's three systems, with the errors against the real stack."""
    first = runs[0]
    rows = [[run["repeat"] + 1, name, *(cell(row, k, u, d) for _, k, u, d in COLUMNS), row["load_before"]]
            for run in runs for name, row in run["systems"].items()]
    errors = {k: [run["systems"][s]["error_vs_real"][k] for run in runs for s in ("local-sim", "fleet")]
              for k in TARGETED}
    within = sum(abs(e) <= 0.15 for es in errors.values() for e in es if e is not None)
    total = sum(e is not None for es in errors.values() for e in es)
    w = first["workload"]
    notes = (f"{w['groups']} groups × {w['prompts_per_group']} prompts, system prompt {w['system_prompt_len']} + "
             f"question {w['question_len']} tokens → {w['output_len']} tokens, Poisson arrivals at {first['rate']:g}/s "
             f"(the fleet's saturation: {first['saturation_req_s']} req/s). Errors in brackets against the real "
             f"stack; {within} of {total} targeted figures (TTFT p50/p90, throughput) within ±15%. Profile "
             f"`{profile.name}`: vLLM's request overhead {first['request_overhead_ms']} ms, the simulator's own "
             f"{first['sim_request_overhead_ms']} ms, topped up with --extra-latency-ms "
             f"{first['sim_extra_latency_ms']}.")
    loads = sorted({row["load_before"].split()[0] for run in runs for row in run["systems"].values()})
    figures = {"targeted figures within ±15%": f"{within} of {total}"}
    for system in ("real", "local-sim"):  # where the time went, server side (the first run)
        for k, v in (first["systems"][system]["phases"] or {}).items():
            figures[f"{system}: {k.removesuffix('_ms').replace('itl', 'decode step')} (ms)"] = v
    for system, label in (("local-sim", "local simulators"), ("fleet", "fleet simulator")):
        errs = [abs(run["systems"][system]["error_vs_real"][k]) for run in runs for k in TARGETED
                if run["systems"][system]["error_vs_real"][k] is not None]
        figures[f"{label}: median error of TTFT p50/p90 and throughput"] = f"{100 * statistics.median(errs):.0f}%"
    where = "one server alone, no gateway" if which == "one-server-alone" else "two servers behind the gateway"
    write_record(FAMILY, which, f"{which.replace('-', ' ').capitalize()}: {first['rate']:g} requests/s, {where}",
                 table={"columns": ["run", "system", *(c for c, *_ in COLUMNS), "load"], "rows": rows},
                 figures=figures, notes=notes, load=" / ".join(loads))


def record_profile(profile: Path) -> None:
    """The measured profile's fit: every point, measured through the API and as the simulator's model gives it."""
    p = yaml.safe_load(profile.read_text())
    m = p["measured"]
    rows = [[shape, pt["measured_ms"], pt["model_ms"], f"{100 * pt['error']:+.1f}%"]
            for shape, pt in p["points"].items()]
    write_record(FAMILY, "calibration", f"The step model fitted to real vLLM ({m['model']} on this CPU)",
                 table={"columns": ["shape", "measured (ms)", "simulator (ms)", "error"], "rows": rows},
                 figures={**p["coefficients"],
                          "request overhead (ms)": p["request_overhead_ms"],
                          "largest error of the fit": f"{100 * p['largest_error']:.1f}%"},
                 notes=(f"`kit calibrate --url <server> --out {profile.name}`, median of {m['repeat']} runs per shape; "
                        "prefill rows are round trips (one step and the request overhead), decode rows one step of "
                        "B sequences with L tokens of context. The profile file is beside these records."),
                 load=f"{m['load_before'].split()[0]}–{m['load_after'].split()[0]}")


def markdown(runs: list[dict]) -> str:
    lines = ["| rate (req/s) | system | " + " | ".join(c for c, *_ in COLUMNS) + " | load |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for run in runs:
        for name, row in run["systems"].items():
            cells = " | ".join(cell(row, k, u, d) for _, k, u, d in COLUMNS)
            lines.append(f"| {run['rate']:.2f} | {name} | {cells} | {row['load_before']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, help="a hardware profile (kit calibrate); default: measure server 0")
    ap.add_argument("--rates", help="LOW,HIGH requests per second (default: 0.5× and 1.5× the fleet's saturation)")
    ap.add_argument("--requests", type=int, default=120, help="requests per run (default: 120)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per rate, with workload seeds 7, 8, ... (default: 1)")
    ap.add_argument("--reuse", type=Path, help="state folder of a local-vllm stack already deployed (kept running)")
    ap.add_argument("--out-dir", type=Path, default=OUT, help="where a measured profile is written")
    ap.add_argument("--record", action="store_true", help="write the results records (bench/results/" + FAMILY + ")")
    args = ap.parse_args()
    os.environ["KIT_STATE_DIR"] = str(args.reuse or tempfile.mkdtemp(prefix="kit-agreement-"))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        recorded = json.loads(next(args.reuse.glob("local-*.json")).read_text())
        port = int(recorded["gateway"]["url"].rsplit(":", 1)[1])
    else:
        port = free_port_block(4)
    real = LocalTarget(load_environment("local-vllm", overrides={"local": {"gateway_port": port}}))
    print(f"agreement: deploying local-vllm at {port} (load {load_average()})", file=sys.stderr)
    real.deploy(timeout=60)
    try:
        profile = args.profile
        if profile is None:
            profile = args.out_dir / f"cpu-tiny-qwen3-{stamp}.yaml"
            calibrate([p.url for p in real._load().sims], profile, name="cpu-tiny-qwen3", repeat=3)
        overhead = yaml.safe_load(profile.read_text()).get("request_overhead_ms", 0.0)
        sim_port = free_port_block(4)

        def sim_stack(extra_ms: float) -> LocalTarget:
            return LocalTarget(load_environment("local", postfix="agreement-sim", overrides={"local": {
                "gateway_port": sim_port, "simulator": sim_settings(profile.resolve(), extra_ms)}}))

        # The simulator's HTTP front has a request overhead of its own: measured the same way, and topped up to
        # vLLM's with --extra-latency-ms.
        sim = sim_stack(0.0)
        sim.deploy(timeout=60)
        own = calibrate([p.url for p in sim._load().sims], args.out_dir / f"sim-front-{stamp}.yaml", repeat=3,
                        say=lambda _: None)["request_overhead_ms"]
        extra = round(max(0.0, overhead - own), 3)
        print(f"agreement: request overhead: vLLM {overhead} ms, the simulator's own {own} ms: "
              f"--extra-latency-ms {extra}", file=sys.stderr)
        sim = sim_stack(extra)
        sim.deploy(timeout=60)
        try:
            if args.rates:
                rates = [float(r) for r in args.rates.split(",")]
                sat = None
            else:
                sat = saturation(profile)
                rates = [round(0.5 * sat, 2), round(1.5 * sat, 2)]
            print(f"agreement: rates {rates} (fleet saturation {sat} req/s)", file=sys.stderr)
            runs = []
            for rate in rates:
                for i in range(args.repeat):
                    print(f"agreement: rate {rate} req/s, run {i + 1} of {args.repeat}", file=sys.stderr)
                    w = workload(args.requests, 7 + i)
                    systems = one_rate(real, sim, profile, w, rate)
                    runs.append({"rate": rate, "repeat": i, "workload": w.model_dump(), "systems": systems,
                                 "profile": str(profile), "request_overhead_ms": overhead,
                                 "sim_request_overhead_ms": own, "sim_extra_latency_ms": extra,
                                 "saturation_req_s": sat})
            # The same below-saturation load per server, on one server alone (the other idle, no gateway): what the
            # two servers cost each other on a shared machine, which the simulator does not model.
            w = workload(args.requests, 7)
            print(f"agreement: one server alone at {rates[0] / 2:g} req/s", file=sys.stderr)
            alone = {"rate": rates[0] / 2, "repeat": 0, "workload": w.model_dump(), "profile": str(profile),
                     "systems": one_rate(real, sim, profile, w, rates[0] / 2, alone=True),
                     "request_overhead_ms": overhead, "sim_request_overhead_ms": own, "sim_extra_latency_ms": extra,
                     "saturation_req_s": sat}
            if args.record:
                record_profile(profile)
                for which, rate in zip(("below-saturation", "above-saturation"), rates, strict=False):
                    record(which, [r for r in runs if r["rate"] == rate], profile)
                record("one-server-alone", [alone], profile)
        finally:
            sim.destroy()
    finally:
        if not args.reuse:
            real.destroy()
    print(markdown([*runs, alone]))
    errors = [abs(e) for run in runs for s in ("local-sim", "fleet") for k in TARGETED
              if (e := run["systems"][s]["error_vs_real"][k]) is not None]
    print(f"\n{sum(e <= 0.15 for e in errors)} of {len(errors)} targeted figures (TTFT p50/p90, throughput) within "
          f"±15%; median |error| {100 * statistics.median(errors):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
