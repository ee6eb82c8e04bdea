"""The repository's set-up promises: one dependency source, two README commands, CI runs the tests."""

import tomllib
from pathlib import Path

import yaml

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
