"""The architecture contracts in pyproject.toml hold, and each one fails when its wall is broken on purpose."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]

# (file to touch, import that breaks a wall, words from the contract that must then fail)
VIOLATIONS = [
    ("kit/picker/scheduler.py", "import kubernetes", "The picker is scheduling logic"),
    ("kit/picker/framework.py", "import kit.sim.engine", "The picker is scheduling logic"),
    ("kit/sim/engine.py", "import kit.picker", "The simulator stands alone"),
    ("kit/sim/kvcache.py", "import kit.gateway", "The simulator stands alone"),
    ("kit/gateway/server.py", "import kit.picker.plugins.scorers.prefix", "The gateway knows the picker only"),
    ("kit/manifests/render.py", "import urllib.request", "Manifests are pure"),
    ("kit/manifests/validate.py", "import kubernetes", "Manifests are pure"),
    ("kit/experiments/plots.py", "import kit.experiments.loadgen", "Plots draw results"),
    ("kit/experiments/results.py", "import pydantic", "Results are plain data"),
    ("kit/targets/local.py", "import kit.notebook", "Layers"),
    ("kit/fleet/loop.py", "import kit.picker.plugins.scorers.prefix", "The fleet simulator runs the picker"),
    ("kit/fleet/node.py", "import aiohttp", "The fleet simulator runs the picker"),
    ("kit/experiments/workloads.py", "import kit.fleet", "Layers"),
    ("kit/picker/registry.py", "import kit.picker.config", "No import cycles"),
]


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*LINT, "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "0 broken" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("path", "statement", "contract"), VIOLATIONS, ids=[f"{v[0]}:{v[1]}" for v in VIOLATIONS])
def test_each_contract_fails_when_its_wall_is_broken(tmp_path, path, statement, contract):
    shutil.copytree(ROOT / "kit", tmp_path / "kit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / path
    target.write_text(target.read_text() + f"\n{statement}  # deliberate violation\n")
    res = lint(tmp_path)
    assert res.returncode != 0, res.stdout[-2000:]
    broken = res.stdout.split("Broken contracts")[-1]
    assert contract in broken, broken[:2000]


PROBE = "import sys, {mod}; print(sorted(m for m in sys.modules if m == 'kit' or m.startswith('kit.')))"


def _loaded(module: str) -> list[str]:
    res = subprocess.run([sys.executable, "-c", PROBE.format(mod=module)], capture_output=True, text=True, check=True)
    return eval(res.stdout)  # a list literal printed by the probe


def test_the_walls_hold_at_run_time_too():
    assert _loaded("kit") == ["kit"]  # the notebook API loads nothing until a name is used
    sim = _loaded("kit.sim.server")
    assert not [m for m in sim if m.startswith(("kit.picker", "kit.gateway", "kit.targets", "kit.experiments"))], sim
    gateway = _loaded("kit.gateway.server")
    assert not [m for m in gateway if m.startswith(("kit.sim", "kit.targets", "kit.experiments"))], gateway
    assert not [m for m in gateway if m.startswith("kit.picker.plugins.")] or "kit.picker.registry" in gateway


def test_the_cli_loads_only_what_the_command_runs():
    code = ("import sys; from kit.cli import build_parser; build_parser('gateway'); "
            "print(sorted(m for m in sys.modules if m.startswith('kit.')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "kit.sim.config" not in res.stdout and "kit.experiments.workloads" not in res.stdout
