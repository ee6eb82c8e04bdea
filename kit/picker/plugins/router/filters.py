"""The filters of llm-d-router v0.10.0 that differ from the guide's release.

``prefix-cache-affinity-filter`` (``scheduling/filter/prefixcacheaffinity``): keeps the *sticky* candidates,
those whose ``PrefixCacheMatchInfo`` (producer ``prefixMatchInfoProducerName``, default the approximate one)
shows matched / request blocks ≥ ``affinityThreshold`` (0.80); keeps all when none is sticky, when there is
at most one candidate or the threshold is ≤ 0, and with probability ``explorationProbability`` (0). TTFT
gate (``maxTTFTPenaltyMs`` 18000; 0 = always stick): when the best sticky endpoint's TTFT exceeds the best
non-sticky one's by more than that, all are kept. With ``ttftSource: prefillThroughput`` (default) an
endpoint's TTFT is its in-flight tokens (``inflight-load-producer``, named by ``inFlightLoadProducerName``) /
``peakPrefillThroughput`` (15928 tokens/s, calibrated upstream for Qwen3-32B on 2×H100) × 1000 ms;
``latencyPredictor`` reads the predicted-latency producer (not in the kit: the loader names it missing).
Parameters also ``latencyPredictionInfoProducerName``.

``decode-filter``, ``prefill-filter``, ``encode-filter`` (``scheduling/filter/bylabel``): by the endpoint's
``llm-d.ai/role`` label. decode keeps decode, prefill-decode, both, encode-prefill-decode and unlabelled
endpoints; prefill keeps prefill, encode-prefill, prefill-decode, both, encode-prefill-decode; encode keeps
encode, encode-prefill, encode-prefill-decode. They read no parameters (any given are ignored, as upstream).

``label-selector-filter`` (and its deprecated name ``by-label-selector``): a Kubernetes label selector,
``matchLabels`` and ``matchExpressions`` (``key``, ``operator`` In / NotIn / Exists / DoesNotExist,
``values``), both optional; an empty selector keeps every endpoint.

Example::

    plugins:
    - type: approx-prefix-cache-producer
    - type: inflight-load-producer
    - type: prefix-cache-affinity-filter
      parameters:
        affinityThreshold: 0.8
        peakPrefillThroughput: 15928
    - type: token-load-scorer
    schedulingProfiles:
    - name: default
      plugins:
      - pluginRef: prefix-cache-affinity-filter
      - pluginRef: token-load-scorer
"""

from __future__ import annotations

import math
import random
from typing import Literal

from pydantic import Field, model_validator

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase
from kit.picker.plugins.filters import ROLE
from kit.picker.plugins.router.data import INFLIGHT, PREFIX_MATCH, key

LATENCY = "LatencyPredictionInfoDataKey"


class AffinityParams(Params):
    affinity_threshold: float = Field(0.80, alias="affinityThreshold", le=1.0,
                                      description="matched share of the prompt's blocks at which an endpoint is "
                                                  "sticky (≤ 0 disables the filter)")
    exploration_probability: float = Field(0.0, alias="explorationProbability", ge=0, le=1,
                                           description="probability of keeping every candidate anyway")
    max_ttft_penalty_ms: float = Field(18000.0, alias="maxTTFTPenaltyMs", ge=0,
                                       description="how much slower (ms) the best sticky endpoint may be than the "
                                                   "best other before stickiness breaks (0: always stick)")
    ttft_source: Literal["prefillThroughput", "latencyPredictor"] = Field(
        "prefillThroughput", alias="ttftSource", description="where an endpoint's TTFT comes from")
    peak_prefill_throughput: float = Field(15928.0, alias="peakPrefillThroughput", ge=0,
                                           description="prefill tokens per second that turn in-flight tokens into "
                                                       "a TTFT estimate")
    prefix_match_info_producer_name: str = Field("", alias="prefixMatchInfoProducerName",
                                                 description="the prefix producer read (default: the approximate "
                                                             "one)")
    latency_prediction_info_producer_name: str = Field("", alias="latencyPredictionInfoProducerName",
                                                       description="the latency producer read (latencyPredictor)")
    in_flight_load_producer_name: str = Field("", alias="inFlightLoadProducerName",
                                              description="the inflight-load-producer read (prefillThroughput)")

    @model_validator(mode="after")
    def _throughput(self) -> AffinityParams:
        if self.ttft_source == "prefillThroughput" and self.max_ttft_penalty_ms > 0 and \
                self.peak_prefill_throughput == 0:
            raise ValueError("peakPrefillThroughput must be > 0 when ttftSource is prefillThroughput")
        return self


