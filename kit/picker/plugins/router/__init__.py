"""llm-d-router v0.10.0's plugins (tag ``v0.10.0``, commit ``ebab6879``): what the kit implements, with upstream's
registration metadata (stability, deprecations), and the list of every type v0.10.0 registers.

``PLUGINS`` is the one readable list of the types the kit's picker loads for release v0.10, as
``cmd/epp/runner/runner.go``'s ``registerInTreePlugins`` registers them. Types whose behaviour did not change
since the guide's release reuse its classes; the others are in this package. Each entry says whether
upstream decodes the plugin's parameters (a factory that reads none ignores any given: the kit warns), its
stability (an Alpha plugin needs the EPP's ``--allow-experimental-plugins``) and its deprecation.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from kit.picker.plugins import admission, pickers, profile
from kit.picker.plugins import datalayer as v07_datalayer
from kit.picker.plugins import filters as v07_filters
from kit.picker.plugins.router import (
    approx,
    burst,
    datalayer,
    handlers,
    inflight,
    parsers,
    precise,
    scorers,
    session,
    tokens,
)
from kit.picker.plugins.router import filters as router_filters
from kit.picker.plugins.scorers import kv_cache, load_aware, queue, running


@dataclass(frozen=True)
class Info:
    """A type's registration: its class, whether its factory reads parameters, its stability, its deprecation
    (version deprecated in, version it goes in, replacement) and whether it is the kit's own."""

    cls: type
    reads_params: bool = True
    stability: str = "Beta"
    deprecated: tuple[str, str, str] | None = None
    kit_only: bool = False


class LoadAwareScorer(load_aware.LoadAwareScorer):
    """``load-aware-scorer`` of llm-d-router v0.10.0: as in v0.7 (0.5 for an empty queue, less as it grows), but a
    ``threshold`` ≤ 0 means the default 128 (with a warning) instead of an error. Parameters: ``threshold``."""

    class Params(load_aware.LoadAwareParams):
        threshold: int = Field(128, description="queue length at which the score reaches 0 (≤ 0: 128)")

    def __init__(self, name: str | None = None, params: load_aware.LoadAwareParams | None = None):
        if params is not None and params.threshold <= 0:
            params = params.model_copy(update={"threshold": 128})
        super().__init__(name, params)


PLUGINS: dict[str, Info] = {
    # Scorers
    "queue-scorer": Info(queue.QueueScorer, reads_params=False),
    "kv-cache-utilization-scorer": Info(kv_cache.KVCacheUtilizationScorer, reads_params=False),
    "running-requests-size-scorer": Info(running.RunningRequestsScorer, reads_params=False),
    "load-aware-scorer": Info(LoadAwareScorer),
    "lora-affinity-scorer": Info(scorers.LoraAffinityScorer, reads_params=False),
    "active-request-scorer": Info(scorers.ActiveRequestScorer),
    "session-affinity-scorer": Info(session.SessionAffinityScorer, stability="Alpha"),
    "prefix-cache-scorer": Info(scorers.PrefixCacheScorer),
    "no-hit-lru-scorer": Info(scorers.NoHitLRUScorer),
    "token-load-scorer": Info(scorers.TokenLoadScorer),
    # Composes the precise producer and prefix-cache-scorer; logs its own deprecation (removed in v0.11).
    "precise-prefix-cache-scorer": Info(precise.PrecisePrefixScorer),
    # Data producers
    "approx-prefix-cache-producer": Info(approx.ApproxPrefixProducer),
    "burst-prefix-cache-producer": Info(burst.BurstPrefixProducer, stability="Alpha"),
    "inflight-load-producer": Info(inflight.InflightLoadProducer),
    "precise-prefix-cache-producer": Info(precise.PrecisePrefixProducer),
    "token-producer": Info(tokens.TokenProducer),
    "tokenizer": Info(tokens.LegacyTokenizer, deprecated=("v0.9.0", "v0.11.0", "token-producer")),
    # Filters
    "prefix-cache-affinity-filter": Info(router_filters.PrefixCacheAffinityFilter),
    "decode-filter": Info(router_filters.DecodeFilter, reads_params=False),
    "prefill-filter": Info(router_filters.PrefillFilter, reads_params=False),
    "encode-filter": Info(router_filters.EncodeFilter, reads_params=False),
    "label-selector-filter": Info(router_filters.LabelSelectorFilter),
    "by-label-selector": Info(router_filters.ByLabelSelector, deprecated=("v0.9.0", "v0.11.0",
                                                                          "label-selector-filter")),
    "by-label": Info(v07_filters.ByLabelFilter, deprecated=("v0.9.0", "v0.11.0", "label-selector-filter")),
    # Pickers and profile handlers
    "max-score-picker": Info(pickers.MaxScorePicker),
    "random-picker": Info(pickers.RandomPicker),
    "weighted-random-picker": Info(pickers.WeightedRandomPicker),
    "single-profile-handler": Info(profile.SingleProfileHandler, reads_params=False),
    "data-parallel-profile-handler": Info(handlers.DataParallelProfileHandler),
    # Admission and saturation
    "utilization-detector": Info(admission.UtilizationDetector),
    "probabilistic-admitter": Info(admission.ProbabilisticAdmitter),
    # Data layer: the gateway's scraping in the kit
    "metrics-data-source": Info(datalayer.RouterMetricsDataSource),
    "core-metrics-extractor": Info(datalayer.RouterCoreMetricsExtractor),
    "endpoint-notification-source": Info(v07_datalayer.EndpointNotificationSource, reads_params=False),
    # Request parsers
    "openai-parser": Info(parsers.OpenAIParser, reads_params=False),
    "anthropic-parser": Info(parsers.AnthropicParser, reads_params=False),
    "vllmhttp-parser": Info(parsers.VllmHTTPParser, reads_params=False),
    "passthrough-parser": Info(parsers.PassthroughParser, reads_params=False),
    "vllmgrpc-parser": Info(parsers.VllmGRPCParser, reads_params=False),
    "vertexai-parser": Info(parsers.VertexAIParser, reads_params=False),
    # Kit-only baselines (no upstream type: a cluster EPP refuses them)
    "round-robin-picker": Info(pickers.RoundRobinPicker, kit_only=True),
    "least-recent-max-score-picker": Info(pickers.LeastRecentMaxScorePicker, kit_only=True),
}

