"""The local target wires the simulators' KV-cache events to the gateway when the profile uses the precise
scorer: real processes, real ZMQ, and the picker's decisions follow what the servers really cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kit import paths
from kit.manifests.environments import load_environment
from kit.targets.local import LocalTarget
from tests.helpers import get_json, post
from tests.targets.test_local import kit, status
from tests.targets.test_local import local_env as local_env  # the fixture

PRECISE = str(paths.scheduler_profile("precise"))
pytestmark = pytest.mark.slow


def test_the_plan_wires_events_only_for_the_precise_scorer(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path))
    target = LocalTarget(load_environment("local", overrides={"local": {"gateway_port": 41000}}))
    plain = target.plan()
    assert not any("--kv-events-config" in p["command"] for p in plain)
    sims, gateway = target.plan(PRECISE)[:-1], target.plan(PRECISE)[-1]
    for i, p in enumerate(sims):
        events = json.loads(p["command"].split("--kv-events-config ", 1)[1].split(" ")[0])
        assert events == {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:41003",
                          "topic": f"kv@127.0.0.1:{41001 + i}@Qwen/Qwen3-0.6B"}
    config = gateway["command"].split("--config ", 1)[1].split(" ")[0]
    text = Path(config).read_text()
    assert "tcp://127.0.0.1:41003" in text and "discoverPods: false" in text


def first_of_a_group(local_env, system: str, *flags: str) -> tuple[str, str]:
    """Deploy the precise profile, send the group's first request; the gateway and the server that took it."""
    env, port = local_env
    res = kit("deploy", "-e", "local", "--port", str(port), "--scheduler-config", PRECISE, *flags, env=env)
    assert res.returncode == 0, res.stderr
    gw = status(env)["gateway"]
    first = post(gw, "/v1/completions", {"prompt": system + "First question?", "max_tokens": 4})
    time.sleep(0.5)  # the server's BlockStored reaches the picker(s)
    return gw, first[2]["x-gateway-destination-endpoint"]


def test_a_group_follows_the_server_that_really_holds_its_prefix(local_env):
    system = "You are the support assistant of a large hardware store. Answer politely, briefly and precisely. " * 4
    gw, served = first_of_a_group(local_env, system)
    for question in ("Do you sell paint?", "When do you open?", "Can I return a drill?"):
        status_, _, headers = post(gw, "/v1/completions", {"prompt": system + question, "max_tokens": 4})
        assert status_ == 200
        decision = get_json(f"{gw}/decisions/{headers['x-request-id']}")
        scores = {c["endpoint"]: c["scores"]["precise-prefix-cache-scorer"] for c in decision["candidates"]}
        assert scores[served] == 1.0 and headers["x-gateway-destination-endpoint"] == served, scores


def test_picker_replicas_in_the_gateway_all_follow_the_servers_events(local_env):
    """Three pickers split the requests; each has its own index, and every index reads every server's events,
    so whichever picker takes a request, it goes where the prefix really is."""
    system = "You are the librarian of a small town. Answer in one sentence, kindly and with care. " * 4
    gw, served = first_of_a_group(local_env, system, "--set", "local.picker_replicas=3")
    replicas = set()
    for i in range(12):
        status_, _, headers = post(gw, "/v1/completions", {"prompt": system + f"Question {i}?", "max_tokens": 4})
        assert status_ == 200 and headers["x-gateway-destination-endpoint"] == served
        replicas.add(get_json(f"{gw}/decisions/{headers['x-request-id']}")["replica"])
    assert len(replicas) > 1  # 12 requests did not all go to one of three pickers


def test_release_v010_precise_routing_follows_the_servers_events(local_env):
    """llm-d-router v0.10's precise profile on the local stack: the token producer renders each prompt on a
    server, the precise producer indexes the servers' events (the wired copy keeps its release line), and the
    affinity filter keeps a group on the server that really holds its prefix, even one the gateway never
    sent it to."""
    env, port = local_env
    profile = str(paths.scheduler_profile("precise-prefix-cache-routing"))
    res = kit("deploy", "-e", "local", "--port", str(port), "--scheduler-config", profile, env=env)
    assert res.returncode == 0, res.stderr
    gw, holder = status(env)["gateway"], f"127.0.0.1:{port + 2}"
    system = "You are the concierge of a quiet hotel by the sea. Answer warmly and in few words, always. " * 4
    assert post(f"http://{holder}", "/v1/completions", {"prompt": system + "Breakfast?", "max_tokens": 4})[0] == 200
    time.sleep(0.5)  # the server's BlockStored reaches the picker
    for question in ("Is there a pool?", "When is check-out?", "Can I bring a dog?"):
        status_, _, headers = post(gw, "/v1/completions", {"prompt": system + question, "max_tokens": 4})
        assert status_ == 200 and headers["x-gateway-destination-endpoint"] == holder
        decision = get_json(f"{gw}/decisions/{headers['x-request-id']}")
        kept = [c["endpoint"] for c in decision["candidates"] if c["filtered_by"] is None]
        assert kept == [holder], decision  # the affinity filter kept only the server holding the prefix
