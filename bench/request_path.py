"""Instructions per gateway request, counted by valgrind (the same on a busy machine as on a quiet one).

Run: ``.venv/bin/python bench/request_path.py [--requests 300] [--code DIR]`` (needs ``valgrind``; ``--code
DIR`` counts another checkout's ``kit`` and ``templates``, e.g. ``git worktree add /tmp/base <commit>``).
One process under callgrind holds everything: four zero-latency upstreams (``bench/upstream.py``'s protocol,
always this checkout's), a ``kit gateway`` (``kit.gateway.Gateway`` on its own server, scrapes paused after
the first), and a client on one kept-alive connection sending ``gateway_bench``'s 228-character
completion one request at a time. Between two calls of ``os.getppid`` (where callgrind,
``--dump-before=getppid``, closes one count and opens the next) it runs, per scheduler profile
(default, round-robin), ``--requests`` times each:

* the scheduling cycle alone (``Scheduler.schedule``) over four endpoints with random metrics
  (``kit.picker.bench``) and 224-character prompts, then the cycle with PreRequest and the record;
* a whole request through the gateway, and the same request sent straight to an upstream; the gateway's
  own count is their difference (client and upstream cancel out);
* parts of the cycle and of the handler, on the same data: each scorer of the default profile, the weighted
  totals, the picker, building the decision record, ``InferenceRequest.from_body`` on the benchmark's body,
  and entering and leaving the first-byte watch (``Datastore.watch``).

Prints instructions per call of each part. About a minute per profile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from callgrind import count_parts, require_valgrind

PARTS = ["schedule (4 endpoints, 224 chars)", "schedule + PreRequest + record", "request through the gateway",
         "request straight to an upstream", "queue scorer", "KV-utilization scorer", "prefix scorer",
         "weighted totals", "picker", "decision record (Decision)", "InferenceRequest.from_body",
         "first-byte watch (Datastore.watch)"]
SHARE = "the gateway's share (through − straight)"

CHILD = r"""
import asyncio, os, random, sys
sys.path.insert(0, sys.argv[1])
import orjson, uvloop
import upstream as fake
from counted_gateway import BODY, connect, gateway_over_upstreams, warm
from kit import paths
from kit.picker import InferenceRequest, load_picker_file
from kit.picker.bench import endpoints, make_requests
from kit.picker.framework import CycleState
from kit.picker.scheduler import Decision, _weighted_totals
from kit.targets.processes import free_port

profile, k = sys.argv[2], int(sys.argv[3])

async def main():
    gw, ports = await gateway_over_upstreams(profile)
    port = free_port()
    front = await gw.start("127.0.0.1", port)
    through, direct = await connect(port), await connect(ports[0])
    rng = random.Random(0)
    sched = load_picker_file(paths.scheduler_profile(profile)).scheduler
    eps = endpoints(rng, 4)
    reqs = list(make_requests(rng, 224, 200 + k))
    for r in reqs[:200]:
        d, st = sched.schedule(r, eps)
        sched.pre_request(st, r, st["picked"][0])
        sched.record(d)
    await warm(through, direct)
    reqs = reqs[200:]
    os.getppid()
    for r in reqs:
        sched.schedule(r, eps)
    os.getppid()
    for r in reqs:
        d, st = sched.schedule(r, eps)
        sched.pre_request(st, r, st["picked"][0])
        sched.record(d)
    os.getppid()
    for _ in range(k):
        await through.send()
    os.getppid()
    for _ in range(k):
        await direct.send()
    os.getppid()
    prof = sched.profiles["default"]
    req, state = reqs[0], CycleState()
    scorers = {s.type: s for s, _ in prof.scorers}
    for kind in ("queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"):
        if kind in scorers:
            for _ in range(k):
                scorers[kind].score(CycleState(), req, eps)
        os.getppid()
    scored = [(w, s.score(state, req, eps)) for s, w in prof.scorers]
    for _ in range(k):
        _weighted_totals(eps, scored)
    os.getppid()
    totals = _weighted_totals(eps, scored)
    for _ in range(k):
        prof.picker.pick(state, totals)
    os.getppid()
    for r in reqs:
        Decision(request_id=r.request_id, profile="default", picked=[eps[0].name], weights={}, duration_s=0.0,
                 endpoints=eps, filtered_by={}, scores=[], totals=totals)
    os.getppid()
    body = orjson.loads(BODY)
    for r in reqs:
        InferenceRequest.from_body(body, fake.MODEL, headers={}, priority=0, request_id=r.request_id)
    os.getppid()
    ep = gw.datastore.endpoints[0]
    for _ in range(k):
        async with gw.datastore.watch(ep, 300.0):
            pass
    os.getppid()
    await front.close()

uvloop.run(main())
"""


def count(code: Path, profile: str, k: int) -> dict[str, int]:
    """Instructions per call of each part, for one checkout and one scheduler profile."""
    print(f"counting {code} ({profile}) under callgrind, {k} calls per part ...", file=sys.stderr, flush=True)
    counts = count_parts(CHILD, [str(Path(__file__).resolve().parent), profile, str(k)], code, PARTS, k)
    counts[SHARE] = counts[PARTS[2]] - counts[PARTS[3]]
    if profile != "default-plugins":  # no scorers of those kinds: their counts are of empty loops
        for name in PARTS[4:7]:
            counts.pop(name)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="calls of each part")
    ap.add_argument("--profiles", nargs="+", default=["default-plugins", "round-robin"])
    ap.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1],
                    help="checkout whose kit package is counted (default: this one)")
    args = ap.parse_args(argv)
    require_valgrind()
    results = {p: count(args.code, p, args.requests) for p in args.profiles}
    print(f"| part | {' | '.join(args.profiles)} |")
    print(f"|---|{'---|' * len(args.profiles)}")
    for name in [*PARTS[:4], SHARE, *PARTS[4:]]:
        print(f"| {name} | {' | '.join(f'{results[p].get(name, 0):,}' for p in args.profiles)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
