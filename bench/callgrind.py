"""Instruction counts per part of a Python snippet, from valgrind's callgrind (load does not change them).

The snippet (run as ``python -c CHILD ARGS`` under callgrind, with ``PYTHONPATH`` set to the checkout
being counted) calls ``os.getppid()`` between parts; ``--dump-before=getppid`` closes one count there and
opens the next. Dump 1 is the set-up; dump ``i + 2`` is part ``i``, run ``calls`` times.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def require_valgrind() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)")


def count_parts(child: str, args: list[str], code: Path, parts: list[str], calls: int,
                hint: str = "") -> dict[str, int]:
    """Instructions per call of each of ``parts``, counting ``code``'s ``kit`` package."""
    with tempfile.TemporaryDirectory(prefix="kit-callgrind-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(code.resolve())}
        cmd = ["valgrind", "--tool=callgrind", "--dump-before=getppid", f"--callgrind-out-file={Path(tmp) / 'cg.out'}",
               sys.executable, "-c", child, *args]
        run = subprocess.run(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if run.returncode:
            raise SystemExit(f"the counted process failed{hint}:\n"
                             + "\n".join([ln for ln in run.stderr.splitlines() if not ln.startswith("==")][-8:]))
        counts = {}
        for f in Path(tmp).glob("cg.out.*"):
            part = int(f.name.rsplit(".", 1)[1])
            m = re.search(r"^summary:\s+(\d+)", f.read_text(errors="replace"), re.M)
            if m and 2 <= part <= len(parts) + 1:  # dump 1 is the set-up
                counts[parts[part - 2]] = int(m.group(1)) // calls
    if len(counts) != len(parts):
        raise SystemExit(f"expected {len(parts)} counts from callgrind, got {len(counts)}")
    return counts
