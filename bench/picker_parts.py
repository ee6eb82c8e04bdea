"""Instructions per part of one pick, counted by valgrind (the same on a busy machine as on a quiet one).

Run: ``.venv/bin/python bench/picker_parts.py [--endpoints 16] [--prompt-chars 32000] [--picks 300]
[--code DIR]`` (needs ``valgrind``; ``--code DIR`` counts another checkout's code, e.g. one made with
``git archive <commit> kit templates | tar -x -C DIR``). It sets up ``kit bench-picker``'s workload
(warmed by 200 picks) under callgrind, then runs each part ``--picks`` times between two calls of
``os.getppid``, where callgrind (``--dump-before=getppid``) closes one count and opens the next:
whole picks (schedule and PreRequest), prompt hashing, the index walk, the prefix scorer, the queue
and KV scorers, the weighted totals and the picker, and the schedule alone (PreRequest = whole −
schedule). Prints instructions per call of each part. About a minute per run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from callgrind import count_parts, require_valgrind

PARTS = ["whole pick (schedule + PreRequest)", "prompt hashing (block_hashes)", "index walk (PrefixIndex.match)",
         "prefix scorer (hashing, walk, scores)", "queue and KV scorers", "weighted totals and picker",
         "schedule alone"]

CHILD = """
import os, random, sys
from kit import paths
from kit.picker.bench import endpoints, make_requests
from kit.picker.config import load_picker_file
from kit.picker.framework import CycleState
from kit.picker.scheduler import _weighted_totals
from kit.picker.plugins import approx_prefix as ap

n, chars, k = (int(a) for a in sys.argv[1:])
rng = random.Random(0)
sched = load_picker_file(paths.default_scheduler_config()).scheduler
eps = endpoints(rng, n)
reqs = list(make_requests(rng, chars, 200 + k))
for r in reqs[:200]:
    _, st = sched.schedule(r, eps)
    sched.pre_request(st, r, st["picked"][0])
reqs = reqs[200:]
prof = sched.profiles["default"]
sc = {s.name: s for s, _ in prof.scorers}
prefix = sc["prefix-cache-scorer"]
tokens = prefix.producer.block_tokens(eps)
hashes = [ap.block_hashes(r.prompt, r.model, tokens * ap.CHARS_PER_TOKEN, 256) for r in reqs]
states = []
os.getppid()
for r in reqs:
    _, st = sched.schedule(r, eps)
    sched.pre_request(st, r, st["picked"][0])
    states.append(st)
os.getppid()
for r in reqs:
    ap.block_hashes(r.prompt, r.model, tokens * ap.CHARS_PER_TOKEN, 256)
os.getppid()
for h in hashes:
    prefix.producer.index.match(h)
os.getppid()
for r in reqs:
    prefix.score(CycleState(), r, eps)
os.getppid()
for r in reqs:
    sc["queue-scorer"].score(None, r, eps)
    sc["kv-cache-utilization-scorer"].score(None, r, eps)
os.getppid()
scored = [(w, s.score(states[0], reqs[0], eps)) for s, w in prof.scorers]
for r in reqs:
    prof.picker.pick(None, _weighted_totals(eps, scored))
os.getppid()
for r in reqs:
    sched.schedule(r, eps)
os.getppid()
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=16)
    ap.add_argument("--prompt-chars", type=int, default=32000)
    ap.add_argument("--picks", type=int, default=300, help="calls of each part")
    ap.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1],
                    help="checkout whose kit package is counted (default: this one)")
    args = ap.parse_args(argv)
    require_valgrind()
    print(f"counting {args.code} under callgrind: {args.endpoints} endpoints, {args.prompt_chars:,}-character"
          f" prompts, {args.picks} calls per part ...", file=sys.stderr, flush=True)
    counts = count_parts(CHILD, [str(args.endpoints), str(args.prompt_chars), str(args.picks)], args.code, PARTS,
                         args.picks, f" (needs kit.picker.bench.make_requests in {args.code})")
    counts["PreRequest (whole pick − schedule alone)"] = counts[PARTS[0]] - counts[PARTS[-1]]
    for name in [*PARTS, "PreRequest (whole pick − schedule alone)"]:
        print(f"| {name} | {counts[name]:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
