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
_CACHE_INFO, _SUCCESS = "vllm:cache_config_info", "vllm:request_success_total"
# Read as upstream reads them: one series per metric (below); everything else is summed.
_ONE_SERIES = {*_GAUGES, "vllm:gpu_cache_usage_perc", _CACHE_INFO}
_WANTED = {*_GAUGES, *_COUNTERS, *_LEGACY, _CACHE_INFO, _SUCCESS}
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _int_label(labels: dict[str, str], key: str) -> int | None:
    try:
        return int(labels.get(key, "")) or None
    except ValueError:
        return None


def parse_vllm_metrics(text: str) -> EndpointMetrics:
    """Read a model server's metrics into EndpointMetrics.

    The gauges the endpoint picker uses (queue, running, KV-cache usage) and ``vllm:cache_config_info``
    are read as the upstream EPP reads them (GIE v1.4.0's metrics extractor): when a metric has
    several series, as a data-parallel vLLM pod exposes one per engine, the one with the newest
    timestamp counts, else the first. Counters are pod totals, so their series are summed (the
    kit's hit-rate and token figures; upstream does not read them).

    A line scanner over the Prometheus text format that reads only the series the kit uses: it runs
    on every scrape of every endpoint (20 times a second each), so it must be cheap.
    """
    m = EndpointMetrics()
    totals: dict[str, float] = {}
    newest: dict[str, tuple[float, float, str]] = {}  # name → (timestamp, value, labels)
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace = line.find("{")
        if brace != -1:
            close = line.rfind("}")
            name, labels, rest = line[:brace], line[brace + 1 : close], line[close + 1 :].split()
        else:
            name, _, tail = line.partition(" ")
            labels, rest = "", tail.split()
        if name not in _WANTED or not rest:
            continue
        try:
            value = float(rest[0])
            stamp = float(rest[1]) if len(rest) > 1 else 0.0
        except ValueError:
            continue
        if name in _ONE_SERIES:
            if name not in newest or stamp > newest[name][0]:
                newest[name] = (stamp, value, labels)
        elif name == _SUCCESS:
            reason = dict(_LABEL.findall(labels)).get("finished_reason", "")
            m.finished[reason] = m.finished.get(reason, 0.0) + value
        else:
            totals[name] = totals.get(name, 0.0) + value
    for name, (_, value, _) in newest.items():
        totals[name] = value
    for old, new in _LEGACY.items():
        if old in totals and new not in totals:
            totals[new] = totals[old]
    for name, attr in (*_GAUGES.items(), *_COUNTERS.items()):
        if name in totals:
            setattr(m, attr, totals[name])
    if _CACHE_INFO in newest:
        labels = dict(_LABEL.findall(newest[_CACHE_INFO][2]))
        m.block_size, m.num_gpu_blocks = _int_label(labels, "block_size"), _int_label(labels, "num_gpu_blocks")
    m.requests_ok = sum(v for k, v in m.finished.items() if k != "abort")
    return m
