"""The repository's set-up promises: one dependency source, two README commands, CI runs the tests."""

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from kit.targets.processes import free_port_block

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_the_package_with_every_extra():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    extras.discard("routers")  # other projects' routers, for `make bench-routers` only
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "conda-forge" in env["channels"]
    # Conda only supplies Python, pip and make; every Python package comes from pyproject.toml.
    assert {c.split("=")[0] for c in conda} == {"python", "pip", "make"}
    assert len(pip) == 1 and pip[0].startswith("-e .[")
    assert set(pip[0][len("-e .["):-1].split(",")) == extras


def test_readme_leads_with_exactly_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## ")[0] + readme.split("## ")[1]
    assert "make demo" in setup and "make test" in setup
    assert (ROOT / ".ci" / "run").read_text().count("make test") == 1


def test_notebooks_are_committed_without_outputs():
    import json

    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and not cell.get("execution_count"), nb.name


@pytest.mark.slow
def test_a_wheel_installs_in_a_fresh_venv_and_deploys_from_another_folder(tmp_path):
    """A wheel (what ``pip install .`` builds) ships the environments, templates and notebooks: from a folder with
    no repository in sight, ``kit envs`` lists them and ``kit deploy -e local`` brings a stack up.

    The fresh venv installs the wheel itself; its dependencies are borrowed from this venv's site-packages (a
    ``.pth`` line) rather than downloaded again, which would add a minute and test pip, not the wheel. The kit
    in this venv is an editable install, whose finder a ``.pth`` path does not load: only the wheel's kit is
    importable there (asserted)."""
    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)])
    (wheel,) = wheels.glob("inference_scheduling_kit-*.whl")
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    deps = sysconfig.get_path("purelib")
    Path(site, "borrowed-deps.pth").write_text(deps + "\n")
    run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)])
    where = run([python, "-c", "import kit.paths as p; print(p.__file__); print(p.ROOT)"], cwd=elsewhere).split()
    assert where[0].startswith(site) and where[1].startswith(site), where  # the wheel's kit and its own data
    kit = str(venv / "bin" / "kit")
    env = {k: v for k, v in os.environ.items() if k not in ("KIT_HOME", "PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"KIT_STATE_DIR": str(tmp_path / "state"), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    envs = run([kit, "envs"], cwd=elsewhere, env=env)
    assert "local" in envs and "istio" in envs
    port = free_port_block(3)  # the gateway's port and those after it that the deploy takes
    try:
        out = run([kit, "deploy", "-e", "local", "--replicas", "1", "--port", str(port)], cwd=elsewhere, env=env)
        assert f"http://127.0.0.1:{port}" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            assert json.load(r)["data"]
    finally:
        run([kit, "destroy", "-e", "local"], cwd=elsewhere, env=env)
    assert "nothing deployed" in run([kit, "status", "-e", "local"], cwd=elsewhere, env=env)


def run(cmd: list[str], **kw) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
