"""``inflight-load-producer`` (llm-d-router v0.10.0): requests and tokens this picker has in flight on each endpoint.

Upstream's package ``requestcontrol/dataproducer/inflightload``. It counts, per endpoint, the requests it
sent that have not finished and the tokens they still cost, and offers both live as the ``InFlightLoad``
attribute (read by ``token-load-scorer``, ``active-request-scorer`` and the TTFT gate of
``prefix-cache-affinity-filter``). Per request:

* **Produce** (before the profile runs): for each candidate, the tokens this request would add there, the
  ``UncachedRequestTokens`` attribute: the prompt's tokens (``InferenceRequest.tokens``; 0 without a token
  producer's tokens) less the prefix that endpoint already holds, from the ``PrefixCacheMatchInfo`` of the
  producer named by ``prefixMatchInfoProducerName`` (default the approximate one): (blocks − matched) ×
  block size, plus whatever lies beyond the blocks hashed. With ``addEstimatedOutputTokens`` it adds the
  expected output, round(prompt tokens × ``outputRatio``), capped by the request's own ``max_tokens`` /
  ``max_completion_tokens`` and by ``maxEstimatedOutputTokens``;
* **PreRequest**: the chosen endpoint gains one request and those tokens;
* **first chunk of the answer** (``response_start``): without ``addEstimatedOutputTokens`` the tokens are
  released (the prefill is done); the request stays counted;
* **end of the answer** (``response_complete``, also on failure): whatever is left is released.

Parameters: ``addEstimatedOutputTokens`` (false), ``outputRatio`` (1.5, ≥ 0), ``maxEstimatedOutputTokens``
(none, ≥ 0), ``prefixMatchInfoProducerName`` (""), ``syncCrossReplicaState`` (true; the kit runs one picker
state per replica and has no cross-replica syncer). **Kit-only**: upstream's per-endpoint
``llm_d_epp_inflight_*`` gauges are not exported.

Example::

    plugins:
    - type: inflight-load-producer
      parameters:
        prefixMatchInfoProducerName: precise-prefix-cache-producer
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase
from kit.picker.plugins.router.data import INFLIGHT, PREFIX_MATCH, TOKENIZED_PROMPT, UNCACHED, MatchInfo, key

DEFAULT_OUTPUT_RATIO = 1.5


class InflightParams(Params):
    add_estimated_output_tokens: bool = Field(False, alias="addEstimatedOutputTokens",
                                              description="also count the expected output tokens until the answer "
                                                          "ends")
    output_ratio: float | None = Field(None, alias="outputRatio", ge=0,
                                       description="expected output tokens per prompt token (1.5 when unset)")
    max_estimated_output_tokens: int | None = Field(None, alias="maxEstimatedOutputTokens", ge=0,
                                                    description="cap on the expected output tokens (none when "
                                                                "unset)")
    prefix_match_info_producer_name: str = Field("", alias="prefixMatchInfoProducerName",
                                                 description="the prefix producer whose matches discount the "
                                                             "cached part (default: the approximate one)")
    sync_cross_replica_state: bool | None = Field(None, alias="syncCrossReplicaState",
                                                  description="share the load with other EPP replicas (true when "
                                                              "unset; the kit has no cross-replica syncer)")


def go_round(x: float) -> int:
    """Go's math.Round for the non-negative values here: halves away from zero."""
    return math.floor(x + 0.5)


def client_max_tokens(req: InferenceRequest) -> int | None:
    """The request's own output cap (chat: ``max_completion_tokens`` then ``max_tokens``; completions:
    ``max_tokens``), when it sets one."""
    body = req.body or {}
    names = ("max_completion_tokens", "max_tokens") if req.messages is not None else ("max_tokens",)
    for name in names:
        v = body.get(name)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return int(v)
    return None


