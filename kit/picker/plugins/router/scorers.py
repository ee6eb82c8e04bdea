"""The scorers llm-d-router v0.10.0 changed or added, reading its producers' per-request data (``data``).

``prefix-cache-scorer`` (``scheduling/scorer/prefix``): a prefix producer's matches, now scored by the scorer
alone: ``matchLengthWeight × min(1, matched tokens / matchLengthScaleTokens)² + (1 − matchLengthWeight) ×
matched blocks / request blocks``; 0 where the producer wrote nothing or the request has no blocks. It
reads the producer named ``prefixMatchInfoProducerName`` (default: the approximate producer, created when
absent). Parameters: ``prefixMatchInfoProducerName`` (""), ``matchLengthWeight`` (0, in [0, 1]),
``matchLengthScaleTokens`` (8192, > 0 when the weight is).

``token-load-scorer`` (``scheduling/scorer/tokenload``): ``1 − min(1, load / queueThresholdTokens)``, where
load is the endpoint's in-flight tokens plus this request's uncached tokens there (both from the
``inflight-load-producer`` named ``inFlightLoadProducerName``, which must be configured: the uncached tokens
have no default producer); 1.0 at no load. Parameters: ``queueThresholdTokens`` (4194304; ≤ 0 means the
default), ``inFlightLoadProducerName`` ("").

``active-request-scorer`` (``scheduling/scorer/activerequest``): in-flight requests from the
``inflight-load-producer`` (created when absent); 1.0 at or under ``idleThreshold`` (0; negative means 0),
else (max − n) / max × ``maxBusyScore`` (1.0; a value outside [0, 1] is ignored, with a warning).
``requestTimeout`` is deprecated and ignored (a warning). Parameters also ``inFlightLoadProducerName``.

``no-hit-lru-scorer`` (``scheduling/scorer/nohitlru``): as in v0.7 (cold requests rank the candidates by how
recently each was last sent a cold request; warm ones score 0.5), but a request is cold when no candidate's
``PrefixCacheMatchInfo`` (producer ``prefixMatchInfoProducerName``, default the approximate one) shows a
matched block. Parameters: ``lruSize`` (1024; ≤ 0 means the default), ``prefixMatchInfoProducerName``,
``prefixPluginName`` and ``prefixPluginType`` (deprecated upstream: never used).

``lora-affinity-scorer`` (``scheduling/scorer/loraaffinity``): 1.0 where the request's model is a running LoRA
adapter, 0.8 where the server can load one more (running + waiting adapters < ``max_lora``), 0.6 where it
waits to be loaded, else 0. It reads ``vllm:lora_requests_info`` through the endpoint's metrics
(``lora_running``, ``lora_waiting``, ``max_lora``); an endpoint that reports none (no LoRA) scores 0, as
upstream's. No parameters.

Example::

    plugins:
    - type: inflight-load-producer
    - type: token-load-scorer
      parameters:
        queueThresholdTokens: 1048576
"""

from __future__ import annotations

from collections import OrderedDict

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase, note
from kit.picker.plugins.router.data import INFLIGHT, PREFIX_MATCH, UNCACHED, key

TOKEN_THRESHOLD = 4_194_304  # 128 requests of 32K tokens
DEFAULT_LRU_SIZE = 1024


class PrefixScorerParams(Params):
    prefix_match_info_producer_name: str = Field("", alias="prefixMatchInfoProducerName",
                                                 description="the producer whose matches are scored (default: "
                                                             "approx-prefix-cache-producer, created when absent)")
    match_length_weight: float = Field(0.0, alias="matchLengthWeight", ge=0, le=1,
                                       description="weight of the matched length (the rest: the matched share)")
    match_length_scale_tokens: int = Field(8192, alias="matchLengthScaleTokens",
                                           description="tokens that count as a full-length match")

    @model_validator(mode="after")
    def _scale(self) -> PrefixScorerParams:
        if self.match_length_weight > 0 and self.match_length_scale_tokens <= 0:
            raise ValueError("matchLengthScaleTokens must be greater than 0 when matchLengthWeight is greater "
                             f"than 0, got {self.match_length_scale_tokens}")
        return self


