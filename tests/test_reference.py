"""The generated reference pages (docs/reference/) match the code they document, and cover every plugin."""

from pathlib import Path

import pytest

from kit import reference
from kit.cli import main
from kit.picker.catalog import catalog, page_name
from kit.picker.registry import default

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reference"


@pytest.mark.parametrize("name", sorted(reference.PAGES))
def test_committed_page_is_current(name):
    assert (DOCS / name).read_text() == reference.PAGES[name](), f"docs/reference/{name} is stale: run `make docs`"


@pytest.mark.parametrize("release", ["v0.7", "v0.10"])
def test_every_registered_plugin_type_has_its_reference_entry(release):
    page = (DOCS / page_name(release)).read_text()
    for plugin_type in default(release).types():
        assert f"## {plugin_type}\n" in page or f"`{plugin_type}`" in page, plugin_type
    for entry in catalog(release):
        assert entry.summary, f"{entry.type} has no description (give its class a docstring)"
        assert entry.kinds, f"{entry.type}: kind not recognised"
        assert entry.upstream.startswith(("llm-d", "kit only")), f"{entry.type}: which upstream release it follows"
        for p in entry.parameters:
            assert p.description, f"{entry.type}: parameter {p.name} has no description (Field(description=...))"


def test_the_reference_says_what_each_plugin_follows():
    v07, v010 = ({e.type: e.upstream for e in catalog(r)} for r in ("v0.7", "v0.10"))
    assert v07["prefix-cache-scorer"] == "llm-d-inference-scheduler v0.7.0 on GIE v1.4.0"
    assert v010["token-load-scorer"] == "llm-d-router v0.10.0"
    assert v010["session-affinity-scorer"] == "llm-d-router v0.10.0, Alpha"
    assert v010["tokenizer"] == "llm-d-router v0.10.0, deprecated in v0.9.0, goes in v0.11.0 (use token-producer)"
    assert v07["round-robin-picker"] == v010["round-robin-picker"] == "kit only (no upstream type)"


@pytest.mark.parametrize("release", ["v0.7", "v0.10"])
def test_kit_plugins_prints_every_plugin_with_its_parameters(capsys, release):
    assert main(["plugins", "--release", release]) == 0
    out = capsys.readouterr().out
    for entry in catalog(release):
        assert entry.type in out and entry.upstream in out
        for p in entry.parameters:
            assert f"{p.name}: " in out


def test_check_mode_reports_a_stale_page(tmp_path, capsys):
    (tmp_path / "cli.md").write_text("old\n")
    assert reference.main(["--check", str(tmp_path)]) == 1
    assert "cli.md" in capsys.readouterr().err
    assert (tmp_path / "cli.md").read_text() == "old\n"  # --check writes nothing
