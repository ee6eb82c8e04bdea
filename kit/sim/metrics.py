"""Prometheus metrics under vLLM's names and labels, so the endpoint picker, dashboards and scrapers
written for vLLM read the simulator exactly as they read vLLM (0.32, V1 engine, one engine per server).

Checked against a real vLLM 0.32 server by ``tests/contract``. Every series carries vLLM's ``model_name``
and ``engine`` labels (engine "0"); ``cache_config_info`` carries ``engine`` and vLLM's cache settings (its
37 labels, the simulator's values where it has them); ``request_success_total`` exists from the start for
each finish reason, at 0, as vLLM pre-creates it; ``lora_requests_info`` appears only with
``--enable-lora``, as in vLLM; every histogram's series exists from the start too. Gauges are read from the
engine at scrape time. Metrics about features the simulator has not (multimodal and external caches, KV
offloading, FLOP estimates, admission queues) are left out; docs/explanation/simulator.md lists them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kit.sim.config import SimConfig
from kit.sim.engine import Engine, Sequence

# vLLM's bucket boundaries (vllm/v1/metrics/buckets.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM pre-creates a series for each


def token_buckets(max_model_len: int) -> tuple[int, ...]:
    """vLLM's 1-2-5 series up to the model length (``build_1_2_5_buckets``)."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_model_len:
                return tuple(out)
            out.append(m * scale)
        scale *= 10


LABELS = ["model_name", "engine"]
ENGINE = "0"
MAX_LORAS = 1  # vLLM's default --max-loras


def cache_config_labels(cfg: SimConfig) -> dict[str, str]:
    """``vllm:cache_config_info``'s labels, as vLLM 0.32 writes them (its values where the simulator has none)."""
    tokens = cfg.num_gpu_blocks * cfg.block_size
    return {
        "_block_size_resolved": "True", "block_size": str(cfg.block_size), "cache_dtype": "auto",
        "cache_hit_alignment_tokens": "None", "effective_attention_block_size": str(cfg.block_size),
        "enable_mamba_shared_prefix_checkpoint": "False", "enable_prefix_caching": str(cfg.enable_prefix_caching),
        "engine": ENGINE, "gpu_memory_utilization": "0.92", "hash_block_size": "None", "is_attention_free": "False",
        "kv_cache_dtype_skip_layers": "[]", "kv_cache_layout": "None",
        "kv_cache_max_concurrency": str(round(tokens / cfg.max_model_len, 2)), "kv_cache_memory_bytes": "None",
        "kv_cache_size_tokens": str(tokens), "kv_offloading_backend": "native", "kv_offloading_size": "None",
        "kv_sharing_fast_prefill": "False", "mamba_block_size": "None", "mamba_cache_dtype": "auto",
        "mamba_cache_mode": "none", "mamba_page_size_padded": "None", "mamba_ssm_cache_dtype": "auto",
        "num_cpu_blocks": "None", "num_gpu_blocks": str(cfg.num_gpu_blocks), "num_gpu_blocks_override": "None",
        "prefix_cache_retention_interval": "0",
        "prefix_caching_hash_algo": str(cfg.prefix_caching_hash_algo), "prefix_match_unit": "None",
        "replayssm_buffer_len": "16", "skip_page_size_padded": "None", "sliding_window": "None",
        "swa_bounded_replay": "True", "use_kda_recoverssm": "False", "use_replayssm": "False",
        "user_specified_block_size": "True"}


class _EngineGauges(Collector):
    def __init__(self, engine: Engine, model: str, lora_updated: Callable[[], float] | None):
        self.engine, self.model, self.lora_updated = engine, model, lora_updated
        self.cache_labels = cache_config_labels(engine.cfg)

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
        # Waiting for capacity (slots, blocks); the simulator defers nothing (vLLM: structured output, KV loads).
        by_reason = GaugeMetricFamily("vllm:num_requests_waiting_by_reason", "Number of waiting requests by reason.",
                                      labels=[*LABELS, "reason"])
        by_reason.add_metric([*labels, "capacity"], len(e.waiting))
        by_reason.add_metric([*labels, "deferred"], 0)
        yield by_reason
        sleep = GaugeMetricFamily("vllm:engine_sleep_state", "Engine sleep state.", labels=[*LABELS, "sleep_state"])
        for state, value in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            sleep.add_metric([*labels, state], value)
        yield sleep
        pre = CounterMetricFamily("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                                  labels=LABELS)
        pre.add_metric(labels, e.preemptions)
        yield pre
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=list(self.cache_labels))
        info.add_metric(list(self.cache_labels.values()), 1.0)
        yield info
        if self.lora_updated is not None:  # As vLLM: the Unix time of the latest engine step, no adapter in use.
            lora = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                     labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
            lora.add_metric([str(MAX_LORAS), "", ""], self.lora_updated())
            yield lora


