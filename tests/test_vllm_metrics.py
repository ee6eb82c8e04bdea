"""Parsing a model server's Prometheus text."""

from kit.vllm_metrics import parse_vllm_metrics

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-0.6B"} 3.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-0.6B"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-0.6B"} 0.42
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen3-0.6B"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen3-0.6B"} 250.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="Qwen/Qwen3-0.6B"} 5.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="Qwen/Qwen3-0.6B"} 2.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="Qwen/Qwen3-0.6B"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen3-0.6B"} 0.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Qwen/Qwen3-0.6B"} 0.7
vllm:time_to_first_token_seconds_count{engine="0",model_name="Qwen/Qwen3-0.6B"} 7.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",gpu_memory_utilization="0.9",num_gpu_blocks="30517"} 1.0
python_gc_objects_collected_total{generation="0"} 12.0
"""


def test_current_vllm_names():
    m = parse_vllm_metrics(VLLM)
    assert (m.running, m.waiting, m.kv_usage) == (3.0, 7.0, 0.42)
    assert (m.prefix_queries, m.prefix_hits, m.hit_rate) == (1000.0, 250.0, 0.25)
    assert m.finished == {"length": 5.0, "stop": 2.0, "abort": 1.0} and m.requests_ok == 7.0
    assert (m.ttft_sum, m.ttft_count) == (0.7, 7.0)
    assert (m.block_size, m.num_gpu_blocks) == (16, 30517)


def test_deprecated_names_are_read_when_the_current_ones_are_missing():
    old = ("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n"
           "vllm:gpu_prefix_cache_queries_total{model_name=\"m\"} 10\n"
           "vllm:gpu_prefix_cache_hits_total{model_name=\"m\"} 4\n")
    m = parse_vllm_metrics(old)
    assert (m.kv_usage, m.prefix_queries, m.prefix_hits) == (0.5, 10.0, 4.0)
    both = old + "vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n"
    assert parse_vllm_metrics(both).kv_usage == 0.25


def test_empty_or_foreign_text_gives_zeros():
    m = parse_vllm_metrics("garbage\nvllm:num_requests_waiting{broken 12x\n")
    assert m.waiting == 0.0 and m.block_size is None


DATA_PARALLEL = """\
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="1",model_name="m"} 7.0
vllm:num_requests_running{engine="0",model_name="m"} 1.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 300.0
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1000"} 1.0
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="2000"} 1.0
"""


def test_a_metric_with_several_series_reads_the_first_as_upstream_does():
    """A data-parallel pod's KV usage 0.5 and 0.6 is not 1.1; counters are pod totals."""
    m = parse_vllm_metrics(DATA_PARALLEL)
    assert (m.kv_usage, m.waiting, m.running, m.num_gpu_blocks) == (0.5, 2.0, 1.0, 1000)
    assert m.prefix_queries == 400.0


def test_the_newest_series_by_timestamp_wins():
    """Cases of GIE v1.4.0 backend/metrics/metrics_test.go TestGetMetric: timestamps in milliseconds."""
    text = ('vllm:num_requests_waiting{engine="0"} 5.0 3000\n'
            'vllm:num_requests_waiting{engine="1"} 6.0 1000\n'
            'vllm:kv_cache_usage_perc{engine="0"} 0.1 1000\n'
            'vllm:kv_cache_usage_perc{engine="1"} 0.2 2000\n'
            'vllm:num_requests_running 3.0 1500\n')
    m = parse_vllm_metrics(text)
    assert (m.waiting, m.kv_usage, m.running) == (5.0, 0.2, 3.0)


def test_an_unreadable_cache_config_label_is_left_unset():
    """Cases of GIE v1.4.0 TestCacheConfigInfoMetrics: the other label is still read."""
    m = parse_vllm_metrics('vllm:cache_config_info{block_size="invalid",num_gpu_blocks="1024"} 1.0\n')
    assert (m.block_size, m.num_gpu_blocks) == (None, 1024)
    m = parse_vllm_metrics('vllm:cache_config_info{block_size="16",num_gpu_blocks="invalid"} 1.0\n')
    assert (m.block_size, m.num_gpu_blocks) == (16, None)
