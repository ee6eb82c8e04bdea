"""Release v0.10 in the gateway: a ``kit gateway`` process (release from the profile or ``--release``) in front of
``kit sim`` processes: the token producer renders at the simulators, the EPP metrics carry llm-d-router
v0.10.0's names (with the deprecated twins), the configured parsers decide what is readable."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.http import ENDPOINT_HEADER
from kit.targets.processes import free_port
from tests.helpers import get_json, metrics_text, post

pytestmark = pytest.mark.slow  # processes: a few seconds each

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
LONG = "Every ticket must say which product, which version and what the customer saw. " * 30
RENDERED = HEAD + """plugins:
- type: token-producer
  parameters: {modelName: Qwen/Qwen3-0.6B}
- type: approx-prefix-cache-producer
- type: prefix-cache-scorer
"""


def value(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_the_optimized_baseline_profile_serves_with_v010_metric_names(sim_factory, gateway_factory):
    a, b = sim_factory(), sim_factory()
    gw = gateway_factory([a.url, b.url], "--config", str(ROOT / "templates/scheduler/optimized-baseline.yaml"))
    for i in range(4):
        status, body, _ = post(gw.url, "/v1/completions", {"prompt": f"{i} {LONG}", "max_tokens": 2})
        assert status == 200 and body["usage"]["completion_tokens"] == 2
    text = metrics_text(gw.url)
    assert value(text, "llm_d_epp_scheduler_e2e_duration_seconds_count") == 4
    assert value(text, "inference_extension_scheduler_e2e_duration_seconds_count") == 4  # deprecated twin
    assert value(text, 'llm_d_epp_scheduler_attempts_total{status="success"}') == 4
    assert "[Deprecated: Use llm_d_epp_scheduler_attempts_total]" in text
    assert get_json(gw.url + "/decisions?limit=1")[0]["weights"] == {"token-load-scorer": 1.0}


def test_the_guides_release_keeps_its_metric_names(sim_factory, gateway_factory):
    gw = gateway_factory([sim_factory().url])
    assert post(gw.url, "/v1/completions", {"prompt": "hi", "max_tokens": 1})[0] == 200
    text = metrics_text(gw.url)
    assert value(text, "inference_extension_scheduler_e2e_duration_seconds_count") == 1
    assert "llm_d_epp_" not in text


def test_the_token_producer_renders_at_the_first_endpoint_and_prefixes_match(sim_factory, gateway_factory,
                                                                                tmp_path):
    config = tmp_path / "rendered.yaml"
    config.write_text(RENDERED)
    a, b = sim_factory(), sim_factory()
    gw = gateway_factory([a.url, b.url], "--config", str(config), "--release", "v0.10")
    status, _, headers = post(gw.url, "/v1/completions", {"prompt": LONG, "max_tokens": 2},
                              headers={"x-request-id": "r1"})
    assert status == 200
    status, _, again = post(gw.url, "/v1/completions", {"prompt": LONG, "max_tokens": 2},
                            headers={"x-request-id": "r2"})
    assert status == 200 and again[ENDPOINT_HEADER] == headers[ENDPOINT_HEADER]
    d = get_json(gw.url + "/decisions/r2")
    picked = next(c for c in d["candidates"] if c["endpoint"] == d["picked"][0])
    assert picked["scores"]["prefix-cache-scorer"] > 0.9  # the rendered tokens' blocks were sent there
    assert value(metrics_text(gw.url), "kit_token_producer_render_failures") == 0


def test_a_failing_render_is_counted_and_the_request_still_served(sim_factory, gateway_factory, tmp_path):
    config = tmp_path / "rendered.yaml"
    config.write_text(RENDERED)
    gw = gateway_factory([sim_factory().url], "--config", str(config), "--release", "v0.10",
                         "--render-url", f"http://127.0.0.1:{free_port()}")
    assert post(gw.url, "/v1/completions", {"prompt": "hi", "max_tokens": 1})[0] == 200
    assert value(metrics_text(gw.url), "kit_token_producer_render_failures") == 1


def test_a_path_no_configured_parser_claims_is_refused(sim_factory, gateway_factory, tmp_path):
    config = tmp_path / "generate-only.yaml"
    config.write_text(HEAD + "plugins:\n- type: vllmhttp-parser\n- type: random-picker\n"
                             "requestHandler:\n  parsers:\n  - pluginRef: vllmhttp-parser\n")
    gw = gateway_factory([sim_factory().url], "--config", str(config), "--release", "v0.10")
    status, body, _ = post(gw.url, "/v1/completions", {"prompt": "hi", "max_tokens": 1})
    assert status == 400 and "no parser registered matching path suffix" in body["error"]["message"]
