"""The main job runs end to end, says what happened, and leaves nothing running."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_compares_profiles_and_cleans_up(tmp_path):
    res = subprocess.run([sys.executable, "-m", "kit", "demo", "--out", str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "KIT_STATE_DIR": str(tmp_path / "state")})
    assert res.returncode == 0, res.stderr
    assert "Why the endpoint picker chose it" in res.stdout and "← picked" in res.stdout
    summary = json.loads((tmp_path / "out" / "demo.json").read_text())
    profiles = summary["profiles"]
    assert set(profiles) == {"random", "load-only", "default-plugins"}
    assert all(p["errors"] == 0 for p in profiles.values())
    assert profiles["default-plugins"]["prefix_cache_hit_rate"] > profiles["random"]["prefix_cache_hit_rate"] + 0.25
    pids = [int(line.split("pid ")[1].split()[0]) for line in res.stdout.splitlines() if line.startswith("stopped ")]
    assert len(pids) == 5
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
    assert not list((tmp_path / "state").glob("*.json"))  # the state file is gone too
