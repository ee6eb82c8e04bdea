"""Benchmarks of the fleet simulator (figures: docs/results/fleet.md; add ``--record`` to write a run's record
under bench/results/, then ``make results``).

    .venv/bin/python bench/fleet_bench.py core              # SimPy against a plain event heap
    .venv/bin/python bench/fleet_bench.py speed --replicas 16 --requests 10000 --rate 35
    .venv/bin/python bench/fleet_bench.py speed --replicas 256 --requests 100000 --rate 4000 --system 1500 \
        --question 300 --output 200
    .venv/bin/python bench/fleet_bench.py fidelity          # the virtual clock against the HTTP stack
    .venv/bin/python bench/fleet_bench.py picker --endpoints 256   # the picker's time per request

``speed`` runs one simulation of the guide's workload shape (shared prefix, 150 groups × 5 prompts,
system 6,000 + question 1,200 → 1,000 tokens, unless flags say otherwise) and reports wall time,
simulated requests per second of wall time, peak memory, and the share of time spent in the endpoint
picker (``Scheduler.schedule`` + ``pre_request``, timed around each call).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import resource
import statistics
import time

from record import write_record


def core(nodes: int = 256, events: int = 400_000, repeat: int = 3) -> dict:
    """Events per second through SimPy and through a heap, for the fleet's pattern: every node steps with
    its own durations (a timeout per step), and a node's next step is due when its previous one ends."""
    import simpy

    per = events // nodes

    def with_simpy() -> float:
        env = simpy.Environment()
        rng = random.Random(0)

        def node():
            for _ in range(per):
                yield env.timeout(0.005 + 0.015 * rng.random())

        for _ in range(nodes):
            env.process(node())
        start = time.perf_counter()
        env.run()
        return time.perf_counter() - start

    def with_heap() -> float:
        rng = random.Random(0)
        heap = [(0.0, i, 0) for i in range(nodes)]
        heapq.heapify(heap)
        start = time.perf_counter()
        while heap:
            t, i, k = heapq.heappop(heap)
            if k < per:
                heapq.heappush(heap, (t + 0.005 + 0.015 * rng.random(), i, k + 1))
        return time.perf_counter() - start

    out = {}
    for name, fn in (("simpy", with_simpy), ("heap", with_heap)):
        times = [fn() for _ in range(repeat)]
        out[name] = {"median_s": round(statistics.median(times), 3),
                     "events_per_s": round(per * nodes / statistics.median(times))}
    out["heap_over_simpy"] = round(out["heap"]["events_per_s"] / out["simpy"]["events_per_s"], 2)
    import simpy as _s

    out["simpy_version"] = _s.__version__
    return out


