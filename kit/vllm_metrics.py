"""Parse a model server's Prometheus text (vLLM names) into one small dataclass.

The same function feeds the endpoint picker's refresh, the plots and the tests, on the simulator
and on real vLLM pods alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class EndpointMetrics:
    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    preemptions: float = 0.0
    requests_ok: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: float = 0.0
    itl_sum: float = 0.0
    itl_count: float = 0.0
    finished: dict[str, float] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        """Prefix-cache hits over queries, in tokens, since the server started."""
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


_GAUGES = {"vllm:num_requests_waiting": "waiting", "vllm:num_requests_running": "running",
           "vllm:kv_cache_usage_perc": "kv_usage", "vllm:gpu_cache_usage_perc": "kv_usage"}
_COUNTERS = {"vllm:prefix_cache_queries": "prefix_queries", "vllm:prefix_cache_hits": "prefix_hits",
             "vllm:gpu_prefix_cache_queries": "prefix_queries", "vllm:gpu_prefix_cache_hits": "prefix_hits",
             "vllm:prompt_tokens": "prompt_tokens", "vllm:generation_tokens": "generation_tokens",
             "vllm:num_preemptions": "preemptions"}
_HISTOGRAMS = {"vllm:time_to_first_token_seconds": "ttft", "vllm:inter_token_latency_seconds": "itl"}


def parse_vllm_metrics(text: str) -> EndpointMetrics:
    """Sum each vLLM series over its labels (one model per server) into EndpointMetrics."""
    m = EndpointMetrics()
    seen_kv = False
    for fam in text_string_to_metric_families(text):
        name = fam.name
        if name in _GAUGES:
            attr = _GAUGES[name]
            if attr == "kv_usage" and seen_kv:
                continue  # prefer the current name over the deprecated one
            seen_kv = seen_kv or name == "vllm:kv_cache_usage_perc"
            setattr(m, attr, sum(s.value for s in fam.samples))
        elif name in _COUNTERS:
            setattr(m, _COUNTERS[name], sum(s.value for s in fam.samples if s.name.endswith("_total")))
        elif name == "vllm:request_success":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    reason = s.labels.get("finished_reason", "")
                    m.finished[reason] = m.finished.get(reason, 0.0) + s.value
            m.requests_ok = sum(m.finished.values())
        elif name in _HISTOGRAMS:
            pre = _HISTOGRAMS[name]
            for s in fam.samples:
                if s.name.endswith("_sum"):
                    setattr(m, pre + "_sum", getattr(m, pre + "_sum") + s.value)
                elif s.name.endswith("_count"):
                    setattr(m, pre + "_count", getattr(m, pre + "_count") + s.value)
        elif name == "vllm:cache_config_info":
            for s in fam.samples:
                m.block_size = int(s.labels.get("block_size", 0)) or None
                m.num_gpu_blocks = int(s.labels.get("num_gpu_blocks", 0)) or None
    return m
