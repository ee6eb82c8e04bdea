"""Admission: the saturation detector and the probabilistic admitter.

``utilization-detector`` is upstream's saturation detector (GIE v1.4.0's built-in one, a plugin from
v1.5). An endpoint's saturation is ``max(waiting / queueDepthThreshold, kv / kvCacheUtilThreshold)``,
or 1.0 when its metrics are older than ``metricsStalenessThreshold`` (or were never read); the
pool's saturation is the mean over the candidates, and 1.0 for an empty pool. At 1.0 or more the
scheduler refuses sheddable requests (priority < 0). Referenced in a scheduling profile it is also a
filter: it drops endpoints with stale metrics and those at or above ``threshold × (1 + headroom)`` in
queue or KV cache, and keeps every candidate when it would drop them all (fail-open). It is the
config's saturation detector when ``saturationDetector.pluginRef`` names it, or implicitly (with the
``saturationDetector`` thresholds of the older format).

Parameters: ``queueDepthThreshold`` (5), ``kvCacheUtilThreshold`` (0.8, in (0, 1]),
``metricsStalenessThreshold`` (200ms), ``headroom`` (0: the filter's allowance above the thresholds).

Example::

    plugins:
    - type: utilization-detector
      parameters:
        queueDepthThreshold: 5
        kvCacheUtilThreshold: 0.8
        metricsStalenessThreshold: 200ms
    saturationDetector:
      pluginRef: utilization-detector

``probabilistic-admitter`` (llm-d) sheds sheddable requests (priority < 0) with probability
``min(saturation^power × k, 1)``, where saturation is the mean over the candidates of
``max(waiting / queueDepthThreshold, kv / kvCacheUtilThreshold)`` (an endpoint never scraped counts
1.0; staleness is not considered); other requests, and any request to an empty pool, are admitted.
With the defaults nothing is shed below saturation ≈ 0.08 and everything from ≈ 0.34.

Parameters: ``queueDepthThreshold`` (5), ``kvCacheUtilThreshold`` (0.8), ``power`` (5), ``k`` (300);
all must be > 0.

Example::

    plugins:
    - type: probabilistic-admitter
      parameters:
        power: 5
        k: 300
"""

from __future__ import annotations

import random

from pydantic import Field

from kit.picker.framework import CycleState, Duration, Endpoint, InferenceRequest, Params, PluginBase

DEFAULT_QUEUE, DEFAULT_KV, DEFAULT_STALENESS = 5, 0.8, 0.2


class UtilizationParams(Params):
    queue_depth_threshold: int = Field(DEFAULT_QUEUE, alias="queueDepthThreshold", gt=0,
                                       description="waiting requests that make an endpoint saturated")
    kv_cache_util_threshold: float = Field(DEFAULT_KV, alias="kvCacheUtilThreshold", gt=0, le=1,
                                           description="KV-cache usage that makes an endpoint saturated")
    metrics_staleness_threshold: Duration = Field(DEFAULT_STALENESS, alias="metricsStalenessThreshold", gt=0,
                                                  description="metrics older than this count as saturated")
    headroom: float = Field(0.0, ge=0, description="as a filter: drop endpoints at threshold × (1 + headroom)")


class UtilizationDetector(PluginBase):
    """``utilization-detector`` of llm-d-inference-scheduler v0.7.0: the saturation detector, and a filter (module
    docstring). Parameters: ``queueDepthThreshold`` (5), ``kvCacheUtilThreshold`` (0.8),
    ``metricsStalenessThreshold`` (200ms), ``headroom`` (0)."""

    type = "utilization-detector"
    Params = UtilizationParams

    def __init__(self, name: str | None = None, params: UtilizationParams | None = None):
        super().__init__(name, params)
        self.p = params or UtilizationParams()

    def stale(self, ep: Endpoint, now: float) -> bool:
        return ep.age(now) > self.p.metrics_staleness_threshold

    def endpoint_saturation(self, ep: Endpoint, now: float) -> float:
        if self.stale(ep, now):
            return 1.0
        m = ep.metrics
        return max(m.waiting / self.p.queue_depth_threshold, m.kv_usage / self.p.kv_cache_util_threshold)

    def saturation(self, eps: list[Endpoint]) -> float:
        """Mean endpoint saturation; an empty pool counts as saturated (1.0)."""
        if not eps:
            return 1.0
        now = self.clock()
        return sum(self.endpoint_saturation(ep, now) for ep in eps) / len(eps)

    def filter(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> list[Endpoint]:
        now, grow = self.clock(), 1.0 + self.p.headroom
        q_limit, kv_limit = self.p.queue_depth_threshold * grow, self.p.kv_cache_util_threshold * grow
        kept = [ep for ep in eps
                if not self.stale(ep, now) and ep.metrics.waiting < q_limit and ep.metrics.kv_usage < kv_limit]
        return kept or eps


class ProbabilisticParams(Params):
    queue_depth_threshold: int = Field(DEFAULT_QUEUE, alias="queueDepthThreshold", gt=0,
                                       description="waiting requests counted as saturation 1.0")
    kv_cache_util_threshold: float = Field(DEFAULT_KV, alias="kvCacheUtilThreshold", gt=0,
                                           description="KV-cache usage counted as saturation 1.0")
    power: float = Field(5.0, gt=0, description="exponent on the saturation")
    k: float = Field(300.0, gt=0, description="scale of the shedding probability")


class ProbabilisticAdmitter(PluginBase):
    """``probabilistic-admitter`` of llm-d-inference-scheduler v0.7.0: sheds sheddable requests with probability
    ``min(saturation^power × k, 1)`` (module docstring). Parameters: ``queueDepthThreshold`` (5),
    ``kvCacheUtilThreshold`` (0.8), ``power`` (5), ``k`` (300)."""

    type = "probabilistic-admitter"
    Params = ProbabilisticParams

    def __init__(self, name: str | None = None, params: ProbabilisticParams | None = None,
                 rng: random.Random | None = None):
        super().__init__(name, params)
        self.p = params or ProbabilisticParams()
        self.rng = rng or random.Random()

    def pool_saturation(self, eps: list[Endpoint]) -> float:
        def one(ep: Endpoint) -> float:
            if not ep.updated:
                return 1.0
            m = ep.metrics
            return max(m.waiting / self.p.queue_depth_threshold, m.kv_usage / self.p.kv_cache_util_threshold)

        return sum(one(ep) for ep in eps) / len(eps)

    def shed_probability(self, saturation: float) -> float:
        return min(saturation ** self.p.power * self.p.k, 1.0)

    def admit(self, req: InferenceRequest, eps: list[Endpoint]) -> str | None:
        if req.priority >= 0 or not eps:
            return None
        sat = self.pool_saturation(eps)
        prob = self.shed_probability(sat)
        if self.rng.random() < prob:
            return f"{self.name}: sheddable request shed (saturation {sat:.3f}, probability {prob:.2f})"
        return None
