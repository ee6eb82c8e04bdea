"""The command line: clear errors for bad input, exit codes, help."""

import subprocess
import sys

import pytest


def kit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "needle"), [
    (["sim", "--block-size", "0"], "block_size: Input should be greater than or equal to 1"),
    (["sim", "--fail-rate", "2"], "fail_rate: Input should be less than or equal to 1"),
    (["sim", "--time-scale", "0"], "time_scale: Input should be greater than 0"),
], ids=["block-size", "fail-rate", "time-scale"])
def test_invalid_simulator_settings_name_the_field(args, needle):
    res = kit(*args)
    assert res.returncode == 1
    assert "kit sim: error:" in res.stderr and needle in res.stderr


def test_a_gateway_without_pickers_is_refused():
    res = kit("gateway", "--endpoints", "http://127.0.0.1:9", "--picker-replicas", "0")
    assert res.returncode == 1 and "--picker-replicas: need at least one endpoint picker, got 0" in res.stderr


def test_unparsable_flag_is_a_usage_error():
    res = kit("sim", "--max-num-seqs", "many")
    assert res.returncode == 2 and "invalid int value" in res.stderr


def test_request_to_nothing_fails_clearly():
    from kit.targets.processes import free_port

    res = kit("request", "--url", f"http://127.0.0.1:{free_port()}", "hi")
    assert res.returncode == 1 and "failed" in res.stderr


def test_request_prints_reply_and_timings(sim_factory):
    sim = sim_factory()
    res = kit("request", "--url", sim.url, "--chat", "--stream", "--max-tokens", "5", "Hello")
    assert res.returncode == 0, res.stderr
    assert "first token" in res.stdout and "5 generated" in res.stdout


def test_python_dash_m_and_help():
    res = kit("--help")
    assert res.returncode == 0
    for command in ("sim", "request", "demo"):
        assert command in res.stdout


@pytest.mark.slow
def test_bench_prints_the_summary_json(sim_factory, gateway_factory, tmp_path):
    import json

    gw = gateway_factory([sim_factory().url, sim_factory().url])
    out = tmp_path / "bench.json"
    res = kit("bench", "--url", gw.url, "--workload", "shared-prefix", "--groups", "2", "--prompts-per-group", "3",
              "--system-prompt-len", "200", "--question-len", "20", "--output-len", "4", "--concurrency", "3",
              "--seed", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    for key in ("requests", "errors", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "itl_p50_s", "e2e_p90_s",
                "requests_per_s", "output_tokens_per_s", "prefix_cache_hit_rate", "per_endpoint"):
        assert key in summary
    assert summary["requests"] == 6 and summary["errors"] == 0
    assert sum(e["requests"] for e in summary["per_endpoint"].values()) == 6
    assert json.loads(out.read_text()) == summary


def test_bench_rejects_bad_input():
    res = kit("bench", "--workload", "zipf")
    assert res.returncode == 1 and "valid choices: multi-turn, shared-prefix, skewed" in res.stderr
    res = kit("bench", "--rate", "1", "--concurrency", "2")
    assert res.returncode == 1 and "exactly one of rate or concurrency" in res.stderr


def test_bench_picker_prints_percentiles():
    import json

    res = kit("bench-picker", "--endpoints", "4", "--prompt-chars", "1000", "--requests", "200")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["endpoints"] == 4 and 0 < out["p50_us"] <= out["p99_us"]


def test_envs_lists_local():
    res = kit("envs")
    rows = [line.split()[:2] for line in res.stdout.splitlines()]
    guide = ["agentgateway", "cpu", "digitalocean", "gke", "gke_tpu", "istio", "kgateway", "local-vllm-gpu",
             "local-vllm", "local", "precise", "sim", "xpu"]
    assert res.returncode == 0 and [name for name, release in rows if release == "guide"] == guide
    assert {"optimized-baseline", "optimized-baseline-istio", "local-llm-d"} <= {
        name for name, release in rows if release == "llm-d-v0.10"}


def test_scheduler_config_takes_a_shipped_profiles_name(tmp_path, capsys):
    """``--scheduler-config optimized-baseline`` means templates/scheduler/optimized-baseline.yaml; an unknown name
    is still read as a path, and the error says it cannot be read."""
    from pathlib import Path

    import yaml

    from kit import paths
    from kit.cli import main

    assert main(["render", "-e", "optimized-baseline", "--scheduler-config", "optimized-baseline",
                 "-o", str(tmp_path)]) == 0
    objects = list(yaml.safe_load_all((tmp_path / "optimized-baseline.yaml").read_text()))
    [cm] = [o for o in objects if o and o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-epp")]
    shipped = paths.scheduler_profile("optimized-baseline")
    assert list(cm["data"].values()) == [Path(shipped).read_text()]
    assert main(["render", "-e", "optimized-baseline", "--scheduler-config", "no-such-profile",
                 "-o", str(tmp_path)]) != 0
    assert "no-such-profile" in capsys.readouterr().err