class PrefixCacheScorer(PluginBase):
    """``prefix-cache-scorer`` of llm-d-router v0.10.0: scores a prefix producer's matches (module docstring).
    Parameters: ``prefixMatchInfoProducerName`` (""), ``matchLengthWeight`` (0), ``matchLengthScaleTokens`` (8192)."""

    type = "prefix-cache-scorer"
    Params = PrefixScorerParams

    def __init__(self, name: str | None = None, params: PrefixScorerParams | None = None):
        super().__init__(name, params)
        p = self.p = params or PrefixScorerParams()
        self.key = key(PREFIX_MATCH, p.prefix_match_info_producer_name)

    def data_consumed(self) -> tuple[set[str], set[str]]:
        return {self.key}, set()

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        infos = state.get(self.key) or {}
        w, scale = self.p.match_length_weight, self.p.match_length_scale_tokens
        out = {}
        for ep in eps:
            info = infos.get(ep.name)
            if info is None or info.total_blocks <= 0:
                out[ep] = 0.0
                continue
            score = info.match_blocks / info.total_blocks
            if w > 0 and info.block_size_tokens > 0:
                length = min(1.0, info.match_blocks * info.block_size_tokens / scale)
                score = w * length * length + (1 - w) * score
            out[ep] = score
        return out


class TokenLoadParams(Params):
    queue_threshold_tokens: int = Field(TOKEN_THRESHOLD, alias="queueThresholdTokens",
                                        description="in-flight tokens that score 0 (≤ 0 means 4194304)")
    in_flight_load_producer_name: str = Field("", alias="inFlightLoadProducerName",
                                              description="the inflight-load-producer read (default: "
                                                          "inflight-load-producer)")


class TokenLoadScorer(PluginBase):
    """``token-load-scorer`` of llm-d-router v0.10.0: less in-flight token load scores higher (module docstring).
    Parameters: ``queueThresholdTokens`` (4194304), ``inFlightLoadProducerName`` ("")."""

    type = "token-load-scorer"
    Params = TokenLoadParams

    def __init__(self, name: str | None = None, params: TokenLoadParams | None = None):
        super().__init__(name, params)
        p = self.p = params or TokenLoadParams()
        self.threshold = float(p.queue_threshold_tokens if p.queue_threshold_tokens > 0 else TOKEN_THRESHOLD)
        self.inflight_key = key(INFLIGHT, p.in_flight_load_producer_name)
        self.uncached_key = key(UNCACHED, p.in_flight_load_producer_name)

    def data_consumed(self) -> tuple[set[str], set[str]]:
        return {self.inflight_key, self.uncached_key}, set()

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        producer = state.get(self.inflight_key)
        uncached = state.get(self.uncached_key) or {}
        t = self.threshold
        out = {}
        for ep in eps:
            load = (producer.load(ep.name)[0] if producer is not None else 0) + uncached.get(ep.name, 0)
            out[ep] = 1.0 if load <= 0 else 1.0 - min(load, t) / t
        return out


