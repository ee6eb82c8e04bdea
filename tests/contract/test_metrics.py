"""``/metrics``: the names and labels the picker, the notebooks and vLLM dashboards read, and the prefix-cache
counters, on the simulator and on real vLLM."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.contract.conftest import BLOCK_SIZE, MODEL, Server
from tests.helpers import metrics, metrics_text, post

# What the kit reads (kit.vllm_metrics: the picker's refresh, results, plots) and what the simulator offers of
# vLLM 0.32's own series; each with vLLM's labels.
SERIES = {
    "vllm:num_requests_running": set(), "vllm:num_requests_waiting": set(), "vllm:kv_cache_usage_perc": set(),
    "vllm:num_requests_waiting_by_reason": {"reason"}, "vllm:engine_sleep_state": {"sleep_state"},
    "vllm:prefix_cache_queries_total": set(), "vllm:prefix_cache_hits_total": set(),
    "vllm:prompt_tokens_total": set(), "vllm:prompt_tokens_cached_total": set(),
    "vllm:prompt_tokens_by_source_total": {"source"}, "vllm:generation_tokens_total": set(),
    "vllm:num_preemptions_total": set(), "vllm:request_success_total": {"finished_reason"},
    **{f"vllm:{h}_count": set() for h in (
        "time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
        "request_queue_time_seconds", "request_inference_time_seconds", "request_prefill_time_seconds",
        "request_decode_time_seconds", "request_time_per_output_token_seconds", "request_prompt_tokens",
        "request_generation_tokens", "request_prefill_kv_computed_tokens", "request_params_max_tokens",
        "request_max_num_generation_tokens", "request_params_n", "request_num_preemptions",
        "iteration_tokens_total")},
}
# vLLM 0.32.0's labels of vllm:cache_config_info (one engine, no LoRA).
CACHE_CONFIG_LABELS = {
    "_block_size_resolved", "block_size", "cache_dtype", "cache_hit_alignment_tokens",
    "effective_attention_block_size", "enable_mamba_shared_prefix_checkpoint", "enable_prefix_caching", "engine",
    "gpu_memory_utilization", "hash_block_size", "is_attention_free", "kv_cache_dtype_skip_layers", "kv_cache_layout",
    "kv_cache_max_concurrency", "kv_cache_memory_bytes", "kv_cache_size_tokens", "kv_offloading_backend",
    "kv_offloading_size", "kv_sharing_fast_prefill", "mamba_block_size", "mamba_cache_dtype", "mamba_cache_mode",
    "mamba_page_size_padded", "mamba_ssm_cache_dtype", "num_cpu_blocks", "num_gpu_blocks", "num_gpu_blocks_override",
    "prefix_cache_retention_interval", "prefix_caching_hash_algo", "prefix_match_unit", "replayssm_buffer_len",
    "skip_page_size_padded", "sliding_window", "swa_bounded_replay", "use_kda_recoverssm", "use_replayssm",
    "user_specified_block_size"}


def samples(url: str) -> list:
    return [s for f in text_string_to_metric_families(metrics_text(url)) for s in f.samples
            if s.name.startswith("vllm:")]


def test_the_series_the_kit_reads_with_vllms_labels(server: Server):
    found: dict[str, list[dict]] = {}
    for s in samples(server.url):
        found.setdefault(s.name, []).append(s.labels)
    for name, extra in SERIES.items():
        assert name in found, name
        for labels in found[name]:
            assert set(labels) == {"model_name", "engine", *extra}, (name, labels)
            assert labels["model_name"] == MODEL and labels["engine"] == "0"
    reasons = {labels["finished_reason"] for labels in found["vllm:request_success_total"]}
    assert reasons == {"stop", "length", "abort", "error", "repetition"}  # each created up front
    assert {labels["source"] for labels in found["vllm:prompt_tokens_by_source_total"]} == {
        "local_compute", "local_cache_hit", "external_kv_transfer"}
    assert "vllm:lora_requests_info" not in found  # only with LoRA enabled


def test_cache_config_info_and_the_block_size_the_picker_reads(server: Server):
    [info] = [s for s in samples(server.url) if s.name == "vllm:cache_config_info"]
    assert set(info.labels) == CACHE_CONFIG_LABELS
    assert info.labels["block_size"] == str(BLOCK_SIZE) and info.labels["enable_prefix_caching"] == "True"
    assert info.labels["prefix_caching_hash_algo"] == "sha256" and info.labels["engine"] == "0"
    m = metrics(server.url)
    assert m.block_size == BLOCK_SIZE and m.num_gpu_blocks is not None and m.num_gpu_blocks >= 256


def test_prefix_cache_counters_count_tokens_as_vllm_does(server: Server):
    """A repeated prompt hits its full blocks but the last token's (vLLM always computes the last token); the
    counters move by the prompt's tokens (queries) and the hits, and the answer reports the same hits."""
    prompt = "Report the status of the cluster: memory, network, region and index values. " * 12
    before = metrics(server.url)
    first = post(server.url, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 1})[1]["usage"]
    second = post(server.url, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 1})[1]["usage"]
    after = metrics(server.url)
    n = first["prompt_tokens"]
    assert n > 4 * BLOCK_SIZE and second["prompt_tokens"] == n
    assert second["prompt_tokens_details"]["cached_tokens"] == (n - 1) // BLOCK_SIZE * BLOCK_SIZE
    assert after.prefix_queries - before.prefix_queries == 2 * n
    assert after.prefix_hits - before.prefix_hits == (first["prompt_tokens_details"]["cached_tokens"]
                                                      + second["prompt_tokens_details"]["cached_tokens"])
    assert after.prompt_tokens - before.prompt_tokens == 2 * n
    assert after.finished.get("length", 0) - before.finished.get("length", 0) == 2
    assert after.kv_usage == 0.0 and after.running == 0 and after.waiting == 0
