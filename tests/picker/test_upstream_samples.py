"""Upstream's sample EndpointPickerConfigs of the guide's era (tests/fixtures/upstream_epp_configs, all but the
v0.10.0 folder, which test_upstream_samples_v010 loads as release v0.10), loaded as release v0.7: each one
whose plugins the kit implements loads and schedules; each other fails with the error naming what is missing.

Data-driven from the registry: when a plugin is added to ``BUILTINS``, the samples that use it move
from the second group to the first without a change here.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kit.errors import ConfigError
from kit.picker import Endpoint, InferenceRequest, load_picker_file
from kit.picker.registry import default
from kit.vllm_metrics import EndpointMetrics

SAMPLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "fixtures/upstream_epp_configs").glob("*/*.yaml")
                 if p.parent.name != "v0.10.0")
IMPLEMENTED = set(default().types())


def missing(path: Path) -> list[str]:
    return [p["type"] for p in yaml.safe_load(path.read_text()).get("plugins") or [] if p["type"] not in IMPLEMENTED]


LOADABLE = [p for p in SAMPLES if not missing(p)]
UNSUPPORTED = [p for p in SAMPLES if missing(p)]


def sample_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def pool(clock: Clock) -> list[Endpoint]:
    """Three local endpoints with fresh metrics and vLLM's cache config, one of them busy."""
    return [Endpoint(name=f"127.0.0.1:{8001 + i}", url=f"http://127.0.0.1:{8001 + i}", updated=clock(),
                     metrics=EndpointMetrics(waiting=w, kv_usage=kv, block_size=16, num_gpu_blocks=512))
            for i, (w, kv) in enumerate([(0, 0.1), (4, 0.7), (1, 0.3)])]


def test_every_upstream_version_is_present():
    assert {p.parent.name for p in SAMPLES} == {"v0.7.1", "v0.8.0", "main-520af478"}
    assert len(SAMPLES) == 34


@pytest.mark.parametrize("path", LOADABLE, ids=sample_id)
def test_a_sample_the_kit_implements_loads_and_schedules(path):
    clock = Clock()
    cfg = load_picker_file(path, clock=clock)
    sched, eps = cfg.scheduler, pool(clock)
    names = {ep.name for ep in eps}
    for i, prompt in enumerate(["system prompt " * 40 + "first question", "system prompt " * 40 + "second"]):
        req = InferenceRequest(model="Qwen/Qwen3-0.6B", prompt=prompt, request_id=str(i))
        assert sched.admit(req, eps) is None
        decision, state = sched.schedule(req, eps)
        assert decision.picked and set(decision.picked) <= names
        ep = state["picked"][0]
        sched.pre_request(state, req, ep)
        sched.response_headers(req, ep)
        sched.response_complete(req, ep)


@pytest.mark.parametrize("path", UNSUPPORTED, ids=sample_id)
def test_a_sample_with_a_plugin_the_kit_lacks_fails_clearly(path):
    with pytest.raises(ConfigError) as err:
        load_picker_file(path)
    message = str(err.value)
    for plugin_type in missing(path):
        assert f"unknown plugin type {plugin_type!r}: the kit's picker does not implement it" in message
    assert "implemented: active-request-scorer, approx-prefix-cache-producer" in message


def test_the_cli_reports_a_missing_plugin_without_a_traceback():
    path = next(p for p in UNSUPPORTED if p.name == "pd-epp-config.yaml")
    proc = subprocess.run([sys.executable, "-m", "kit", "bench-picker", "--config", str(path), "--requests", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "unknown plugin type 'disagg-profile-handler': the kit's picker does not implement it" in proc.stderr


def test_the_loadable_count():
    """The count docs/explanation/scheduling.md quotes; it only grows as plugins are added."""
    assert len(LOADABLE) >= 19
