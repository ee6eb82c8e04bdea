"""How long ``make test`` takes, and where the time goes, from the JUnit XML of whole-suite runs.

Run the suite with reports, twice on a quiet machine, then summarise (``--record`` writes the record that
``make results`` renders into docs/results/test-suite.md)::

    KIT_REQUIRE_VLLM=1 make test JUNIT=build/suite-1      # build/suite-1-parallel.xml and -exclusive.xml
    KIT_REQUIRE_VLLM=1 make test JUNIT=build/suite-2
    KIT_VLLM_PYTHON=/nowhere make test JUNIT=build/bare-1    # vLLM not found: its tests skip
    .venv/bin/python bench/suite.py build/suite-1 build/suite-2 [--without-vllm build/bare-1] [--record] \
        [--before "one process=1426,1512"] [--before "two workers=593"]
    make quick JUNIT=build/quick-1 && .venv/bin/python bench/suite.py build/quick-1 --quick   # the fast loop

A run's wall time is pytest's own, over its parts (the lint before them takes a few seconds). The real-vLLM
tests (``tests/contract``, one worker, one set of vLLM servers) are summed apart, setup and teardown included:
they have a budget of their own; ``--without-vllm`` adds runs in which they were skipped. Under several workers the
tests' times add up to more than the wall time, which is what a user waits for.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from record import command_line, write_record

VLLM = "tests/contract/"


def read(prefix: Path) -> dict:
    """The wall time, the outcome counts, the real-vLLM tests' summed time and every test's time of one run, from
    its reports ``<prefix>-*.xml`` (or the one file ``prefix``)."""
    parts = [prefix] if prefix.is_file() else sorted(prefix.parent.glob(f"{prefix.name}-*.xml"))
    if not parts:
        sys.exit(f"no JUnit report {prefix} or {prefix}-*.xml")
    tests: dict[str, float] = {}
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    wall = 0.0
    for part in parts:
        suite = ET.parse(part).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        for case in suite.iter("testcase"):
            node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
            tests[node] = tests.get(node, 0.0) + float(case.get("time", 0))
        counts = {k: v + int(suite.get(k, 0)) for k, v in counts.items()}
        wall += float(suite.get("time"))
    return {"wall": wall, "counts": counts, "tests": tests,
            "vllm": sum(t for n, t in tests.items() if n.startswith(VLLM))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="whole-suite runs: make test's JUNIT prefixes (or XML files)")
    ap.add_argument("--before", action="append", default=[],
                    help="earlier wall times to show beside, e.g. 'one process=1426,1512' (repeatable)")
    ap.add_argument("--without-vllm", action="append", default=[], type=Path, metavar="RUN",
                    help="a run in which the real-vLLM tests were skipped (repeatable)")
    ap.add_argument("--top", type=int, default=12, help="how many of the slowest tests to list")
    ap.add_argument("--quick", action="store_true", help="the runs are `make quick`'s (the record says so)")
    ap.add_argument("--record", action="store_true",
                    help="write bench/results/test-suite/<date>-make-test.json (or -make-quick.json)")
    ap.add_argument("--note", default="", help="what the runs compare, put before the slowest tests in the record")
    ap.add_argument("--load", help="the load average seen during the runs, e.g. '1.9–2.6' (default: now)")
    args = ap.parse_args(argv)
    runs, bare = [read(p) for p in args.runs], [read(p) for p in args.without_vllm]
    for p, r in zip(args.runs + args.without_vllm, runs + bare, strict=True):
        c = r["counts"]
        print(f"{p}: {r['wall']:.0f} s, {c['tests']} tests, {c['failures']} failed, {c['errors']} errors, "
              f"{c['skipped']} skipped; real-vLLM tests {r['vllm']:.0f} s")
    rows = []
    for before in args.before:
        label, _, walls = before.rpartition("=")
        rows += [[f"before ({label}), run {i}", int(w), "(not summed)", ""] for i, w in enumerate(walls.split(","), 1)]
    rows += [[f"after, run {i}", round(r["wall"]), "(not run)" if args.quick else round(r["vllm"]),
              r["counts"]["tests"]] for i, r in enumerate(runs, 1)]
    rows += [[f"after, real-vLLM tests skipped, run {i}", round(r["wall"]), "(skipped)", r["counts"]["tests"]]
             for i, r in enumerate(bare, 1)]
    median = {n: statistics.median(r["tests"].get(n, 0.0) for r in runs) for n in runs[0]["tests"]}
    slowest = sorted(median.items(), key=lambda kv: -kv[1])[: args.top]
    for node, t in slowest:
        print(f"{t:7.1f} s  {node}")
    if not args.record:
        return
    failed = sum(r["counts"]["failures"] + r["counts"]["errors"] for r in runs + bare)
    if failed:
        sys.exit(f"not recording: {failed} tests failed or errored")
    make = "make quick" if args.quick else "make test"
    write_record(
        "test-suite", make.replace(" ", "-"), f"`{make}`: wall time",
        table={"columns": ["run", "pytest wall time (s)", "real-vLLM tests, summed (s)", "tests"], "rows": rows},
        figures={"pytest wall time (s)": " / ".join(f"{r['wall']:.0f}" for r in runs),
                 **({} if args.quick else
                    {"real-vLLM tests, summed (s)": " / ".join(f"{r['vllm']:.0f}" for r in runs)}),
                 **({"pytest wall time, real-vLLM tests skipped (s)": " / ".join(f"{r['wall']:.0f}" for r in bare)}
                    if bare else {})},
        notes=" ".join(filter(None, [args.note.strip(), "The slowest tests (median of the runs, setup and teardown "
                                     "included, s): " + "; ".join(f"`{n.split('::')[-1]}` {t:.0f}" for n, t in slowest)
                                     + "."])),
        load=args.load, command="\n".join(
            [f"KIT_REQUIRE_VLLM=1 make test JUNIT={p}" if not args.quick else f"make quick JUNIT={p}"
             for p in args.runs]
            + [f"KIT_VLLM_PYTHON=/nowhere make test JUNIT={p}" for p in args.without_vllm]
            + [command_line()]))


if __name__ == "__main__":
    main()
