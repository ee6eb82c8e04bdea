"""The main job runs end to end, says what happened, and leaves nothing running."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_shows_prefix_cache_and_queueing_and_cleans_up(tmp_path):
    res = subprocess.run([sys.executable, "-m", "kit", "demo", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "nothing the demo started is left running" in res.stdout
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["prefix"]["warm_cached_tokens"] > 500
    assert summary["burst"]["ok"] == 40
    assert summary["burst"]["ttft_max_s"] > 5 * summary["burst"]["ttft_min_s"]
    pid = int(res.stdout.split("started pid ")[1].split(";")[0])
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
