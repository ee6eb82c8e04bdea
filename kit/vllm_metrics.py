"""Parse a model server's Prometheus text (vLLM names) into one small dataclass.

The same function feeds the endpoint picker's refresh, the plots and the tests, on the simulator
and on real vLLM pods alike. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


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
           "vllm:kv_cache_usage_perc": "kv_usage"}
_COUNTERS = {"vllm:prefix_cache_queries_total": "prefix_queries", "vllm:prefix_cache_hits_total": "prefix_hits",
             "vllm:prompt_tokens_total": "prompt_tokens", "vllm:generation_tokens_total": "generation_tokens",
             "vllm:num_preemptions_total": "preemptions", "vllm:time_to_first_token_seconds_sum": "ttft_sum",
             "vllm:time_to_first_token_seconds_count": "ttft_count",
             "vllm:inter_token_latency_seconds_sum": "itl_sum", "vllm:inter_token_latency_seconds_count": "itl_count"}
# Names older vLLM releases used (deprecated in 0.10); read only when the current name is absent.
_LEGACY = {"vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
           "vllm:gpu_prefix_cache_queries_total": "vllm:prefix_cache_queries_total",
           "vllm:gpu_prefix_cache_hits_total": "vllm:prefix_cache_hits_total"}
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_vllm_metrics(text: str) -> EndpointMetrics:
    """Sum each vLLM series over its labels (one model per server) into EndpointMetrics.

    A line scanner over the Prometheus text format that reads only the series the kit uses: it runs
    on every scrape of every endpoint (20 times a second each), so it must be cheap.
    """
    m = EndpointMetrics()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace = line.find("{")
        space = line.rfind(" ")
        name = line[: brace if brace != -1 else line.find(" ")]
        if name not in _GAUGES and name not in _COUNTERS and name not in _LEGACY and name not in (
                "vllm:request_success_total", "vllm:cache_config_info"):
            continue
        try:
            value = float(line[space + 1 :])
        except ValueError:
            continue
        if name == "vllm:request_success_total":
            labels = dict(_LABEL.findall(line[brace:space]))
            reason = labels.get("finished_reason", "")
            m.finished[reason] = m.finished.get(reason, 0.0) + value
        elif name == "vllm:cache_config_info":
            labels = dict(_LABEL.findall(line[brace:space]))
            m.block_size = int(labels.get("block_size", 0) or 0) or None
            m.num_gpu_blocks = int(labels.get("num_gpu_blocks", 0) or 0) or None
        else:
            totals[name] = totals.get(name, 0.0) + value
    for old, new in _LEGACY.items():
        if old in totals and new not in totals:
            totals[new] = totals[old]
    for name, attr in (*_GAUGES.items(), *_COUNTERS.items()):
        if name in totals:
            setattr(m, attr, totals[name])
    m.requests_ok = sum(v for k, v in m.finished.items() if k != "abort")
    return m

