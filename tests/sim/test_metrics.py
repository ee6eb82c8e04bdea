"""The simulator's Prometheus text: vLLM's names and labels, read back by a Prometheus parser."""

import time

from prometheus_client.parser import text_string_to_metric_families

from kit.sim.config import SimConfig
from kit.sim.engine import Engine
from kit.sim.metrics import SimMetrics
from kit.vllm_metrics import parse_vllm_metrics


def scrape(busy: bool = True) -> tuple[dict, str]:
    engine = Engine(SimConfig())
    metrics = SimMetrics(engine, "Qwen/Qwen3-0.6B")
    engine.observer = metrics
    if busy:
        engine.submit(list(range(40)), 4)
        for _ in range(3):
            engine.complete(engine.schedule())
    text = metrics.render().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def test_every_vllm_series_carries_engine_and_model_name_as_vllm_does():
    families, _ = scrape()
    samples = [s for name, f in families.items() if name.startswith("vllm:") for s in f.samples]
    assert samples
    for s in samples:
        if s.name == "vllm:lora_requests_info":
            continue
        assert s.labels.get("engine") == "0", s
        if s.name != "vllm:cache_config_info":
            assert s.labels.get("model_name") == "Qwen/Qwen3-0.6B", s


def test_lora_requests_info_as_vllm_with_no_adapter_loaded():
    before = time.time()
    families, _ = scrape()
    [sample] = families["vllm:lora_requests_info"].samples
    assert sample.labels == {"max_lora": "1", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    assert before <= sample.value <= time.time()  # the time of the latest engine step


def test_the_kits_parser_reads_the_labelled_series():
    _, text = scrape()
    m = parse_vllm_metrics(text)
    assert (m.running, m.waiting, m.block_size, m.num_gpu_blocks) == (1.0, 0.0, 16, 40000)
    assert m.prefix_queries == 40.0 and m.generation_tokens == 3.0