def speed(args: argparse.Namespace) -> dict:
    from kit.experiments.workloads import Load, SharedPrefix
    from kit.fleet import Fleet, SimConfig, simulate
    from kit.picker import Scheduler

    spent = [0.0]
    for name in ("schedule", "pre_request"):
        orig = getattr(Scheduler, name)

        def timed(self, *a, _orig=orig, **kw):
            start = time.perf_counter()
            try:
                return _orig(self, *a, **kw)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(Scheduler, name, timed)
    w = SharedPrefix(groups=args.groups, prompts_per_group=args.prompts_per_group, system_prompt_len=args.system,
                     question_len=args.question, output_len=args.output, seed=1)
    fleet = Fleet(replicas=args.replicas, profile=args.profile, sample_interval=args.sample_interval, seed=1,
                  sim=SimConfig(num_gpu_blocks=args.kv_blocks, max_model_len=min(40960, 16 * args.kv_blocks)))
    start, cpu = time.perf_counter(), time.process_time()
    run = simulate(w, Load(rate=args.rate, requests=args.requests), fleet, progress=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    s = run.summary
    return {"replicas": args.replicas, "requests": args.requests, "rate": args.rate, "profile": args.profile,
            "kv_blocks": args.kv_blocks,
            "workload": w.model_dump(), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "load_avg_1min": round(os.getloadavg()[0], 1), "simulated_s": s.duration_s,
            "requests_per_wall_s": round(args.requests / wall), "picker_share": round(spent[0] / wall, 3),
            "picker_us_per_request": round(1e6 * spent[0] / args.requests),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "ttft_p90_s": s.ttft_p90_s, "hit_rate": s.prefix_cache_hit_rate, "errors": s.errors}


def picker(endpoints: int = 256, requests: int = 2000, prompt_chars: int = 7200) -> dict:
    """Where the picker's time goes at fleet scale: the median of ``Scheduler.schedule`` (default profile) over
    ``endpoints`` candidates, and of each of its scorers alone, on prompts that share 32 prefixes."""
    from kit import paths
    from kit.picker import CycleState, Endpoint, InferenceRequest, load_picker_file
    from kit.vllm_metrics import EndpointMetrics

    rng = random.Random(0)
    sched = load_picker_file(paths.default_scheduler_config()).scheduler
    eps = [Endpoint(name=f"10.0.{i // 250}.{i % 250}:8000", url="http://x", updated=1e12, metrics=EndpointMetrics(
        waiting=rng.randint(0, 10), running=rng.randint(0, 64), kv_usage=rng.random(), block_size=16,
        num_gpu_blocks=40000)) for i in range(endpoints)]
    prompts = [f"group {g} " * (prompt_chars // 8) for g in range(32)]
    profile = next(iter(sched.profiles.values()))
    times: dict[str, list[float]] = {"schedule": [], **{s.name: [] for s, _ in profile.scorers}}
    for i in range(requests):
        req = InferenceRequest(model="m", prompt=prompts[i % 32], request_id=str(i))
        start = time.perf_counter()
        _, state = sched.schedule(req, eps)
        times["schedule"].append(time.perf_counter() - start)
        sched.pre_request(state, req, eps[0])
        for scorer, _ in profile.scorers:
            start = time.perf_counter()
            scorer.score(CycleState(), req, eps)
            times[scorer.name].append(time.perf_counter() - start)
    out = {"endpoints": endpoints, "prompt_chars": prompt_chars}
    out.update({f"{k}_median_us": round(1e6 * statistics.median(v)) for k, v in times.items()})
    return out


def _free_range(n: int) -> int:
    """A port p with p .. p+n all free (the local target puts the simulators after the gateway)."""
    from kit.targets.processes import port_in_use

    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(20_000, 40_000)
        if not any(port_in_use(q) for q in range(p, p + n + 1)):
            return p
    raise RuntimeError("no free port range")


def fidelity(replicas: int = 4, profiles: tuple[str, ...] = ("random", "default-plugins"),
             seeds: tuple[int, ...] = (1,),
             time_scale: float = 4.0, requests: int = 128, rate: float = 20.0, output_len: int = 16) -> list[dict]:
    """The same profile, workload, load and seed on the local HTTP stack (simulators at ``time_scale``) and on
    the virtual clock (the same simulator settings); notebook 04's workload. Needs free ports; uses its own
    state folder, and stops what it started."""
    import os
    import tempfile

    from kit.experiments.compare import run_profile
    from kit.experiments.workloads import Load, SharedPrefix
    from kit.fleet import Fleet, simulate
    from kit.manifests.environments import load_environment
    from kit.sim.config import SimConfig
    from kit.targets import target_for

    rows = []
    with tempfile.TemporaryDirectory() as state:
        os.environ["KIT_STATE_DIR"] = state
        port = _free_range(replicas)
        env = load_environment("local", postfix=f"fidelity-{os.getpid()}", overrides={
            "replicas": replicas, "local": {"gateway_port": port, "simulator": {"time_scale": time_scale}}})
        target = target_for(env)
        sim = SimConfig(model=env.model, **{**env.local.simulator, "time_scale": time_scale})
        load = Load(rate=rate, requests=requests)
        try:
            for seed in seeds:
                w = SharedPrefix(groups=8, prompts_per_group=8, system_prompt_len=3000, question_len=100,
                                 output_len=output_len, seed=seed)
                for profile in profiles:
                    http = run_profile(target, profile, w, load, progress=False).summary
                    virt = simulate(w, load, Fleet(replicas=replicas, profile=profile, sim=sim,
                                                   refresh_interval=env.local.refresh_interval, seed=seed)).summary
                    row = {"profile": profile, "seed": seed}
                    for key in ("prefix_cache_hit_rate", "ttft_p50_s", "ttft_p90_s"):
                        a, b = getattr(http, key), getattr(virt, key)
                        row[key] = {"http": a, "virtual": b, "ratio": round(b / a, 3) if a else None}
                    row["errors"] = {"http": http.errors, "virtual": virt.errors}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            target.destroy(say=lambda _m: None)
    return rows


SPEED_NOTES = ("One simulation of a shared-prefix workload under the {profile} profile, timed: *wall*, *CPU* (the "
               "process's CPU seconds) and *picker*, the time inside `Scheduler.schedule` and `pre_request` (timed "
               "around each call). Workload: {groups} × {prompts_per_group}, system {system_prompt_len:,} + question "
               "{question_len:,} → {output_len:,} tokens; {kv_blocks:,} KV blocks per server. The results themselves "
               "(TTFT, hit rate, simulated time) do not depend on the machine; the times do, so read them with the "
               "load.")


def record_speed(out: dict, _args: argparse.Namespace) -> None:
    r, n, rate = out["replicas"], out["requests"], out["rate"]
    write_record("fleet", f"speed-{r}x{n}-at-{rate:g}", f"Speed: {r:,} servers × {n:,} requests at {rate:,g}/s",
                 figures={"wall (s)": out["wall_s"], "CPU (s)": out["cpu_s"], "simulated (s)": out["simulated_s"],
                          "requests / wall s": out["requests_per_wall_s"],
                          "picker share": f"{out['picker_share']:.0%}",
                          "picker time per request": f"{out['picker_us_per_request'] / 1000:.2f} ms",
                          "peak memory (MiB)": out["peak_rss_mib"], "TTFT p90 (s)": out["ttft_p90_s"],
                          "hit rate": out["hit_rate"], "errors": out["errors"]},
                 notes=SPEED_NOTES.format(profile=out["profile"], kv_blocks=out["kv_blocks"], **out["workload"]))


def record_core(out: dict, _args: argparse.Namespace) -> None:
    write_record("fleet", "event-heap", "SimPy or a plain event heap",
                 figures={f"SimPy {out['simpy_version']} (events/s)": out["simpy"]["events_per_s"],
                          "heapq (events/s)": out["heap"]["events_per_s"],
                          "heap over SimPy": f"{out['heap_over_simpy']}×"},
                 notes="The fleet's pattern: each server steps with its own durations, and its next step is due when "
                       "the last one ends; median of 3. The kit uses the heap.")


def record_picker(out: list[dict], _args: argparse.Namespace) -> None:
    names = [k.removesuffix("_median_us") for k in out[0] if k.endswith("_median_us")]
    write_record("picker", "fleet-scale", "Scheduling cycle at fleet scale",
                 table={"columns": ["endpoints", *(f"{'Scheduler.' if n == 'schedule' else ''}{n} µs"
                                                   for n in names)],
                        "rows": [[row["endpoints"], *(row[f"{n}_median_us"] for n in names)] for row in out]},
                 notes=f"Medians (wall clock) of `Scheduler.schedule` with the default profile over N endpoints, and "
                       f"of each scorer alone, on {out[0]['prompt_chars']:,}-character prompts sharing 32 prefixes.")


def record_fidelity(rows: list[dict], args: argparse.Namespace) -> None:
    keys = ("prefix_cache_hit_rate", "ttft_p50_s", "ttft_p90_s")
    table = []
    for profile in dict.fromkeys(r["profile"] for r in rows):
        mine = [r for r in rows if r["profile"] == profile]
        for r in mine:
            table.append([profile, r["seed"], *(r[k][side] for k in keys for side in ("http", "virtual", "ratio"))])
        medians = []
        for k in keys:
            http, virt = (statistics.median(r[k][side] for r in mine) for side in ("http", "virtual"))
            medians += [http, virt, round(virt / http, 2) if http else None]
        table.append([f"{profile}, median of {len(mine)}", None, *medians])
    columns = ["profile", "seed"] + [f"{what} {side}" for what in ("hit rate", "TTFT p50 s", "TTFT p90 s")
                                     for side in ("HTTP", "virtual", "virtual/HTTP")]
    write_record("fleet", "fidelity", "Agreement with the HTTP stack", table={"columns": columns, "rows": table},
                 notes=f"The same profile, workload, load and seed on the local stack ({args.replicas} `kit sim` "
                       f"processes behind `kit gateway`) and on the virtual clock with the same simulator settings; "
                       f"notebook 04's workload, {args.requests} requests at {args.rate:g}/s, simulators at time scale "
                       f"{args.time_scale:g}. Times are wall seconds (model × time scale).")


RECORDERS = {"speed": record_speed, "core": record_core, "picker": record_picker, "fidelity": record_fidelity}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    rec = argparse.ArgumentParser(add_help=False)
    rec.add_argument("--record", action="store_true", help="also write a record for the results pages (make results)")
    c = sub.add_parser("core", help="SimPy against a plain event heap", parents=[rec])
    c.add_argument("--nodes", type=int, default=256)
    c.add_argument("--events", type=int, default=400_000)
    s = sub.add_parser("speed", help="one fleet simulation, timed", parents=[rec])
    s.add_argument("--replicas", type=int, default=16)
    s.add_argument("--requests", type=int, default=10_000)
    s.add_argument("--rate", type=float, default=35.0)
    s.add_argument("--profile", default="default-plugins")
    s.add_argument("--groups", type=int, default=150)
    s.add_argument("--prompts-per-group", type=int, default=5)
    s.add_argument("--system", type=int, default=6000)
    s.add_argument("--question", type=int, default=1200)
    s.add_argument("--output", type=int, default=1000)
    s.add_argument("--sample-interval", type=float, default=1.0)
    s.add_argument("--kv-blocks", type=int, default=40_000, help="KV blocks per server (kit sim's default)")
    pk = sub.add_parser("picker", help="the picker's time per request, and each scorer's", parents=[rec])
    pk.add_argument("--endpoints", default="256", help="endpoint counts, comma-separated")
    f = sub.add_parser("fidelity", help="the virtual clock against the HTTP stack", parents=[rec])
    f.add_argument("--replicas", type=int, default=4)
    f.add_argument("--profiles", default="random,default-plugins")
    f.add_argument("--seeds", default="1,2,3")
    f.add_argument("--time-scale", type=float, default=4.0)
    f.add_argument("--requests", type=int, default=128)
    f.add_argument("--rate", type=float, default=20.0)
    a = p.parse_args()
    if a.what == "fidelity":
        out = fidelity(a.replicas, tuple(a.profiles.split(",")), tuple(int(x) for x in a.seeds.split(",")),
                       a.time_scale, a.requests, a.rate)
    elif a.what == "picker":
        out = [picker(int(n)) for n in a.endpoints.split(",")]
    else:
        out = core(a.nodes, a.events) if a.what == "core" else speed(a)
    print(json.dumps(out, indent=1))
    if a.record:
        RECORDERS[a.what](out, a)


if __name__ == "__main__":
    main()
