"""The per-request data llm-d-router v0.10.0's producers write and its scorers and filters read.

Upstream, a data producer puts an attribute on each candidate endpoint under a *data key*, the data type
and the producer's name (``PrefixCacheMatchInfoDataKey/approx-prefix-cache-producer``); a consumer names
the producer it reads (``prefixMatchInfoProducerName``) or, when it names none, reads the type's default
producer. The loader creates a default producer (with no parameters) for every key a consumer requires and
nobody produces, when the type has one (``datalayer.CreateMissingDataProducers``), and refuses a config
that leaves a required key without one. In the kit, each cycle's ``CycleState`` holds the data under the
same key: a dict of endpoint name → value (``MatchInfo``, uncached tokens), or for the in-flight load the
producer itself, read live.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TOKENIZED_PROMPT = "TokenizedPrompt"
PREFIX_MATCH = "PrefixCacheMatchInfoDataKey"
INFLIGHT = "InFlightLoadDataKey"
UNCACHED = "UncachedRequestTokensDataKey"

# The type whose instance a consumer reads when it names no producer (the key's default producer name).
DEFAULT_NAMES = {TOKENIZED_PROMPT: "token-producer", PREFIX_MATCH: "approx-prefix-cache-producer",
                 INFLIGHT: "inflight-load-producer", UNCACHED: "inflight-load-producer"}
# Keys a default producer is registered for (RegisterAsDefaultProducer): created when missing. The uncached
# request tokens have no registered default, so a consumer of them needs an inflight-load-producer configured.
DEFAULT_PRODUCERS = {TOKENIZED_PROMPT: "token-producer", PREFIX_MATCH: "approx-prefix-cache-producer",
                     INFLIGHT: "inflight-load-producer"}
SPECULATIVE_TIER = "speculative"


def key(kind: str, producer: str = "") -> str:
    """The data key ``<kind>/<producer>``; no producer name means the kind's default producer."""
    return f"{kind}/{producer or DEFAULT_NAMES[kind]}"


def kind_of(data_key: str) -> str:
    return data_key.split("/", 1)[0]


@dataclass(slots=True)
class MatchInfo:
    """``PrefixCacheMatchInfo``: an endpoint's matched prefix (blocks; the precise producer's is tier-weighted and
    truncated to an integer), the request's blocks, the block size, and the unweighted cached-block counts."""

    match_blocks: int
    total_blocks: int
    block_size_tokens: int
    cached_blocks: int = -1  # -1: the same as match_blocks
    by_tier: dict[str, int] | None = field(default=None, repr=False)

    @property
    def ratio(self) -> float:
        return self.match_blocks / self.total_blocks if self.total_blocks > 0 else 0.0

    @property
    def cached(self) -> int:
        return self.match_blocks if self.cached_blocks < 0 else self.cached_blocks
