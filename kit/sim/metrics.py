"""Prometheus metrics under vLLM's names and labels, so the endpoint picker, dashboards and scrapers
written for vLLM read the simulator exactly as they read vLLM (V1 engine, one engine per server).
Every series carries vLLM's ``model_name`` and ``engine`` labels (engine "0"); ``cache_config_info``
carries ``engine`` with the cache settings; ``lora_requests_info`` is what vLLM exposes with LoRA
enabled and no adapter loaded. Gauges are read from the engine at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kit.sim.engine import Engine, Sequence

# vLLM's bucket boundaries.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


LABELS = ["model_name", "engine"]
ENGINE = "0"
MAX_LORAS = 1  # vLLM's default --max-loras


class _EngineGauges(Collector):
    def __init__(self, engine: Engine, model: str, lora_updated: Callable[[], float]):
        self.engine, self.model, self.lora_updated = engine, model, lora_updated

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        e, labels = self.engine, [self.model, ENGINE]
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", len(e.running)),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", len(e.waiting)),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage),
        ):
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(labels, value)
            yield g
        pre = CounterMetricFamily("vllm:num_preemptions", "Cumulative number of preemptions.", labels=LABELS)
        pre.add_metric(labels, e.preemptions)
        yield pre
        cfg = e.cfg
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=["block_size", "num_gpu_blocks", "enable_prefix_caching", "engine"])
        info.add_metric([str(cfg.block_size), str(cfg.num_gpu_blocks), str(cfg.enable_prefix_caching), ENGINE], 1.0)
        yield info
        # As vLLM: the value is the Unix time of the latest engine step, no adapter running or waiting.
        lora = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                 labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
        lora.add_metric([str(MAX_LORAS), "", ""], self.lora_updated())
        yield lora


class SimMetrics:
    """The simulator's registry, fed by the engine as its observer."""

    def __init__(self, engine: Engine, model: str):
        self.stepped_at = time.time()  # wall-clock time of the latest engine event (lora_requests_info)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineGauges(engine, model, lambda: self.stepped_at))
        r, lab = self.registry, LABELS

        def counter(name: str, doc: str, labels: list[str] = lab) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            return Histogram(name, doc, lab, buckets=buckets, registry=r)

        self.model = model
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix-cache queries, in tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix-cache hits, in tokens.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = counter("vllm:request_success", "Count of successfully processed requests.",
                               [*LABELS, "finished_reason"])
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Inter-token latency.", ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", E2E_BUCKETS)
        self.queue = histogram("vllm:request_queue_time_seconds", "Time spent waiting.", E2E_BUCKETS)
        self.prompt_hist = histogram("vllm:request_prompt_tokens", "Prompt tokens per request.",
                                     TOKEN_BUCKETS)
        self.gen_hist = histogram("vllm:request_generation_tokens", "Generated tokens per request.",
                                  TOKEN_BUCKETS)
        for c in (self.prefix_queries, self.prefix_hits, self.prompt_tokens, self.generation_tokens):
            c.labels(model, ENGINE).inc(0)

    def on_schedule(self, seq: Sequence) -> None:
        """A sequence got its KV blocks: count the prefix-cache lookup, in tokens."""
        m, self.stepped_at = (self.model, ENGINE), time.time()
        self.prefix_queries.labels(*m).inc(seq.prompt_len)
        self.prefix_hits.labels(*m).inc(seq.cached_tokens)
        if not seq.preemptions:
            self.queue.labels(*m).observe(seq.scheduled_at - seq.arrival)

    def on_token(self, seq: Sequence, gap: float | None) -> None:
        """One token reached the client; ``gap`` is the time since the previous one."""
        m, self.stepped_at = (self.model, ENGINE), time.time()
        self.generation_tokens.labels(*m).inc()
        if gap is None:
            self.ttft.labels(*m).observe(seq.first_token_at - seq.arrival)
        else:
            self.itl.labels(*m).observe(gap)

    def on_finish(self, seq: Sequence) -> None:
        m, self.stepped_at = (self.model, ENGINE), time.time()
        if seq.finish_reason == "abort":
            self.success.labels(*m, "abort")  # create the series; aborts are not successes
            return
        self.success.labels(*m, seq.finish_reason).inc()
        self.prompt_tokens.labels(*m).inc(seq.prompt_len)
        self.prompt_hist.labels(*m).observe(seq.prompt_len)
        self.gen_hist.labels(*m).observe(seq.output_len)
        self.e2e.labels(*m).observe(seq.last_token_at - seq.arrival)

    def render(self) -> bytes:
        return generate_latest(self.registry)
