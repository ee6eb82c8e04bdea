"""The gateway over real HTTP: a ``kit gateway`` process in front of ``kit sim`` processes."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import pytest

from kit.experiments.client import make_body
from kit.http import ENDPOINT_HEADER
from kit.targets.processes import free_port, healthy, spawn, stop
from tests.helpers import burst, get_json, metrics, metrics_text, post

LONG = "Every ticket must say which product, which version and what the customer saw. " * 30


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def pair(sim_factory, gateway_factory):
    a, b = sim_factory(), sim_factory()
    return gateway_factory([a.url, b.url]), a, b


def test_proxies_completions_and_chat_and_says_who_served(pair):
    gw, a, b = pair
    names = {a.url.split("//")[1], b.url.split("//")[1]}
    status, body, headers = post(gw.url, "/v1/completions", {"prompt": "hello", "max_tokens": 3})
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    assert headers[ENDPOINT_HEADER] in names
    [chat] = burst(gw.url, [make_body("hi", chat=True, stream=True, max_tokens=4)])
    assert chat.ok and chat.completion_tokens == 4 and chat.endpoint in names


def test_streams_pass_through_as_they_arrive(sim_factory, gateway_factory):
    # Steps of 250 ms. A buffered stream arrives at once (every gap ~0); one passed through keeps the steps'
    # gaps, except where a busy machine stalls a process for a few hundred milliseconds and a token or two pile
    # up behind it: hence the median gap.
    sim = sim_factory("--step-overhead-ms", "250")
    gw = gateway_factory([sim.url])
    [res] = burst(gw.url, [make_body("hi", chat=False, stream=True, max_tokens=8, ignore_eos=True)])
    assert res.ok and len(res.itls) == 7
    assert res.ttft < 0.5 * res.e2e  # the first token was not held back until the end
    assert statistics.median(res.itls) > 0.1, res.itls


def test_every_decision_is_explained(pair):
    gw, _, _ = pair
    status, _, headers = post(gw.url, "/v1/completions", {"prompt": LONG, "max_tokens": 2},
                              headers={"x-request-id": "req-42"})
    assert status == 200 and headers["x-request-id"] == "req-42"
    d = get_json(gw.url + "/decisions/req-42")
    assert d["picked"] == [headers[ENDPOINT_HEADER]]
    assert d["weights"] == {"queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}
    for c in d["candidates"]:
        assert set(c["scores"]) == set(d["weights"])
        assert c["total"] == pytest.approx(sum(d["weights"][k] * v for k, v in c["scores"].items()), abs=1e-5)
    # The same prompt again: the prefix scorer now prefers the endpoint that served it.
    _, _, again = post(gw.url, "/v1/completions", {"prompt": LONG, "max_tokens": 2}, headers={"x-request-id": "r2"})
    d2 = get_json(gw.url + "/decisions/r2")
    assert again[ENDPOINT_HEADER] == headers[ENDPOINT_HEADER]
    picked = next(c for c in d2["candidates"] if c["endpoint"] == d2["picked"][0])
    assert picked["scores"]["prefix-cache-scorer"] == 1.0
    assert len(get_json(gw.url + "/decisions?limit=5")) == 2


def test_models_health_config_and_metrics(pair):
    gw, a, _ = pair
    assert [m["id"] for m in get_json(gw.url + "/v1/models")["data"]] == ["Qwen/Qwen3-0.6B"]
    assert healthy(gw.url)
    assert get_json(gw.url + "/config")["config"]["kind"] == "EndpointPickerConfig"
    burst(gw.url, [make_body(f"q{i}", chat=False, stream=False, max_tokens=2) for i in range(6)])
    text = metrics_text(gw.url)
    served = sum(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("kit_gateway_requests_total{") and 'code="200"' in line)
    assert served == 6
    assert "inference_extension_scheduler_e2e_duration_seconds_count 6.0" in text
    eps = get_json(gw.url + "/endpoints")
    assert {e["url"] for e in eps} >= {a.url} and all(e["healthy"] for e in eps)


BAD = [
    ("not-json", "/v1/completions", b"{nope", 400),
    ("not-object", "/v1/completions", b"[1]", 400),
    ("no-prompt", "/v1/completions", b'{"max_tokens": 2}', 400),
    ("no-messages", "/v1/chat/completions", b'{"prompt": "x"}', 400),
    ("unknown-model", "/v1/completions", b'{"prompt": "x", "model": "llama-99"}', 404),
    ("server-side-400", "/v1/completions", b'{"prompt": "x", "max_tokens": -3}', 400),
    ("too-large", "/v1/completions", b'{"prompt": "' + b"a" * (17 * 2**20) + b'"}', 413),
]


@pytest.mark.parametrize(("path", "raw", "status"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(pair, path, raw, status):
    gw, _, _ = pair
    got, body, _ = post(gw.url, path, raw=raw)
    assert got == status and body["error"]["code"] == status and body["error"]["message"]
    assert post(gw.url, "/v1/completions", {"prompt": "fine", "max_tokens": 1})[0] == 200


def test_a_failing_endpoint_is_retried_elsewhere(sim_factory, gateway_factory):
    bad, good = sim_factory("--fail-rate", "1"), sim_factory()
    gw = gateway_factory([bad.url, good.url], "--config", "templates/scheduler/round-robin.yaml")
    results = burst(gw.url, [make_body(f"q{i}", chat=False, stream=True, max_tokens=2) for i in range(10)])
    assert all(r.ok for r in results)
    assert {r.endpoint for r in results} == {good.url.split("//")[1]}
    assert "kit_gateway_retries_total" in metrics_text(gw.url)


def test_dead_endpoints_leave_rotation_and_come_back(sim_factory, gateway_factory, tmp_path):
    live = sim_factory()
    port = free_port()
    dead_url = f"http://127.0.0.1:{port}"
    gw = gateway_factory([dead_url, live.url], "--config", "templates/scheduler/round-robin.yaml")
    results = burst(gw.url, [make_body("x", chat=False, stream=False, max_tokens=1) for _ in range(6)])
    assert all(r.ok for r in results) and {r.endpoint for r in results} == {live.url.split("//")[1]}
    revived = spawn(["sim", "--port", str(port)], dead_url, tmp_path / "revived.log", role="sim")
    try:
        assert wait_for(lambda: all(e["healthy"] for e in get_json(gw.url + "/endpoints")), 3.0)
        results = burst(gw.url, [make_body("x", chat=False, stream=False, max_tokens=1) for _ in range(6)])
        assert {r.endpoint for r in results} == {f"127.0.0.1:{port}", live.url.split("//")[1]}
    finally:
        stop(revived)


def test_no_endpoint_left_is_503(sim_factory, gateway_factory):
    gw = gateway_factory([f"http://127.0.0.1:{free_port()}"])
    status, body, _ = post(gw.url, "/v1/completions", {"prompt": "x"})
    assert status == 503 and "no healthy endpoint" in body["error"]["message"]


def test_client_disconnect_cancels_the_upstream_request(sim_factory, gateway_factory):
    sim = sim_factory("--step-overhead-ms", "50")
    gw = gateway_factory([sim.url])

    async def read_one_chunk_then_leave():
        async with aiohttp.ClientSession() as s:
            body = make_body("hi", chat=False, stream=True, max_tokens=500, ignore_eos=True)
            async with s.post(gw.url + "/v1/completions", json=body) as r:
                await r.content.readline()

    asyncio.run(read_one_chunk_then_leave())
    assert wait_for(lambda: metrics(sim.url).running == 0, 2.0)  # 500 tokens would take 25 s
    assert metrics(sim.url).requests_ok == 0


def test_a_stream_broken_mid_answer_is_cut_not_retried(sim_factory, gateway_factory):
    sim = sim_factory("--drop-rate", "1")
    gw = gateway_factory([sim.url])
    [res] = burst(gw.url, [make_body("hi", chat=False, stream=True, max_tokens=20, ignore_eos=True)])
    assert res.status == 200 and res.text and not res.ok
    assert 'code="broken"' in metrics_text(gw.url)


def test_sheddable_requests_get_429_when_the_pool_is_saturated(sim_factory, gateway_factory):
    sim = sim_factory("--max-num-seqs", "1", "--step-overhead-ms", "50")
    gw = gateway_factory([sim.url], "--objective", "batch=-1")

    async def scenario():
        async with aiohttp.ClientSession() as s:
            body = make_body("fill", chat=False, stream=False, max_tokens=200, ignore_eos=True)
            fillers = [asyncio.create_task(s.post(gw.url + "/v1/completions", json=body)) for _ in range(8)]
            await asyncio.sleep(0.5)  # let the queue build and the metrics refresh
            hdr = {"x-gateway-inference-objective": "batch"}
            short = make_body("now", chat=False, stream=False, max_tokens=1)
            async with s.post(gw.url + "/v1/completions", json=short, headers=hdr) as r:
                shed = r.status
            for t in fillers:
                t.cancel()
            await asyncio.gather(*fillers, return_exceptions=True)
            return shed

    assert asyncio.run(scenario()) == 429
    # Once the queue drains, the same request is admitted.
    assert wait_for(lambda: metrics(sim.url).waiting == 0, 5.0)
    time.sleep(0.2)
    status, _, _ = post(gw.url, "/v1/completions", {"prompt": "now", "max_tokens": 1},
                        headers={"x-gateway-inference-objective": "batch"})
    assert status == 200


def test_invalid_scheduler_config_stops_the_gateway_with_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
                   "plugins: [{type: queue-scorrer}]\n")
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "kit", "gateway", "--endpoints", "http://127.0.0.1:1",
                          "--config", str(bad), "--port", str(free_port())], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 1 and "plugins[0].type: unknown plugin type 'queue-scorrer'" in res.stderr


def test_plugin_response_headers_reach_the_client(sim_factory, gateway_factory, tmp_path):
    """Session affinity writes its token through the picker's response-header hook, and honours it."""
    cfg = tmp_path / "affinity.yaml"
    cfg.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
                   "plugins: [{type: session-affinity-scorer}]\n")
    gw = gateway_factory([sim_factory().url, sim_factory().url], "--config", str(cfg))
    _, _, first = post(gw.url, "/v1/completions", {"prompt": "hello", "max_tokens": 1})
    token = first["x-session-token"]
    served = {post(gw.url, "/v1/completions", {"prompt": f"q{i}", "max_tokens": 1},
                   headers={"x-session-token": token})[2][ENDPOINT_HEADER] for i in range(6)}
    assert served == {first[ENDPOINT_HEADER]}
    _, _, default = post(gateway_factory([sim_factory().url]).url, "/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert "x-session-token" not in {k.lower() for k in default}  # not configured, not written