class SimMetrics:
    """The simulator's registry, fed by the engine as its observer."""

    def __init__(self, engine: Engine, model: str):
        cfg = engine.cfg
        self.stepped_at = time.time()  # wall-clock time of the latest engine event (lora_requests_info)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineGauges(engine, model, (lambda: self.stepped_at) if cfg.enable_lora else None))
        r, lab = self.registry, LABELS

        def counter(name: str, doc: str, labels: list[str] = lab) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            h = Histogram(name, doc, lab, buckets=buckets, registry=r)
            h.labels(model, ENGINE)  # vLLM creates each engine's series up front
            return h

        tokens = token_buckets(cfg.max_model_len)
        self.model = model
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of "
                                      "queried tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_by_source = counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
                                        [*LABELS, "source"])
        self.prompt_cached = counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = counter("vllm:request_success", "Count of successfully processed requests.",
                               [*LABELS, "finished_reason"])
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.tpot = histogram("vllm:request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             E2E_BUCKETS)
        self.queue = histogram("vllm:request_queue_time_seconds",
                               "Histogram of time spent in WAITING phase for request.", E2E_BUCKETS)
        self.inference = histogram("vllm:request_inference_time_seconds",
                                   "Histogram of time spent in RUNNING phase for request.", E2E_BUCKETS)
        self.prefill = histogram("vllm:request_prefill_time_seconds",
                                 "Histogram of time spent in PREFILL phase for request.", E2E_BUCKETS)
        self.decode = histogram("vllm:request_decode_time_seconds",
                                "Histogram of time spent in DECODE phase for request.", E2E_BUCKETS)
        self.prompt_hist = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens)
        self.gen_hist = histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", tokens)
        self.computed_hist = histogram("vllm:request_prefill_kv_computed_tokens", "Histogram of new KV tokens "
                                       "computed during prefill (excluding cached tokens).", tokens)
        self.max_tokens_hist = histogram("vllm:request_params_max_tokens",
                                         "Histogram of the max_tokens request parameter.", tokens)
        self.max_gen_hist = histogram("vllm:request_max_num_generation_tokens",
                                      "Histogram of maximum number of requested generation tokens.", tokens)
        self.n_hist = histogram("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.preempt_hist = histogram("vllm:request_num_preemptions",
                                      "Histogram of the number of times a request was preempted.", PREEMPTION_BUCKETS)
        self.iteration = histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                                   ITERATION_BUCKETS)
        m = (model, ENGINE)
        for c in (self.prefix_queries, self.prefix_hits, self.prompt_tokens, self.prompt_cached,
                  self.generation_tokens):
            c.labels(*m).inc(0)
        for source in ("local_compute", "local_cache_hit", "external_kv_transfer"):
            self.prompt_by_source.labels(*m, source).inc(0)
        for reason in FINISH_REASONS:
            self.success.labels(*m, reason).inc(0)
        engine.on_step = self.on_step

    def on_step(self, tokens: int) -> None:
        """An engine step computed ``tokens`` tokens (prefill chunks and decodes)."""
        self.iteration.labels(self.model, ENGINE).observe(tokens)

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
            return  # as vLLM, a request the client gave up on is not counted (the abort series stays at 0)
        self.success.labels(*m, seq.finish_reason).inc()
        computed = seq.prompt_len - seq.cached_tokens
        self.prompt_tokens.labels(*m).inc(seq.prompt_len)
        self.prompt_cached.labels(*m).inc(seq.cached_tokens)
        self.prompt_by_source.labels(*m, "local_compute").inc(computed)
        self.prompt_by_source.labels(*m, "local_cache_hit").inc(seq.cached_tokens)
        self.prompt_hist.labels(*m).observe(seq.prompt_len)
        self.gen_hist.labels(*m).observe(seq.output_len)
        self.computed_hist.labels(*m).observe(computed)
        self.max_tokens_hist.labels(*m).observe(seq.max_tokens)
        self.max_gen_hist.labels(*m).observe(seq.max_tokens)
        self.n_hist.labels(*m).observe(1)
        self.preempt_hist.labels(*m).observe(seq.preemptions)
        self.e2e.labels(*m).observe(seq.last_token_at - seq.arrival)
        scheduled, first, last = seq.scheduled_at, seq.first_token_at, seq.last_token_at
        self.inference.labels(*m).observe(last - scheduled)
        self.prefill.labels(*m).observe(first - scheduled)
        self.decode.labels(*m).observe(last - first)
        if seq.output_len > 1:
            self.tpot.labels(*m).observe((last - first) / (seq.output_len - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