# Every type llm-d-router v0.10.0 registers (cmd/epp/runner/runner.go), implemented by the kit or not.
UPSTREAM_TYPES = frozenset("""
active-request-scorer agent-identity always-disagg-multimodal-decider always-disagg-pd-decider anthropic-parser
approx-prefix-cache-producer burst-prefix-cache-producer by-label by-label-selector concurrency-detector
context-length-aware core-metrics-extractor data-parallel-profile-handler dcgm-data-source dcgm-extractor
decode-filter destination-endpoint-served-verifier disagg-headers-handler disagg-profile-handler
disaggregatedset-rollout-screener edf-ordering-policy encode-filter endpoint-attribute-filter
endpoint-attribute-scorer endpoint-notification-source fcfs-ordering-policy file-discovery
global-strict-fairness-policy header-based-testing-filter header-label-affinity-scorer header-profile-handler
inflight-load-producer k8s-notification-source kv-cache-utilization-scorer label-selector-filter latency-scorer
latency-slo-admitter load-aware-scorer lora-affinity-scorer max-score-picker metrics-data-source
mm-embeddings-cache-producer mm-embeddings-cache-scorer models-data-extractor models-data-source
multicluster-approx-prefix-cache-producer multicluster-file-discovery multicluster-kv-cache-utilization-scorer
multicluster-metrics-data-source multicluster-metrics-extractor multicluster-prefix-cache-scorer
multicluster-queue-scorer multicluster-session-affinity-filter no-hit-lru-scorer openai-parser
p2p-source-producer passthrough-parser pd-profile-handler precise-prefix-cache-producer
precise-prefix-cache-scorer predicted-latency-producer prefill-filter prefill-header-handler
prefix-based-pd-decider prefix-cache-affinity-filter prefix-cache-scorer priority-holdback-policy
priority-then-time-eviction-order-policy probabilistic-admitter program-aware-fairness queue-scorer
random-picker request-attribute-reporter round-robin-fairness-policy running-requests-size-scorer
session-affinity-filter session-affinity-scorer session-id-producer sheddable-eviction-filter
single-profile-handler slo-deadline-ordering-policy slo-headroom-tier-filter soft-reflective-ceiling-policy
static-usage-limit-policy token-load-scorer token-producer tokenizer topology-affinity-filter
topology-affinity-scorer topology-extractor utilization-detector utilization-filter vertexai-parser
vllmgrpc-parser vllmhttp-parser weighted-random-picker
""".split())
