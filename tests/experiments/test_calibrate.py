"""kit calibrate: the fit recovers a known step model, profiles load into the simulator, and a live simulator
with known coefficients is measured back through its API."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from kit.experiments.calibrate import DECODE_B, DECODE_L, PREFILL_N, Point, calibrate, coefficients, fit, predicted
from kit.sim.config import COEFFICIENTS, SimConfig

KNOWN = {"step_overhead_ms": 8.0, "prefill_us_per_token": 20.0, "prefill_ns_per_token_pair": 2.0,
         "decode_us_per_seq": 300.0, "decode_ns_per_context_token": 200.0, "decode_ns_per_longest_context_token": 900.0}


def shapes() -> list[Point]:
    return ([Point("prefill", n, 1, 0.0) for n in PREFILL_N]
            + [Point("decode", length + 24, b, 0.0) for length in DECODE_L for b in DECODE_B])


def test_the_fit_recovers_a_known_step_model_and_request_overhead():
    cfg = SimConfig(**KNOWN)
    points = [Point(p.kind, p.tokens, p.seqs, predicted(cfg, p, request_s=0.004)) for p in shapes()]
    x = fit(points)
    got = coefficients(x)
    for name, value in KNOWN.items():
        assert got[name] == pytest.approx(value, rel=1e-6), name
    assert x[6] == pytest.approx(0.004, rel=1e-6)


def test_no_coefficient_comes_out_negative():
    # Decode steps that get faster with context cannot be fitted with a positive read cost: it is 0, not negative.
    points = [Point("prefill", n, 1, 0.010 + 1e-5 * n) for n in PREFILL_N]
    points += [Point("decode", length, 4, 0.012 - 1e-7 * length) for length in (100, 1000, 4000)]
    got = coefficients(fit(points))
    assert all(v >= 0 for v in got.values()) and got["decode_ns_per_context_token"] == 0


def test_a_profile_sets_the_simulators_coefficients_and_flags_still_win(tmp_path):
    f = tmp_path / "cpu.yaml"
    f.write_text(yaml.safe_dump({"name": "cpu", "coefficients": KNOWN}))
    cfg = SimConfig(hardware=str(f))
    assert {k: getattr(cfg, k) for k in COEFFICIENTS} == KNOWN
    assert SimConfig(hardware=str(f), step_overhead_ms=1.0).step_overhead_ms == 1.0
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump({"coefficients": {"step_overhead_ms": 1}}))
    with pytest.raises(ValidationError, match="prefill_us_per_token"):
        SimConfig(hardware=str(tmp_path / "partial.yaml"))
    with pytest.raises(ValidationError, match="h100, h200 or a profile file"):
        SimConfig(hardware=str(tmp_path / "missing.yaml"))


@pytest.mark.slow
def test_a_live_simulator_is_measured_back_through_its_api(sim_factory, tmp_path):
    """The decode coefficients come back within a quarter (the machine is shared and noisy); the prefill
    points carry the server's own HTTP cost, which the fit reports as request overhead."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in KNOWN.items()]
    sim = sim_factory(*flags, "--num-gpu-blocks", "4000", "--max-model-len", "8192")
    out = tmp_path / "measured.yaml"
    profile = calibrate(sim.url, out, repeat=3, say=lambda _: None)
    got = profile["coefficients"]
    assert got["step_overhead_ms"] == pytest.approx(KNOWN["step_overhead_ms"], rel=0.25)
    assert got["decode_us_per_seq"] == pytest.approx(KNOWN["decode_us_per_seq"], rel=0.5)
    assert profile["request_overhead_ms"] > 0 and len(profile["points"]) == len(shapes()) - 0
    assert SimConfig(hardware=str(out)).step_overhead_ms == got["step_overhead_ms"]  # kit sim --hardware FILE
