"""End to end on the local stack: four simulators behind the gateway, a shared-prefix workload."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from kit.experiments.loadgen import run_workload
from kit.experiments.workloads import Load, SharedPrefix
from kit.manifests.environments import load_environment, parse_set
from kit.targets.local import LocalTarget
from kit.targets.processes import free_port_block
from tests.helpers import get_json

# Sized so that caches and queues matter: 8 system prompts of 3,000 tokens are 24k tokens, but each
# simulator holds 8k (512 blocks of 16), so only routing that keeps a group on one server keeps it cached.
WORKLOAD = SharedPrefix(groups=8, prompts_per_group=8, system_prompt_len=3000, question_len=100, output_len=16,
                        seed=7)


@pytest.fixture
def stack(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path / "state"))
    port = free_port_block(6)
    env = load_environment("local", overrides=parse_set(
        ["local.simulator.num_gpu_blocks=512", "replicas=4", f"local.gateway_port={port}"]))
    target = LocalTarget(env)

    def deploy(profile: str) -> str:
        st = target.deploy(f"templates/scheduler/{profile}.yaml", say=lambda _m: None)
        assert target.reset_caches()  # each profile starts cold
        return st.detail["gateway"]

    yield target, deploy
    target.destroy(say=lambda _m: None)


@pytest.mark.slow
def test_the_default_profile_beats_random_on_hit_rate_and_ttft(stack):
    _, deploy = stack
    load = Load(rate=20, requests=128)
    summaries = {}
    for profile in ("random", "default-plugins"):
        summaries[profile] = run_workload(deploy(profile), WORKLOAD, load, progress=False).summary()
    rnd, dflt = summaries["random"], summaries["default-plugins"]
    assert rnd.errors == 0 and dflt.errors == 0
    assert dflt.prefix_cache_hit_rate >= 0.6
    assert dflt.prefix_cache_hit_rate >= rnd.prefix_cache_hit_rate + 0.25, (dflt, rnd)
    assert dflt.ttft_p90_s < rnd.ttft_p90_s, (dflt.ttft_p90_s, rnd.ttft_p90_s)
    assert len(dflt.per_endpoint) == 4


@pytest.mark.slow
def test_killing_a_simulator_mid_run_loses_no_request_that_had_not_started(stack):
    target, deploy = stack
    gateway = deploy("default-plugins")
    victim = target.status().detail["processes"][2]
    victim_name = victim["url"].split("//")[1]
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(run=run_workload(
        gateway, WORKLOAD, Load(concurrency=16, requests=240), progress=False)))
    thread.start()
    time.sleep(2.0)
    killed_at = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    thread.join(timeout=240)
    run = box["run"]
    failed = [r for r in run.results if not r.ok]
    # Only requests that were already streaming from the killed server may fail, and only mid-stream.
    assert all(r.status == 200 and r.endpoint == victim_name and r.text for r in failed), failed
    assert len(failed) <= 16
    assert sum(r.ok for r in run.results) >= 240 - len(failed)
    decisions = get_json(gateway + "/decisions?limit=2000")
    late = [d for d in decisions if d["at"] > killed_at + 1.0]
    assert late, "the run should outlast the kill by more than a second"
    assert all(victim_name not in d["picked"] for d in late)
    eps = {e["name"]: e["healthy"] for e in get_json(gateway + "/endpoints")}
    assert eps[victim_name] is False
