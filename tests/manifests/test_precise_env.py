"""The ``precise`` environment renders what upstream's precise-prefix-cache-aware guide deploys."""

from __future__ import annotations

import json

import yaml

from kit.manifests.environments import load_environment
from kit.manifests.render import render
from kit.picker import load_picker_config


def test_vllm_publishes_kv_events_to_the_epps_port_with_the_shared_seed_and_block_size():
    r = render(load_environment("precise", namespace="ns1", postfix="kv"))
    objects = {(o["kind"], o["metadata"]["name"]): o for o in r.objects}
    decode = next(o for (k, n), o in objects.items() if k == "Deployment" and n.endswith("-decode"))
    vllm = decode["spec"]["template"]["spec"]["containers"][0]
    args = vllm["args"]
    events = json.loads(args[args.index("--kv-events-config") + 1])
    epp = next(n for (k, n) in objects if k == "Deployment" and n.endswith("-epp"))
    assert events == {"enable_kv_cache_events": True, "publisher": "zmq",
                      "endpoint": f"tcp://{epp}.ns1.svc.cluster.local:5557",
                      "topic": "kv@$(POD_IP):8000@Qwen/Qwen3-0.6B"}
    env = {e["name"]: e for e in vllm["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PYTHONHASHSEED"]["value"] == "42"
    assert args[args.index("--prefix-caching-hash-algo") + 1] == "sha256_cbor"
    block_size = int(args[args.index("--block-size") + 1])

    config = yaml.safe_load(r.plugins_config)
    precise = next(p for p in config["plugins"] if p["type"] == "precise-prefix-cache-scorer")["parameters"]
    assert precise["tokenProcessorConfig"] == {"blockSize": block_size, "hashSeed": env["PYTHONHASHSEED"]["value"]}
    assert precise["kvEventsConfig"]["zmqEndpoint"] == "tcp://*:5557" and not precise["kvEventsConfig"]["discoverPods"]
    assert load_picker_config(r.plugins_config).warnings == []

    service, pod = objects[("Service", epp)], objects[("Deployment", epp)]["spec"]["template"]["spec"]
    assert {"name": "zmq", "port": 5557, "targetPort": 5557, "protocol": "TCP"} in service["spec"]["ports"]
    assert {"name": "zmq", "containerPort": 5557, "protocol": "TCP"} in pod["containers"][0]["ports"]


def test_without_the_precise_scorer_nothing_about_events_is_rendered():
    r = render(load_environment("istio"))
    text = yaml.safe_dump_all(r.objects)
    assert "kv-events-config" not in text and "5557" not in text and "POD_IP" not in text
