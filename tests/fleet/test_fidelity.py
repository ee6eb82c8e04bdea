"""The virtual clock agrees with the HTTP stack on the same profile, workload, load and seed (a looser
version of the figures in docs/results/fleet.md, which come from ``bench/fleet_bench.py fidelity``)."""

import random

import pytest

from kit.experiments.compare import run_profile
from kit.experiments.workloads import Load, SharedPrefix
from kit.fleet import Fleet, SimConfig, simulate
from kit.manifests.environments import load_environment
from kit.targets import target_for
from kit.targets.processes import port_in_use

SCALE = 20.0  # simulators 20× slower than the model, so the machine keeps up


def free_range(n: int) -> int:
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(20_000, 40_000)
        if not any(port_in_use(q) for q in range(p, p + n + 1)):
            return p
    raise RuntimeError("no free port range")


@pytest.mark.slow
@pytest.mark.exclusive  # the HTTP side's timings are what is compared: beside other tests they drift toward the bounds
def test_virtual_clock_agrees_with_the_http_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path / "state"))
    env = load_environment("local", postfix="fleet-fidelity", overrides={
        "replicas": 4, "local": {"gateway_port": free_range(4), "simulator": {"time_scale": SCALE}}})
    target = target_for(env)
    w = SharedPrefix(groups=8, prompts_per_group=8, system_prompt_len=3000, question_len=100, output_len=16, seed=1)
    load = Load(rate=80 / SCALE, requests=96)  # notebook 04's 80 requests/s of model time
    try:
        http = run_profile(target, "default-plugins", w, load, progress=False).summary
    finally:
        target.destroy(say=lambda _m: None)
    virtual = simulate(w, load, Fleet(replicas=4, profile="default-plugins", sim=SimConfig(
        model=env.model, **env.local.simulator), refresh_interval=env.local.refresh_interval, seed=1)).summary
    print(f"virtual/HTTP TTFT p50 {virtual.ttft_p50_s / http.ttft_p50_s:.2f}, "
          f"p90 {virtual.ttft_p90_s / http.ttft_p90_s:.2f}; hit rate "
          f"{virtual.prefix_cache_hit_rate:.3f} virtual, {http.prefix_cache_hit_rate:.3f} HTTP")
    assert http.errors == virtual.errors == 0
    assert abs(http.prefix_cache_hit_rate - virtual.prefix_cache_hit_rate) < 0.15, (http, virtual)
    assert 0.5 < virtual.ttft_p50_s / http.ttft_p50_s < 2.0, (http, virtual)
    assert 0.4 < virtual.ttft_p90_s / http.ttft_p90_s < 2.5, (http, virtual)
