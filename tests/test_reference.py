"""The generated reference pages (docs/reference/) match the code they document, and cover every plugin."""

from pathlib import Path

import pytest

from kit import reference
from kit.cli import main
from kit.picker.catalog import catalog
from kit.picker.registry import default

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reference"


@pytest.mark.parametrize("name", sorted(reference.PAGES))
def test_committed_page_is_current(name):
    assert (DOCS / name).read_text() == reference.PAGES[name](), f"docs/reference/{name} is stale: run `make docs`"


def test_every_registered_plugin_type_has_its_reference_entry():
    page = (DOCS / "plugins.md").read_text()
    for plugin_type in default().types():
        assert f"## {plugin_type}\n" in page or f"`{plugin_type}`" in page, plugin_type
    for entry in catalog():
        assert entry.summary, f"{entry.type} has no description (give its class a docstring)"
        assert entry.kinds, f"{entry.type}: kind not recognised"


def test_kit_plugins_prints_every_plugin_with_its_parameters(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for entry in catalog():
        assert entry.type in out
        for p in entry.parameters:
            assert f"{p.name}: " in out


def test_check_mode_reports_a_stale_page(tmp_path, capsys):
    (tmp_path / "cli.md").write_text("old\n")
    assert reference.main(["--check", str(tmp_path)]) == 1
    assert "cli.md" in capsys.readouterr().err
    assert (tmp_path / "cli.md").read_text() == "old\n"  # --check writes nothing
