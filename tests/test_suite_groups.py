"""How ``make test`` splits the suite between its workers (the scheduler in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import group_of

ROOT = Path(__file__).resolve().parents[1]


def test_the_real_vllm_tests_share_one_group_and_a_module_fixture_keeps_its_file_together():
    assert group_of("tests/contract/test_api.py::test_a_chat_completion[vllm]") == "vllm"
    assert group_of("tests/contract/test_kv_events.py::test_x[sim]") == "vllm"
    assert group_of("tests/test_notebooks.py::test_every_figure_shows_in_a_real_browser") == "tests/test_notebooks.py"
    assert group_of("tests/gateway/test_abuse.py::test_y") == "tests/gateway/test_abuse.py"
    one = "tests/test_lessons.py::test_04_the_server_with_the_largest_total_wins[0]"
    assert group_of(one) == one  # no module fixture: each test goes wherever a worker is free


@pytest.mark.slow
def test_two_workers_keep_a_module_fixture_built_once(tmp_path):
    """Two test files, one with a module fixture that counts its builds: under ``-n 2 --dist loadgroup`` all
    of that file's tests run on one worker, and the fixture is built once."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text((ROOT / "tests/conftest.py").read_text().replace(
        "ROOT = Path(__file__).resolve().parents[1]", f"ROOT = Path({str(tmp_path)!r})"))
    (tests / "test_shared.py").write_text(
        "import os, pytest\n"
        "@pytest.fixture(scope=\"module\")\n"
        "def built(tmp_path_factory):\n"
        "    with open(os.environ['BUILDS'], 'a') as f:\n"
        "        f.write(os.environ.get('PYTEST_XDIST_WORKER', '-') + '\\n')\n"
        + "".join(f"def test_{i}(built):\n    pass\n" for i in range(12)))
    (tests / "test_free.py").write_text("".join(f"def test_{i}():\n    pass\n" for i in range(12)))
    builds = tmp_path / "builds.txt"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
                          "no:cacheprovider", "--rootdir", str(tmp_path), "-c", "/dev/null", str(tests)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "BUILDS": str(builds), "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "24 passed" in res.stdout
    assert len(builds.read_text().split()) == 1, builds.read_text()