class ActiveRequestParams(Params):
    request_timeout: str = Field("", alias="requestTimeout",
                                 description="deprecated and ignored: in-flight requests are tracked by "
                                             "inflight-load-producer")
    idle_threshold: int = Field(0, alias="idleThreshold", description="requests at or under which an endpoint "
                                                                     "is idle and scores 1.0 (negative: 0)")
    max_busy_score: float | None = Field(None, alias="maxBusyScore", description="the best busy endpoint's score "
                                                                                "(1.0; outside [0, 1] ignored)")
    in_flight_load_producer_name: str = Field("", alias="inFlightLoadProducerName",
                                              description="the inflight-load-producer read (default: "
                                                          "inflight-load-producer, created when absent)")

    @field_validator("request_timeout")
    @classmethod
    def _deprecated(cls, value: str, info: ValidationInfo) -> str:
        if value:
            note(info, "DEPRECATED: requestTimeout is deprecated and ignored; inflight tracking is handled by "
                       "inflight-load-producer (llm-d-router v0.10.0's warning)")
        return value

    @field_validator("max_busy_score")
    @classmethod
    def _range(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and not 0 <= value <= 1:
            note(info, f"{value} is out of range; the default 1.0 applies, as llm-d-router v0.10.0 ignores it")
            return None
        return value


class ActiveRequestScorer(PluginBase):
    """``active-request-scorer`` of llm-d-router v0.10.0: fewer in-flight requests score higher, counted by the
    ``inflight-load-producer`` (module docstring). Parameters: ``idleThreshold`` (0), ``maxBusyScore`` (1.0),
    ``inFlightLoadProducerName`` (""), ``requestTimeout`` (deprecated, ignored)."""

    type = "active-request-scorer"
    Params = ActiveRequestParams

    def __init__(self, name: str | None = None, params: ActiveRequestParams | None = None):
        super().__init__(name, params)
        p = self.p = params or ActiveRequestParams()
        self.idle = max(p.idle_threshold, 0)
        self.busy = 1.0 if p.max_busy_score is None else p.max_busy_score
        self.inflight_key = key(INFLIGHT, p.in_flight_load_producer_name)

    def data_consumed(self) -> tuple[set[str], set[str]]:
        return {self.inflight_key}, set()

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        producer = state.get(self.inflight_key)
        counts = {ep: producer.load(ep.name)[1] if producer is not None else 0 for ep in eps}
        top = max(counts.values(), default=0)
        return {ep: 1.0 if n <= self.idle else (top - n) / top * self.busy for ep, n in counts.items()}


class NoHitLRUParams(Params):
    lru_size: int = Field(DEFAULT_LRU_SIZE, alias="lruSize", description="endpoints remembered (≤ 0: 1024)")
    prefix_match_info_producer_name: str = Field("", alias="prefixMatchInfoProducerName",
                                                 description="the producer whose matches tell a cold request "
                                                             "(default: the approximate one)")
    prefix_plugin_name: str = Field("", alias="prefixPluginName", description="deprecated upstream: never used")
    prefix_plugin_type: str = Field("", alias="prefixPluginType", description="deprecated upstream: never used")


class NoHitLRUScorer(PluginBase):
    """``no-hit-lru-scorer`` of llm-d-router v0.10.0: spreads cold requests over the least recently used endpoints
    (module docstring). Parameters: ``lruSize`` (1024), ``prefixMatchInfoProducerName`` (""), ``prefixPluginName``
    and ``prefixPluginType`` (deprecated, unused)."""

    type = "no-hit-lru-scorer"
    Params = NoHitLRUParams

    def __init__(self, name: str | None = None, params: NoHitLRUParams | None = None):
        super().__init__(name, params)
        p = self.p = params or NoHitLRUParams()
        self.size = p.lru_size if p.lru_size > 0 else DEFAULT_LRU_SIZE
        self.key = key(PREFIX_MATCH, p.prefix_match_info_producer_name)
        self.lru: OrderedDict[str, None] = OrderedDict()  # oldest first

    def data_consumed(self) -> tuple[set[str], set[str]]:
        return {self.key}, set()

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        infos = state.get(self.key) or {}
        cold = not any((i := infos.get(ep.name)) is not None and i.match_blocks > 0 for ep in eps)
        state[self.name] = cold
        if not cold:
            return dict.fromkeys(eps, 0.5)
        n = len(eps)
        if n == 1:
            return {eps[0]: 1.0}
        position = {name: i for i, name in enumerate(self.lru)}
        never = [ep for ep in eps if ep.name not in position]
        out = {ep: 1.0 - r / (n - 1) for r, ep in enumerate(never)}
        for ep in eps:
            if ep.name in position:
                out[ep] = max(0.0, 1.0 - (len(never) + position[ep.name]) / (n - 1))
        return out

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        if state.get(self.name) is not True:
            return
        self.lru.pop(ep.name, None)
        self.lru[ep.name] = None
        while len(self.lru) > self.size:
            self.lru.popitem(last=False)


class LoraAffinityScorer(PluginBase):
    """``lora-affinity-scorer`` of llm-d-router v0.10.0: prefer servers with the request's LoRA adapter loaded or
    room to load it (module docstring). No parameters."""

    type = "lora-affinity-scorer"

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        out = {}
        for ep in eps:
            m = ep.metrics
            running = getattr(m, "lora_running", None) or {}
            waiting = getattr(m, "lora_waiting", None) or {}
            if req.model in running:
                out[ep] = 1.0
            elif len(running) + len(waiting) < (getattr(m, "max_lora", None) or 0):
                out[ep] = 0.8
            elif req.model in waiting:
                out[ep] = 0.6
            else:
                out[ep] = 0.0
        return out
