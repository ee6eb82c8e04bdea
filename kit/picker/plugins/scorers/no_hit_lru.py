"""``no-hit-lru-scorer`` (llm-d): spread requests that hit no cache over the least recently used endpoints.

A request is *cold* when the prefix scorer named ``prefixPluginName`` found no endpoint holding any of
its blocks in this cycle (or did not run before this scorer). Warm requests score 0.5 everywhere.
Cold requests rank the candidates: those never sent a cold request first (in candidate order), then
the others from least to most recently sent one; with n candidates the endpoint at rank r scores
1 − r / (n − 1) (a single candidate scores 1.0). After the pick (``PreRequest``) a cold request moves
the chosen endpoint to the most recent end of an LRU of ``lruSize`` endpoints. This follows
llm-d-inference-scheduler v0.7.0.

Parameters: ``lruSize`` (1024; ≤ 0 means the default), ``prefixPluginName`` (``prefix-cache-scorer``),
``prefixPluginType`` (accepted for compatibility; the name is what the kit reads).

Example::

    plugins:
    - type: prefix-cache-scorer
    - type: no-hit-lru-scorer
      parameters:
        lruSize: 2048
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

from pydantic import Field

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase, positive_or
from kit.picker.plugins.approx_prefix import PrefixMatch

DEFAULT_LRU_SIZE = 1024


class NoHitLRUParams(Params):
    lru_size: Annotated[int, positive_or(DEFAULT_LRU_SIZE)] = Field(DEFAULT_LRU_SIZE, alias="lruSize",
                                                                    description="endpoints remembered (≤ 0: 1024)")
    prefix_plugin_name: str = Field("prefix-cache-scorer", alias="prefixPluginName",
                                    description="the prefix plugin whose matches are read")
    prefix_plugin_type: str = Field("prefix-cache-scorer", alias="prefixPluginType",
                                    description="its type")


class NoHitLRUScorer(PluginBase):
    """``no-hit-lru-scorer`` of llm-d-inference-scheduler v0.7.0: spreads cold requests over the least recently used
    endpoints (module docstring). Parameters: ``lruSize`` (1024), ``prefixPluginName`` and ``prefixPluginType``
    (prefix-cache-scorer)."""

    type = "no-hit-lru-scorer"
    Params = NoHitLRUParams

    def __init__(self, name: str | None = None, params: NoHitLRUParams | None = None):
        super().__init__(name, params)
        self.p = params or NoHitLRUParams()
        self.lru: OrderedDict[str, None] = OrderedDict()  # oldest first

    def _cold(self, state: CycleState) -> bool:
        match = state.get(self.p.prefix_plugin_name)
        return not (isinstance(match, PrefixMatch) and match.servers)

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        cold = self._cold(state)
        state[self.name] = cold
        if not cold:
            return dict.fromkeys(eps, 0.5)
        if len(eps) == 1:
            return {eps[0]: 1.0}
        position = {name: i for i, name in enumerate(self.lru)}
        never = [ep for ep in eps if ep.name not in position]
        used = [ep for ep in eps if ep.name in position]
        span = len(eps) - 1
        out = {ep: 1.0 - rank / span for rank, ep in enumerate(never)}
        for ep in used:
            out[ep] = max(0.0, 1.0 - (len(never) + position[ep.name]) / span)
        return out

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        if state.get(self.name) is not True:  # warm, or this scorer did not run in the cycle
            return
        self.lru.pop(ep.name, None)
        self.lru[ep.name] = None
        while len(self.lru) > self.p.lru_size:
            self.lru.popitem(last=False)
