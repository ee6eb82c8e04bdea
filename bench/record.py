"""Write one benchmark run as a record for the results pages (``bench/results/schema.json``; ``make results``).

A script that offers ``--record`` calls :func:`write_record` with its figures; the date, the machine (from the
platform), the kit's commit, the load average and the command line that ran are filled in here. The record
lands in ``bench/results/<family>/<date>-<name>.json`` (``-2``, ``-3``… for later runs the same day); the
script's notes say what the figures mean, so the page can explain them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """E.g. '2-core AMD EPYC VM, 24 GiB, Python 3.11.7, no GPU'."""
    cpu, virtual = platform.processor() or platform.machine(), False
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        virtual = " hypervisor" in info
    except (OSError, StopIteration):
        pass
    for noise in ("(R)", "(TM)", " CPU", " Processor"):
        cpu = cpu.replace(noise, "")
    cpu = " ".join(cpu.split("@")[0].split())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = len(list(Path("/dev").glob("nvidia[0-9]*")))
    gpu = f"{gpus} NVIDIA GPU{'s' if gpus > 1 else ''}" if gpus else "no GPU"
    return (f"{os.cpu_count()}-core {cpu}{' VM' if virtual else ''}, {round(mem)} GiB, "
            f"Python {platform.python_version()}, {gpu}")


def commit() -> str | None:
    """The checkout's short commit; None outside git or with uncommitted changes to tracked files (the figures
    then belong to no commit)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha if not dirty else None


def command_line(argv: list[str] | None = None) -> str:
    """How this process was started, as a user would type it from the repository's root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    if script.is_relative_to(ROOT):
        argv[0] = script.relative_to(ROOT).as_posix()
    return ".venv/bin/python " + shlex.join(argv)


def write_record(family: str, name: str, title: str, *, notes: str, table: dict | None = None,
                 figures: dict | None = None, results: Path | None = None, argv: list[str] | None = None,
                 date: datetime.date | None = None, load: float | str | None = None,
                 command: str | None = None) -> Path:
    """Write one run's record and return its path; ``table`` is ``{"columns": [...], "rows": [[...]]}``.
    ``load`` defaults to the 1-minute load average now (pass e.g. "0.9–1.4" for a range seen during the run);
    ``command`` to how this process was started (``argv``)."""
    if table is None and figures is None:
        raise ValueError("a record needs a table or figures")
    folder = (results or ROOT / "bench/results") / family
    folder.mkdir(parents=True, exist_ok=True)
    day = (date or datetime.date.today()).isoformat()
    seq = 1
    while (folder / f"{day}-{name}{f'-{seq}' if seq > 1 else ''}.json").exists():
        seq += 1
    record = {"family": family, "name": name, "title": title, "date": day}
    if seq > 1:
        record["seq"] = seq
    record |= {"machine": machine(), "command": command or command_line(argv), "commit": commit(),
               "load": round(os.getloadavg()[0], 1) if load is None else load}
    if table is not None:
        record["table"] = table
    if figures is not None:
        record["figures"] = figures
    record["notes"] = notes
    path = folder / f"{day}-{name}{f'-{seq}' if seq > 1 else ''}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", file=sys.stderr)
    return path
