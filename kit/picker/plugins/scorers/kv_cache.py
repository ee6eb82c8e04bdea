"""``kv-cache-utilization-scorer``: prefer endpoints with free KV-cache space.

Consumes ``vllm:kv_cache_usage_perc``. Score = 1 − usage. No parameters.

Example::

    plugins:
    - type: kv-cache-utilization-scorer
"""

from __future__ import annotations

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, PluginBase


class KVCacheUtilizationScorer(PluginBase):
    """``kv-cache-utilization-scorer`` of GIE v1.4.0 (the guide's EPP, llm-d-inference-scheduler v0.7.0): ``1 − KV-cache
    usage`` (module docstring). No parameters."""

    type = "kv-cache-utilization-scorer"
    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        return {ep: 1.0 - ep.metrics.kv_usage for ep in eps}
