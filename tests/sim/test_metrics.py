"""The simulator's Prometheus text: vLLM's names and labels, read back by a Prometheus parser."""

import time

from prometheus_client.parser import text_string_to_metric_families

from kit.sim.config import SimConfig
from kit.sim.engine import Engine
from kit.sim.metrics import SimMetrics
from kit.vllm_metrics import parse_vllm_metrics


def scrape(busy: bool = True, **settings) -> tuple[dict, str]:
    engine = Engine(SimConfig(**settings))
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


def test_lora_requests_info_only_with_lora_enabled_as_vllm_with_no_adapter_loaded():
    assert "vllm:lora_requests_info" not in scrape()[0]  # vLLM's default: LoRA off, no such metric
    before = time.time()
    families, _ = scrape(enable_lora=True)
    [sample] = families["vllm:lora_requests_info"].samples
    assert sample.labels == {"max_lora": "1", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    assert before <= sample.value <= time.time()  # the time of the latest engine step


def test_series_vllm_creates_before_any_request_are_there_at_zero():
    families, _ = scrape(busy=False)
    reasons = {s.labels["finished_reason"]: s.value for s in families["vllm:request_success"].samples
               if s.name.endswith("_total")}
    assert reasons == dict.fromkeys(("stop", "length", "abort", "error", "repetition"), 0.0)
    sources = {s.labels["source"] for s in families["vllm:prompt_tokens_by_source"].samples}
    assert sources == {"local_compute", "local_cache_hit", "external_kv_transfer"}
    counts = {s.name for f in families.values() for s in f.samples if s.name.endswith("_count") and s.value == 0}
    assert {"vllm:time_to_first_token_seconds_count", "vllm:request_prefill_time_seconds_count",
            "vllm:iteration_tokens_total_count"} <= counts
    [info] = families["vllm:cache_config_info"].samples
    assert len(info.labels) == 37 and info.labels["prefix_caching_hash_algo"] == "builtin"
    assert (info.labels["block_size"], info.labels["num_gpu_blocks"]) == ("16", "40000")


def test_per_request_histograms_follow_a_request_through_its_phases():
    engine = Engine(SimConfig())
    metrics = SimMetrics(engine, "Qwen/Qwen3-0.6B")
    engine.observer = metrics
    engine.submit(list(range(40)), 4)
    while engine.running or engine.waiting:
        engine.complete(engine.schedule())
    values = {(f.name, s.name): s.value for f in text_string_to_metric_families(metrics.render().decode())
              for s in f.samples}
    for name in ("request_prefill_time_seconds", "request_decode_time_seconds", "request_inference_time_seconds",
                 "request_time_per_output_token_seconds", "request_prefill_kv_computed_tokens",
                 "request_params_max_tokens", "request_num_preemptions"):
        assert values[(f"vllm:{name}", f"vllm:{name}_count")] == 1.0, name
    assert values[("vllm:request_prefill_kv_computed_tokens", "vllm:request_prefill_kv_computed_tokens_sum")] == 40
    assert values[("vllm:request_params_max_tokens", "vllm:request_params_max_tokens_sum")] == 4


def test_the_kits_parser_reads_the_labelled_series():
    _, text = scrape()
    m = parse_vllm_metrics(text)
    assert (m.running, m.waiting, m.block_size, m.num_gpu_blocks) == (1.0, 0.0, 16, 40000)
    assert m.prefix_queries == 40.0 and m.generation_tokens == 3.0
