"""The local target with real vLLM servers, without starting them: the command lines and environments it plans,
where it finds vLLM, what it says when vLLM is missing, and how it reads a server's startup from its log.
(tests/contract deploys the real thing.)"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from kit import paths, tiny_model
from kit.errors import KitError
from kit.manifests.environments import LocalVllmSettings, load_environment
from kit.targets import vllm
from kit.targets.local import LocalTarget

PRECISE = str(paths.scheduler_profile("precise"))


@pytest.fixture
def target(tmp_path, monkeypatch) -> LocalTarget:
    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KIT_MODEL_CACHE", str(tmp_path / "models"))
    return LocalTarget(load_environment("local-vllm", overrides={"local": {"gateway_port": 41000}}))


def args_of(command: str) -> list[str]:
    return command.split()


def test_the_plan_gives_each_server_the_flags_the_kit_needs(target):
    *servers, gateway = target.plan()
    assert [p["role"] for p in servers] == ["vllm", "vllm"] and gateway["role"] == "gateway"
    for i, p in enumerate(servers):
        port = 41001 + i
        cmd = p["command"]
        assert cmd.startswith("vllm serve " + str(tiny_model.cache_dir() / f"tiny-qwen3-{tiny_model.fingerprint()}"))
        for flag in (f"--port {port}", "--served-model-name Qwen/Qwen3-0.6B", "--enable-prefix-caching",
                     "--block-size 32", "--enable-prompt-tokens-details", "--enable-scale-out", "--max-model-len 8192",
                     "--max-num-seqs 16", "--max-num-batched-tokens 2048", "--kv-cache-memory-bytes 16842752",
                     "--shutdown-timeout 30", "--dtype float32"):
            assert f" {flag}" in cmd, flag
        events = json.loads(cmd.split("--kv-events-config ", 1)[1].split(" ")[0])
        # Published whatever the profile, to the port after the servers', as the precise profile's picker binds it.
        assert events == {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:41003",
                          "topic": f"kv@127.0.0.1:{port}@Qwen/Qwen3-0.6B"}
    assert "--endpoints http://127.0.0.1:41001,http://127.0.0.1:41002" in gateway["command"]


def test_another_profile_changes_the_gateway_only(target):
    plain, precise = target.plan(), target.plan(PRECISE)
    assert [p["command"] for p in plain[:-1]] == [p["command"] for p in precise[:-1]]
    assert plain[-1]["command"] != precise[-1]["command"]


def test_each_server_runs_with_its_own_core_and_vllms_dev_routes(target):
    env0, env1 = vllm.serve_env(target.local.vllm, 0), vllm.serve_env(target.local.vllm, 1)
    assert env0["VLLM_SERVER_DEV_MODE"] == "1" and env0["PYTHONHASHSEED"] == "42"
    cores = os.cpu_count() or 1
    assert (env0["VLLM_CPU_OMP_THREADS_BIND"], env1["VLLM_CPU_OMP_THREADS_BIND"]) == ("0", str(1 % cores))
    unpinned = LocalVllmSettings(pin_cores=False, env={"X": "1"})
    assert "VLLM_CPU_OMP_THREADS_BIND" not in vllm.serve_env(unpinned, 0) and vllm.serve_env(unpinned, 0)["X"] == "1"


def test_the_gpu_environment_serves_the_real_model_with_vllms_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path))
    cmd = LocalTarget(load_environment("local-vllm-gpu")).plan()[0]["command"]
    assert cmd.startswith("vllm serve Qwen/Qwen3-0.6B ") and "--block-size 16" in cmd
    assert "--kv-cache-memory-bytes" not in cmd and "--dtype" not in cmd and "--gpu-memory-utilization 0.4" in cmd


def test_where_vllm_is_found_and_what_is_said_when_it_is_not(tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text("")
    assert vllm.python(LocalVllmSettings(python=str(fake))) == str(fake)
    monkeypatch.setenv("KIT_VLLM_PYTHON", str(fake))
    assert vllm.python(LocalVllmSettings()) == str(fake)
    with pytest.raises(KitError, match=r"does not exist; install vLLM with `make vllm`"):
        vllm.python(LocalVllmSettings(python=str(tmp_path / "missing")))
    monkeypatch.delenv("KIT_VLLM_PYTHON")
    monkeypatch.setattr(vllm.paths, "ROOT", tmp_path)  # no .venv-vllm here
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(KitError, match=r"which is not installed .*make vllm"):
        vllm.python(LocalVllmSettings())
    script = tmp_path / "bin" / "vllm"
    script.parent.mkdir()
    script.write_text("#!/opt/some/python3\nimport sys\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(script.parent))
    assert vllm.python(LocalVllmSettings()) == "/opt/some/python3"  # a vllm command on PATH: its interpreter


def test_without_vllm_check_says_so_and_deploy_starts_nothing(target, monkeypatch):
    monkeypatch.setenv("KIT_VLLM_PYTHON", "/nonexistent/python")
    assert any("make vllm" in problem for problem in target.check())
    with pytest.raises(KitError, match="make vllm"):
        target.deploy(timeout=5, say=lambda _: None)
    assert not target.status().deployed


def test_the_tiny_model_needs_an_interpreter_with_its_libraries(tmp_path):
    # The kit's own environment has no numpy/safetensors/tokenizers: the error says where to get them.
    with pytest.raises(KitError, match="numpy, safetensors and tokenizers"):
        tiny_model.ensure(sys.executable, out=tmp_path / "model")
    assert not (tmp_path / "model").exists()  # nothing half-built is left
    assert tiny_model.fingerprint() == tiny_model.fingerprint() and len(tiny_model.fingerprint()) == 12


LOG = """\
(APIServer pid=1) INFO [api_utils.py:286] non-default args: {'model_tag': '/m'}
(EngineCore pid=2) INFO [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='/m'
(Worker pid=3) INFO [default_loader.py:501] Loading weights took 0.04 seconds
(Worker pid=3) INFO [cpu_model_runner.py:87] Warming up model for the compilation...
(EngineCore pid=2) INFO [kv_cache_utils.py:2327] CPU KV cache size: 8,224 tokens
(APIServer pid=1) INFO [entry.py:140] Starting vLLM server on http://127.0.0.1:8001
"""


@pytest.mark.parametrize("lines,stage", [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)])
def test_startup_stages_are_read_from_the_servers_log(lines, stage):
    assert vllm.stage("".join(LOG.splitlines(keepends=True)[:lines])) == stage


def test_the_vllm_install_declares_the_distribution_vllm_reads(tmp_path):
    from kit.vllm_install import declare_vllm

    info = declare_vllm(tmp_path, say=lambda _: None)
    assert info == tmp_path / "vllm-0.32.0+cpu.dist-info"
    assert "Name: vllm\nVersion: 0.32.0+cpu\n" in (info / "METADATA").read_text()
    assert declare_vllm(tmp_path, say=lambda _: None) is None  # done already: nothing changes
    import importlib.metadata as md

    found = {d.metadata["Name"]: d.version for d in md.distributions(path=[str(tmp_path)])}
    assert found == {"vllm": "0.32.0+cpu"} and "cpu" in found["vllm"]  # what vLLM's platform check asks
    assert Path(info / "RECORD").read_text().count(",,") == 3
