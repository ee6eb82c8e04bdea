"""The results pages are generated from the benchmarks' records: every record is valid, and the committed pages
are exactly what ``make results`` (bench/pages.py) makes of them, so the two cannot drift apart."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted((ROOT / "bench/results").glob("*/*.json"))


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


pages = _module("pages")
record = _module("record")
SCHEMA = json.loads((ROOT / "bench/results/schema.json").read_text())


def test_there_are_records():
    assert RECORDS, "no records under bench/results"


@pytest.mark.parametrize("path", RECORDS, ids=[p.relative_to(ROOT / "bench/results").as_posix() for p in RECORDS])
def test_record_validates(path):
    data = json.loads(path.read_text())
    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert pages._consistency(path.relative_to(ROOT), data, path.parent.name) == []


def test_committed_pages_are_what_the_records_give():
    generated = pages.render_all()
    committed = {p.relative_to(ROOT) for p in (ROOT / "docs/results").glob("*.md")}
    assert committed == set(generated), "docs/results holds pages no record makes, or lacks some: run make results"
    for rel, text in generated.items():
        assert (ROOT / rel).read_text() == text, f"{rel} is out of date: run make results"


def test_no_user_doc_names_an_issue_number():
    import re

    pattern = re.compile(r"\b[Ii]ssue #?\d+|#\d{1,3}\b")
    for path in sorted((ROOT / "docs/results").glob("*.md")):
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert hits == [], f"{path.name}: {hits}"


@pytest.fixture
def copy(tmp_path):
    """A copy of the records and pages to break on purpose."""
    shutil.copytree(ROOT / "bench/results", tmp_path / "bench/results")
    (tmp_path / "docs").mkdir()
    shutil.copytree(ROOT / "docs/img", tmp_path / "docs/img")
    return tmp_path


def _runs(root: Path, family: str, name: str) -> list[Path]:
    return sorted((root / "bench/results" / family).glob(f"*-{name}*.json"))


def test_a_newer_run_becomes_current_and_the_older_one_a_link(copy):
    old = json.loads((copy / "bench/results/simulator/2026-11-27-sse-rate.json").read_text())
    new = {**old, "date": "2027-01-05", "figures": {**old["figures"], "SSE events/s": 41234}, "commit": "abcdef1"}
    (copy / "bench/results/simulator/2027-01-05-sse-rate.json").write_text(json.dumps(new))
    page = pages.render_all(copy)[Path("docs/results/simulator.md")]
    current, earlier = page.split("## Earlier runs")
    assert "**41,234**" in current and "Measured 2027-01-05" in current and "commit `abcdef1`" in current
    assert "35,600" not in current
    assert "(../../bench/results/simulator/2026-11-27-sse-rate.json)" in earlier


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("machine"), "'machine' is a required property"),
    (lambda d: d.update(date="27/11/2026"), "date: '27/11/2026' does not match"),
    (lambda d: d.update(commit="HEAD"), "commit: 'HEAD' is not valid"),
    (lambda d: d.update(surprise=1), "Additional properties are not allowed ('surprise'"),
    (lambda d: d.update(name="renamed"), "the file should be named 2026-11-27-renamed.json"),
], ids=["missing-field", "bad-date", "bad-commit", "unknown-field", "name-and-file-disagree"])
def test_a_bad_record_is_named_with_its_field(copy, change, message):
    path = copy / "bench/results/simulator/2026-11-27-sse-rate.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(pages.RecordsError) as err:
        pages.load(copy)
    assert "bench/results/simulator/2026-11-27-sse-rate.json" in str(err.value)
    assert message in str(err.value)


def test_a_row_with_a_missing_cell_is_refused(copy):
    path = copy / "bench/results/simulator/2026-11-27-fidelity.json"
    data = json.loads(path.read_text())
    data["table"]["rows"][3].pop()
    path.write_text(json.dumps(data))
    with pytest.raises(pages.RecordsError, match=r"table\.rows\.3: \d+ cells for \d+ columns"):
        pages.load(copy)


def test_a_measurement_the_family_does_not_list_is_refused(copy):
    path = copy / "bench/results/simulator/2026-11-27-sse-rate.json"
    data = json.loads(path.read_text()) | {"name": "stray"}
    (copy / "bench/results/simulator/2026-11-27-stray.json").write_text(json.dumps(data))
    with pytest.raises(pages.RecordsError, match="measurement 'stray' is in neither order nor retired"):
        pages.load(copy)


def test_the_record_helper_writes_a_valid_record(tmp_path):
    argv = [str(ROOT / "bench/sim_bench.py"), "--record"]
    first = record.write_record("simulator", "sse-rate", "SSE events per second", notes="n",
                                figures={"SSE events/s": 1}, results=tmp_path, argv=argv)
    second = record.write_record("simulator", "sse-rate", "SSE events per second", notes="n",
                                 table={"columns": ["a"], "rows": [[1]]}, results=tmp_path, argv=argv)
    for path in (first, second):
        data = json.loads(path.read_text())
        jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
        assert pages._consistency(Path("x/simulator") / path.name, data, "simulator") == []
        assert data["command"] == ".venv/bin/python bench/sim_bench.py --record"
        assert "-core" in data["machine"] and "Python" in data["machine"]
    assert json.loads(second.read_text())["seq"] == 2
