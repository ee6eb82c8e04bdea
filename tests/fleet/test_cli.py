"""``kit simulate``: the same summary as ``kit bench``, sweeps with capacity, clear errors."""

import json
import subprocess
import sys

import pytest

from kit.experiments.results import Comparison, Summary, Sweep

SMALL = ["--groups", "4", "--prompts-per-group", "4", "--system-prompt-len", "800", "--question-len", "50",
         "--output-len", "16", "--num-gpu-blocks", "512", "--max-model-len", "8192", "--max-num-seqs", "16"]


def kit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, timeout=300)


def test_one_profile_prints_kit_bench_summary_and_writes_the_comparison(tmp_path):
    out = tmp_path / "run.json"
    res = kit("simulate", "--replicas", "3", *SMALL, "--rate", "30", "--out", str(out))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert set(summary) == set(Summary.__dataclass_fields__) and summary["ok"] == 16
    assert "3 simulated replicas" in res.stderr and f"wrote {out}" in res.stderr
    cmp = Comparison.read(out)
    assert cmp.run("default-plugins").summary.to_dict() == summary and cmp.run("default-plugins").samples
    again = kit("simulate", "--replicas", "3", *SMALL, "--rate", "30")
    assert again.stdout == res.stdout  # deterministic


@pytest.mark.slow
def test_a_sweep_reports_capacity(tmp_path):
    out = tmp_path / "sweep.json"
    res = kit("simulate", "--replicas", "1,2", *SMALL, "--rate", "20,5000", "--requests", "64",
              "--profile", "random,default-plugins", "--slo-ttft-p90", "0.05", "--jobs", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "capacity: highest rate meeting TTFT p90 <= 0.05 s" in res.stdout and "sweep points" in res.stderr
    sweep = Sweep.read(out)
    assert len(sweep.points) == 8 and sweep.replicas() == [1, 2] and sweep.profiles() == ["random", "default-plugins"]
    caps = {(r["profile"], r["replicas"]): r["capacity_rps"] for r in sweep.capacity(0.05)}
    assert caps[("default-plugins", 1)] == 20.0  # 5,000/s swamps one server


def test_bad_input_is_named():
    assert "--profile nope: no such file" in kit("simulate", "--rate", "1", "--profile", "nope").stderr
    assert "--turns does not apply to --workload shared-prefix" in kit("simulate", "--rate", "1", "--turns", "3").stderr
    assert "give --rate" in kit("simulate").stderr
    assert "expected positive numbers" in kit("simulate", "--rate", "1,-2").stderr
    bad = kit("simulate", "--rate", "1", "--num-gpu-blocks", "0")
    assert bad.returncode == 1 and "num_gpu_blocks" in bad.stderr


def test_precise_profile_and_scenarios_from_the_command_line():
    res = kit("simulate", "--replicas", "3", *SMALL, "--rate", "30", "--profile", "default-plugins,precise",
              "--picker-replicas", "2", "--outside-rate", "10", "--outside-prompt-len", "300", "--event-lag", "0.01")
    assert res.returncode == 0, res.stderr
    assert "2 picker replicas, outside traffic 10/s (300 → 1 tokens)" in res.stderr
    summaries = json.loads(res.stdout)
    assert summaries["precise"]["ok"] == summaries["default-plugins"]["ok"] == 16
    assert summaries["precise"]["prefix_cache_hit_rate"] > 0.3
    bad = kit("simulate", "--rate", "1", "--picker-replicas", "0")
    assert bad.returncode == 1 and "picker_replicas: need at least one endpoint picker" in bad.stderr