class InflightLoadProducer(PluginBase):
    """``inflight-load-producer`` of llm-d-router v0.10.0 (see the module docstring). Parameters:
    ``addEstimatedOutputTokens`` (false), ``outputRatio`` (1.5), ``maxEstimatedOutputTokens`` (none),
    ``prefixMatchInfoProducerName`` (""), ``syncCrossReplicaState`` (true)."""

    type = "inflight-load-producer"
    Params = InflightParams

    def __init__(self, name: str | None = None, params: InflightParams | None = None):
        super().__init__(name, params)
        p = self.p = params or InflightParams()
        self.ratio = DEFAULT_OUTPUT_RATIO if p.output_ratio is None else p.output_ratio
        self.inflight_key, self.uncached_key = key(INFLIGHT, self.name), key(UNCACHED, self.name)
        self.prefix_key = key(PREFIX_MATCH, p.prefix_match_info_producer_name)
        self.tokens: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.live: dict[int, list[Any]] = {}  # id(request) → [request, endpoint, tokens still counted]

    def data_produced(self) -> set[str]:
        return {self.inflight_key, self.uncached_key}

    def data_consumed(self) -> tuple[set[str], set[str]]:
        return {key(TOKENIZED_PROMPT)}, {self.prefix_key}

    def load(self, endpoint: str) -> tuple[int, int]:
        """``InFlightLoad`` of ``endpoint``: (tokens, requests), now."""
        return self.tokens.get(endpoint, 0), self.requests.get(endpoint, 0)

    def estimate_output(self, prompt_tokens: int, req: InferenceRequest) -> int:
        if prompt_tokens <= 0:
            return 0
        est = go_round(prompt_tokens * self.ratio)
        cap = client_max_tokens(req)
        if cap is not None and 0 <= cap < est:
            est = cap
        limit = self.p.max_estimated_output_tokens
        if limit is not None and limit < est:
            est = limit
        return est

    def request_tokens(self, info: MatchInfo | None, prompt_tokens: int, req: InferenceRequest) -> int:
        """What the request costs an endpoint: its uncached prompt tokens (and the expected output)."""
        if info is None or info.block_size_tokens <= 0:
            uncached = max(prompt_tokens, 0)
        else:
            indexed = info.total_blocks * info.block_size_tokens
            uncached = max(indexed - info.match_blocks * info.block_size_tokens, 0) + max(prompt_tokens - indexed, 0)
        if self.p.add_estimated_output_tokens:
            uncached += self.estimate_output(prompt_tokens, req)
        return uncached

    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        n = len(req.tokens) if req.tokens else 0
        infos = state.get(self.prefix_key) or {}
        state[self.uncached_key] = {ep.name: self.request_tokens(infos.get(ep.name), n, req) for ep in eps}
        state[self.inflight_key] = self

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        n = len(req.tokens) if req.tokens else 0
        tokens = self.request_tokens((state.get(self.prefix_key) or {}).get(ep.name), n, req)
        self.requests[ep.name] = self.requests.get(ep.name, 0) + 1
        self.tokens[ep.name] = self.tokens.get(ep.name, 0) + tokens
        old = self.live.pop(id(req), None)
        if old is not None:  # scheduled again (a retry) before the first answer ended: release that one first
            self._release(old, requests=True)
        self.live[id(req)] = [req, ep.name, tokens]

    def _release(self, entry: list[Any], requests: bool) -> None:
        _, name, tokens = entry
        if tokens:
            self.tokens[name] = max(self.tokens.get(name, 0) - tokens, 0)
            entry[2] = 0
        if requests:
            self.requests[name] = max(self.requests.get(name, 0) - 1, 0)

    def response_start(self, req: InferenceRequest, ep: Endpoint) -> None:
        """The first chunk arrived: the prompt is computed, so its tokens leave the count (unless the expected
        output is counted too, which leaves at the end)."""
        entry = self.live.get(id(req))
        if entry is not None and not self.p.add_estimated_output_tokens and entry[1] == ep.name:
            self._release(entry, requests=False)

    def response_complete(self, req: InferenceRequest, ep: Endpoint) -> None:
        entry = self.live.get(id(req))
        if entry is not None and entry[1] == ep.name:
            del self.live[id(req)]
            self._release(entry, requests=True)