class PrefixCacheAffinityFilter(PluginBase):
    """``prefix-cache-affinity-filter`` of llm-d-router v0.10.0: narrows the candidates to those that hold the
    prompt's prefix, unless they are too loaded (module docstring). Parameters: ``affinityThreshold`` (0.80),
    ``explorationProbability`` (0), ``maxTTFTPenaltyMs`` (18000), ``ttftSource`` (prefillThroughput),
    ``peakPrefillThroughput`` (15928), ``prefixMatchInfoProducerName``, ``inFlightLoadProducerName``,
    ``latencyPredictionInfoProducerName``."""

    type = "prefix-cache-affinity-filter"
    Params = AffinityParams

    def __init__(self, name: str | None = None, params: AffinityParams | None = None, rng: random.Random | None = None):
        super().__init__(name, params)
        p = self.p = params or AffinityParams()
        self.rng = rng or random.Random()
        self.prefix_key = key(PREFIX_MATCH, p.prefix_match_info_producer_name)
        self.inflight_key = key(INFLIGHT, p.in_flight_load_producer_name)
        self.latency_key = f"{LATENCY}/{p.latency_prediction_info_producer_name or 'predicted-latency-producer'}"

    def data_consumed(self) -> tuple[set[str], set[str]]:
        required = {self.prefix_key}
        if self.p.max_ttft_penalty_ms > 0:
            required.add(self.latency_key if self.p.ttft_source == "latencyPredictor" else self.inflight_key)
        return required, set()

    def ttft_ms(self, state: CycleState, ep: Endpoint) -> float:
        if self.p.ttft_source == "latencyPredictor":
            predicted = (state.get(self.latency_key) or {}).get(ep.name)
            return math.inf if predicted is None else float(predicted)
        producer = state.get(self.inflight_key)
        tokens = producer.load(ep.name)[0] if producer is not None else 0
        return tokens / self.p.peak_prefill_throughput * 1000.0

    def filter(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> list[Endpoint]:
        p = self.p
        if len(eps) <= 1 or p.affinity_threshold <= 0:
            return eps
        if self.rng.random() < p.exploration_probability:
            return eps
        infos = state.get(self.prefix_key) or {}
        sticky, other = [], []
        for ep in eps:
            info = infos.get(ep.name)
            (sticky if info is not None and info.ratio >= p.affinity_threshold else other).append(ep)
        if not sticky:
            return eps
        if p.max_ttft_penalty_ms > 0 and other:
            best_sticky = min(self.ttft_ms(state, ep) for ep in sticky)
            best_other = min(self.ttft_ms(state, ep) for ep in other)
            if best_sticky - best_other > p.max_ttft_penalty_ms:
                return eps
        return sticky


class _Role(PluginBase):
    roles: frozenset[str] = frozenset()
    unlabelled = False

    def filter(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> list[Endpoint]:
        return [ep for ep in eps
                if ep.labels.get(ROLE) in self.roles or (self.unlabelled and ROLE not in ep.labels)]


class DecodeFilter(_Role):
    """``decode-filter`` of llm-d-router v0.10.0: decode-capable or unlabelled endpoints. No parameters."""

    type = "decode-filter"
    roles = frozenset({"decode", "prefill-decode", "both", "encode-prefill-decode"})
    unlabelled = True


class PrefillFilter(_Role):
    """``prefill-filter`` of llm-d-router v0.10.0: prefill-capable endpoints. No parameters."""

    type = "prefill-filter"
    roles = frozenset({"prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"})


class EncodeFilter(_Role):
    """``encode-filter`` of llm-d-router v0.10.0: encode-capable endpoints. No parameters."""

    type = "encode-filter"
    roles = frozenset({"encode", "encode-prefill", "encode-prefill-decode"})


class Requirement(Params):
    key: str = Field(min_length=1, description="the label")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="how the label is tested")
    values: list[str] = Field(default_factory=list, description="for In and NotIn")

    @model_validator(mode="after")
    def _values(self) -> Requirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values: must be specified when operator is {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values: may not be specified when operator is {self.operator}")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        if self.operator == "In":
            return has and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not has or labels[self.key] not in self.values
        return has if self.operator == "Exists" else not has


class SelectorParams(Params):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels", description="labels that must "
                                                                                              "all be equal")
    match_expressions: list[Requirement] = Field(default_factory=list, alias="matchExpressions",
                                                 description="requirements that must all hold")


class LabelSelectorFilter(PluginBase):
    """``label-selector-filter`` of llm-d-router v0.10.0 (``by-label-selector`` is its deprecated name): endpoints
    matching a Kubernetes label selector. Parameters: ``matchLabels``, ``matchExpressions`` (both optional)."""

    type = "label-selector-filter"
    Params = SelectorParams

    def __init__(self, name: str | None = None, params: SelectorParams | None = None):
        super().__init__(name, params)
        self.p = params or SelectorParams()

    def filter(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> list[Endpoint]:
        ml, me = self.p.match_labels, self.p.match_expressions
        return [ep for ep in eps if all(ep.labels.get(k) == v for k, v in ml.items())
                and all(r.matches(ep.labels) for r in me)]


class ByLabelSelector(LabelSelectorFilter):
    """``by-label-selector`` of llm-d-router v0.10.0: deprecated name (v0.9.0, removal planned for v0.11.0) of
    ``label-selector-filter``. Parameters: ``matchLabels``, ``matchExpressions``."""

    type = "by-label-selector"
