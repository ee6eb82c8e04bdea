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


def test_unparsable_flag_is_a_usage_error():
    res = kit("sim", "--max-num-seqs", "many")
    assert res.returncode == 2 and "invalid int value" in res.stderr


def test_request_to_nothing_fails_clearly():
    from kit.processes import free_port

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
