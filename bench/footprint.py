"""What a server process costs before it serves: import time, start time, resident memory, modules loaded.

Run: ``.venv/bin/python bench/footprint.py [--repeat N] [--out FILE]`` (part of ``make bench``).

* import: ``python -X importtime -c "import kit.sim.server"`` (and ``kit``, and the gateway's module):
  the cumulative time of every top-level import it triggers, less that of an empty program, median of
  N runs; and which of the kit's subpackages and modules it pulled in.
* process: ``python -m kit sim`` / ``python -m kit gateway`` started N times; seconds until ``/health``
  answers and resident memory (VmRSS) once it does, medians.

Uses only the standard library and subprocesses, so it measures any revision of the kit the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROBE = ("import sys; import {mod}; print(sorted({{m.split('.')[1] for m in sys.modules "
         "if m.startswith('kit.') and m.count('.') >= 1}}))")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _top_level_us(code: str) -> int:
    """Sum of the cumulative times of the top-level imports ``python -X importtime -c CODE`` reports."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in res.stderr.splitlines() if line.startswith("import time:")]
    return sum(int(r[1]) for r in rows[1:] if not r[2].startswith("  "))  # rows[0] is the header


def import_time(module: str, repeat: int) -> dict:
    """Median cumulative import time of ``module`` (µs) and the kit subpackages it loads."""
    times = [_top_level_us(f"import {module}") - _top_level_us("pass") for _ in range(repeat)]
    loaded = subprocess.run([sys.executable, "-c", PROBE.format(mod=module)], capture_output=True, text=True,
                            check=True).stdout.strip()
    return {"module": module, "import_ms": round(statistics.median(times) / 1000, 1), "kit_packages": loaded}


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start(args: list[str], port: int) -> tuple[subprocess.Popen, float]:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "kit", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return p, time.perf_counter() - t0
        except OSError:
            if p.poll() is not None:
                raise RuntimeError(f"kit {' '.join(args)} exited with {p.returncode}") from None
            time.sleep(0.01)


def process_cost(role: str, repeat: int) -> dict:
    starts, rss = [], []
    for _ in range(repeat):
        sim_port = _free_port()
        sim, t = _start(["sim", "--port", str(sim_port)], sim_port)
        procs = [sim]
        try:
            if role == "sim":
                starts.append(t)
                rss.append(_rss_mib(sim.pid))
            else:
                port = _free_port()
                gw, t = _start(["gateway", "--port", str(port), "--endpoints", f"http://127.0.0.1:{sim_port}"], port)
                procs.append(gw)
                starts.append(t)
                rss.append(_rss_mib(gw.pid))
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    return {"process": f"kit {role}", "start_s": round(statistics.median(starts), 3),
            "rss_mib": round(statistics.median(rss), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    gateway_module = "kit.gateway.server" if Path("kit/gateway").is_dir() else "kit.gateway"
    out = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
           "imports": [import_time(m, args.repeat) for m in ("kit", "kit.sim.server", gateway_module)],
           "processes": [process_cost(r, args.repeat) for r in ("sim", "gateway")]}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
