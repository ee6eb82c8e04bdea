"""The built-in plugins: the one readable list of what the kit implements, by upstream type name."""

from kit.picker.plugins import admission, approx_prefix, datalayer, filters, pickers, profile, tokenizer
from kit.picker.plugins.scorers import (
    active_request,
    kv_cache,
    load_aware,
    no_hit_lru,
    precise_prefix,
    prefix,
    queue,
    running,
    session_affinity,
)

BUILTINS: dict[str, type] = {
    "queue-scorer": queue.QueueScorer,
    "kv-cache-utilization-scorer": kv_cache.KVCacheUtilizationScorer,
    "running-requests-size-scorer": running.RunningRequestsScorer,
    "load-aware-scorer": load_aware.LoadAwareScorer,
    "active-request-scorer": active_request.ActiveRequestScorer,
    "session-affinity-scorer": session_affinity.SessionAffinityScorer,
    "prefix-cache-scorer": prefix.PrefixCacheScorer,
    "approx-prefix-cache-producer": approx_prefix.ApproxPrefixCacheProducer,
    "no-hit-lru-scorer": no_hit_lru.NoHitLRUScorer,
    # Reads what the servers really cache, from vLLM's KV-cache events (llm-d-kv-cache's index).
    "precise-prefix-cache-scorer": precise_prefix.PrecisePrefixCacheScorer,
    "tokenizer": tokenizer.TokenizerPlugin,  # in process with kit.tokenizer instead of a sidecar
    "max-score-picker": pickers.MaxScorePicker,
    "least-recent-max-score-picker": pickers.LeastRecentMaxScorePicker,
    "random-picker": pickers.RandomPicker,
    "weighted-random-picker": pickers.WeightedRandomPicker,
    "round-robin-picker": pickers.RoundRobinPicker,  # kit-only baseline: what a plain Service does
    "decode-filter": filters.DecodeFilter,
    "prefill-filter": filters.PrefillFilter,
    "by-label": filters.ByLabelFilter,
    "label-selector-filter": filters.LabelSelectorFilter,
    # Legacy alias: upstream renamed by-label-selector to label-selector-filter; both names load.
    "by-label-selector": filters.LabelSelectorFilter,
    "single-profile-handler": profile.SingleProfileHandler,
    "utilization-detector": admission.UtilizationDetector,
    "probabilistic-admitter": admission.ProbabilisticAdmitter,
    # Data layer: in the kit, the gateway datastore's scraping (see their module docstring).
    "metrics-data-source": datalayer.MetricsDataSource,
    "core-metrics-extractor": datalayer.CoreMetricsExtractor,
    "endpoint-notification-source": datalayer.EndpointNotificationSource,
}
