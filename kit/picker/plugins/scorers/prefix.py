"""``prefix-cache-scorer``: prefer endpoints that probably hold the prompt's prefix in their KV cache.

Approximate, as upstream: the picker never sees the servers' caches, only where it sent earlier
prompts. Score = matched blocks / prompt blocks (0 for every endpoint when the prompt is shorter
than one block). The hashing, index, ``autoTune`` and every parameter are those of
``approx-prefix-cache-producer`` (its module docstring): full blocks only, the root seeded with the
model name and ``cache_salt``, as in GIE v1.4.0.

As in GIE v1.4.0 (the version the kit pins) the scorer keeps its own index, configured by its own
parameters, and matches at score time over the filtered candidates; its ``PreRequest`` hook adds the
request's hashes to the chosen endpoint. When the config also has an ``approx-prefix-cache-producer``
(upstream's layout from v1.5), the scorer reads that producer's matches instead and its own
parameters are ignored (the loader warns if it has any).

Example::

    plugins:
    - type: prefix-cache-scorer
      parameters:
        blockSizeTokens: 16
        maxPrefixBlocksToMatch: 256
        lruCapacityPerServer: 31250
"""

from __future__ import annotations

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, PluginBase
from kit.picker.plugins.approx_prefix import ApproxPrefixCacheProducer, PrefixIndex, PrefixMatch, PrefixParams


class PrefixCacheScorer(PluginBase):
    """``prefix-cache-scorer`` of GIE v1.4.0 (the guide's EPP, llm-d-inference-scheduler v0.7.0): matched blocks /
    prompt blocks from its own index or a producer's (module docstring). Parameters: ``autoTune`` (true),
    ``blockSizeTokens`` (16), ``maxPrefixBlocksToMatch`` (256), ``maxPrefixTokensToMatch`` (0),
    ``lruCapacityPerServer`` (31250)."""

    type = "prefix-cache-scorer"
    Params = PrefixParams

    def __init__(self, name: str | None = None, params: PrefixParams | None = None):
        super().__init__(name, params)
        self.producer = ApproxPrefixCacheProducer(self.name, params)
        self.owns_producer = True

    def consume(self, producer: object) -> bool:
        """Read the matches of a configured ``approx-prefix-cache-producer`` (which indexes on its own)."""
        if not isinstance(producer, ApproxPrefixCacheProducer):
            return False
        self.producer, self.owns_producer = producer, False
        return True

    @property
    def index(self) -> PrefixIndex:
        return self.producer.index

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        match = None if self.owns_producer else state.get(self.producer.name)
        if not isinstance(match, PrefixMatch):
            match = self.producer.match(req, eps)
        state[self.name] = match
        return match.scores(eps)

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        if self.owns_producer:
            self.producer.pre_request(state, req, ep)

    def gauges(self) -> dict[str, float]:
        return self.producer.gauges() if self.owns_producer else {}
