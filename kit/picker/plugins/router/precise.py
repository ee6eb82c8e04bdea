"""``precise-prefix-cache-producer`` (llm-d-router v0.10.0) and the deprecated ``precise-prefix-cache-scorer``.

Upstream's packages ``requestcontrol/dataproducer/preciseprefixcache`` and ``scheduling/scorer/preciseprefixcache``.
The producer keeps the index of what each vLLM server's KV cache really holds (``kv_index``: its KV-cache
events over ZMQ) and, per request, writes each candidate's ``PrefixCacheMatchInfo``: the leading blocks of
the prompt it holds, tier-weighted and truncated to an integer, over the prompt's blocks, with the
unweighted count and the count per tier. ``prefix-cache-scorer`` (with ``prefixMatchInfoProducerName`` set to
this producer's name) scores them matched / total, so scores are absolute, no longer min-max as in v0.7.

It hashes the request's tokens (``InferenceRequest.tokens``, from a ``token-producer``; the loader creates an
estimate one when none is configured, whose pseudo-tokens match no server's blocks) into full blocks of
``tokenProcessorConfig.blockSizeTokens`` (16; the deprecated ``blockSize`` is read when ``blockSizeTokens``
is not set), chained FNV-64a over canonical CBOR from ``hashSeed`` and the model, with the request's cache
salt folded into the first block. A request without tokens gets no match data (the scorer then scores 0).

Events: ``kvEventsConfig.zmqEndpoint`` set: the producer binds it and every server connects to it (the
central mode); ``discoverPods`` (true) with the producer wired as an extractor of an
``endpoint-notification-source`` under ``dataLayer``: it connects to ``tcp://<endpoint host>:<socketPort>``
(5557) of every endpoint (the kit: as each is first scored). ``topicFilter`` ``kv@``. ``engineType``: ``vllm``
(``sglang`` is accepted as upstream accepts it, but the kit decodes vLLM's events only: a warning).
``replaySocketPort``, ``podLabelSelector``, ``podNamespace`` and ``concurrency`` are accepted; the kit does not
ask for replays, has no pod watch, and applies events in one thread. ``AllBlocksCleared`` clears the server.

``speculativeIndexing`` (false): after each pick the chosen endpoint holds the request's blocks as
speculative entries for ``speculativeTTL`` (``2s``; a Go duration) on the picker's clock. ``indexerConfig``:
``kvBlockIndexConfig`` (``inMemoryConfig`` ``size`` 1e8 keys and ``podCacheSize`` 10; ``enableMetrics``:
``llm_d_router_epp_kv_cache_index_*`` gauges, with the deprecated ``kvcache_index_*`` names;
``metricsLoggingInterval`` in nanoseconds, accepted; ``redisConfig`` and ``costAwareMemoryConfig`` accepted,
the kit's index is always in memory: a warning), ``kvCacheBackendConfigs`` (tier weights, gpu 1.0, cpu 0.8).
The producer refuses ``indexerConfig.tokenizersPoolConfig`` (configure a token-producer instead).

``precise-prefix-cache-scorer`` (deprecated upstream, to be removed in v0.11) takes the same parameters. When
a ``precise-prefix-cache-producer`` is configured before it, it is a ``prefix-cache-scorer`` reading that
producer and its own parameters are ignored (a warning); otherwise it holds its own producer, named like
itself, and scores its matches. With ``indexerConfig.tokenizersPoolConfig`` it tokenizes the prompt itself
when no token producer did (upstream: a tokenizer sidecar; **kit-only**: ``kit.tokenizer``, the simulator's
tokenizer; the section's contents are not checked).

Example::

    plugins:
    - type: token-producer
      parameters:
        modelName: Qwen/Qwen3-0.6B
        vllm: {url: "http://127.0.0.1:8001"}
    - type: precise-prefix-cache-producer
      parameters:
        tokenProcessorConfig: {blockSizeTokens: 64}
        kvEventsConfig: {zmqEndpoint: "tcp://*:5557", discoverPods: false}
    - type: prefix-cache-scorer
      parameters:
        prefixMatchInfoProducerName: precise-prefix-cache-producer
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase, note, parse_duration
from kit.picker.plugins.datalayer import ENDPOINTS
from kit.picker.plugins.kv_events import decode_batch
from kit.picker.plugins.kv_index import TIER_WEIGHTS, IndexStats, parse_topic
from kit.picker.plugins.kv_subscriber import Subscriber
from kit.picker.plugins.router.data import PREFIX_MATCH, TOKENIZED_PROMPT, MatchInfo, key
from kit.picker.plugins.router.kv_index import Entry, Index, Pool, Tokens, held_blocks, longest_prefix
from kit.picker.plugins.router.scorers import PrefixCacheScorer, PrefixScorerParams
from kit.picker.plugins.router.tokens import kit_tokens

log = logging.getLogger(__name__)
DEFAULT_TTL = 2.0
SUBSCRIPTION_TIMEOUT = 600.0


class TokenProcessorParams(Params):
    block_size: int = Field(0, alias="blockSize", description="deprecated: tokens per block, read when "
                                                              "blockSizeTokens is not set")
    block_size_tokens: int = Field(0, alias="blockSizeTokens", description="tokens per block of the index's keys "
                                                                           "(16 when neither is set)")
    hash_seed: str = Field("", alias="hashSeed", description="seeds the chain of block keys")

    @property
    def effective(self) -> int:
        if self.block_size_tokens == 0 and self.block_size > 0:
            return self.block_size
        return self.block_size_tokens or 16


class InMemoryParams(Params):
    size: int = Field(100_000_000, gt=0, description="block keys the index holds at most")
    pod_cache_size: int = Field(10, alias="podCacheSize", gt=0, description="endpoints recorded per block key")


class RedisParams(Params):
    address: str = Field("", description="Redis server (the kit keeps its index in memory)")


class CostAwareParams(Params):
    size: str = Field("", description="memory budget, e.g. 2GiB (the kit keeps a key-count LRU)")


class BlockIndexParams(Params):
    in_memory_config: InMemoryParams = Field(default_factory=InMemoryParams, alias="inMemoryConfig",
                                             description="the in-memory index")
    redis_config: RedisParams | None = Field(None, alias="redisConfig", description="a Redis index (not in the kit)")
    cost_aware_memory_config: CostAwareParams | None = Field(None, alias="costAwareMemoryConfig",
                                                             description="a memory-budget index (not in the kit)")
    enable_metrics: bool = Field(False, alias="enableMetrics", description="export the index's gauges")
    metrics_logging_interval: int = Field(0, alias="metricsLoggingInterval",
                                          description="nanoseconds between metric log lines (accepted, not logged)")


class Backend(Params):
    name: str = Field(description="a device tier: gpu, cpu, ...")
    weight: float = Field(description="a held block's weight in that tier")


class ScorerStrategy(Params):
    scoring_strategy: Literal["", "LongestPrefix"] = Field("", alias="ScoringStrategy",
                                                           description="only LongestPrefix exists")
    backend_configs: list[Backend] | None = Field(None, alias="backendConfigs",
                                                  description="overridden by kvCacheBackendConfigs")


class IndexerParams(Params):
    kv_block_index_config: BlockIndexParams = Field(default_factory=BlockIndexParams, alias="kvBlockIndexConfig",
                                                    description="the index backend")
    kv_block_scorer_config: ScorerStrategy | None = Field(None, alias="KVBlockScorerConfig",
                                                          description="upstream's untagged field (accepted)")
    kv_cache_backend_configs: list[Backend] | None = Field(None, alias="kvCacheBackendConfigs",
                                                           description="tier weights (gpu 1.0, cpu 0.8)")
    tokenizers_pool_config: dict[str, Any] | None = Field(None, alias="tokenizersPoolConfig",
                                                          description="deprecated in-process tokenizer pool (only "
                                                                      "the deprecated scorer accepts it)")


class PodDiscoveryParams(Params):
    pod_label_selector: str = Field("llm-d.ai/inference-serving=true", alias="podLabelSelector",
                                    description="pods watched (the kit subscribes to its endpoints)")
    pod_namespace: str = Field("", alias="podNamespace", description="namespace watched (accepted)")
    socket_port: int = Field(5557, alias="socketPort", gt=0, lt=65536, description="each server's ZMQ PUB port")
    replay_socket_port: int = Field(0, alias="replaySocketPort", description="each server's replay port (the kit "
                                                                             "asks for no replays)")


class KVEventsParams(Params):
    zmq_endpoint: str = Field("", alias="zmqEndpoint", description="bound when set: every server connects to it")
    topic_filter: str = Field("kv@", alias="topicFilter", description="ZMQ subscription prefix")
    concurrency: int = Field(4, gt=0, description="event workers (the kit applies events in one thread)")
    engine_type: Literal["", "vllm", "sglang"] = Field("", alias="engineType", description="whose events "
                                                                                          "(vllm when empty)")
    discover_pods: bool = Field(True, alias="discoverPods", description="connect to every endpoint's socket "
                                                                       "(when wired under dataLayer)")
    pod_discovery_config: PodDiscoveryParams = Field(default_factory=PodDiscoveryParams, alias="podDiscoveryConfig",
                                                     description="per-endpoint sockets")


class PreciseParams(Params):
    token_processor_config: TokenProcessorParams = Field(default_factory=TokenProcessorParams,
                                                         alias="tokenProcessorConfig", description="block keys")
    indexer_config: IndexerParams = Field(default_factory=IndexerParams, alias="indexerConfig",
                                          description="the index")
    kv_events_config: KVEventsParams = Field(default_factory=KVEventsParams, alias="kvEventsConfig",
                                             description="where the KV-cache events come from")
    speculative_indexing: bool = Field(False, alias="speculativeIndexing",
                                       description="count the chosen endpoint as holding the blocks at once")
    speculative_ttl: str = Field("", alias="speculativeTTL", description="how long speculative entries live, a Go "
                                                                        "duration (2s when empty or ≤ 0)")

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> PreciseParams:
        tp = self.token_processor_config
        if tp.block_size_tokens < 0 or (tp.block_size_tokens == 0 and tp.block_size < 0):
            raise ValueError(f"tokenProcessorConfig: blockSizeTokens must be greater than 0, got "
                             f"{tp.block_size_tokens or tp.block_size}")
        if self.speculative_ttl:
            parse_duration(self.speculative_ttl)
        mem, ev = self.indexer_config.kv_block_index_config, self.kv_events_config
        if mem.redis_config is not None or mem.cost_aware_memory_config is not None:
            note(info, "indexerConfig.kvBlockIndexConfig: kit-only: the index is always the in-memory one "
                       "(redisConfig and costAwareMemoryConfig are accepted, not used)")
        if ev.engine_type == "sglang":
            note(info, "kvEventsConfig.engineType: sglang is accepted, but the kit decodes vLLM's events only")
        if ev.pod_discovery_config.replay_socket_port > 0:
            note(info, "kvEventsConfig.podDiscoveryConfig.replaySocketPort: accepted; the kit asks for no replays")
        strategy = self.indexer_config.kv_block_scorer_config
        if strategy is not None and strategy.scoring_strategy not in ("", "LongestPrefix"):
            raise ValueError("unsupported scoring strategy")
        return self

    @property
    def ttl(self) -> float:
        t = parse_duration(self.speculative_ttl) if self.speculative_ttl else 0.0
        return t if t > 0 else DEFAULT_TTL


class ProducerParams(PreciseParams):
    @model_validator(mode="after")
    def _tokens_only(self) -> ProducerParams:
        if self.indexer_config.tokenizers_pool_config is not None:
            raise ValueError("tokenizersPoolConfig is not supported; configure a token-producer plugin instead")
        return self


class PrecisePrefixProducer(PluginBase):
    """``precise-prefix-cache-producer`` of llm-d-router v0.10.0: each endpoint's held prefix, from the servers'
    KV-cache events (module docstring). Parameters: ``tokenProcessorConfig`` (``blockSizeTokens`` 16,
    ``blockSize`` deprecated, ``hashSeed``), ``indexerConfig``, ``kvEventsConfig`` (``zmqEndpoint``,
    ``topicFilter`` kv@, ``concurrency`` 4, ``engineType``, ``discoverPods`` true, ``podDiscoveryConfig``
    ``socketPort`` 5557), ``speculativeIndexing`` (false), ``speculativeTTL`` (2s)."""

    type = "precise-prefix-cache-producer"
    Params = ProducerParams

    def __init__(self, name: str | None = None, params: PreciseParams | None = None):
        super().__init__(name, params)
        p = self.p = params or ProducerParams()
        mem = p.indexer_config.kv_block_index_config
        self.stats = IndexStats() if mem.enable_metrics else None
        self.tokens = Tokens(p.token_processor_config.effective, p.token_processor_config.hash_seed)
        self.index = Index(mem.in_memory_config.size, mem.in_memory_config.pod_cache_size, self.stats)
        self.pool = Pool(self.index, self.tokens)
        backends = p.indexer_config.kv_cache_backend_configs
        self.weights = {b.name: b.weight for b in backends} if backends is not None else dict(TIER_WEIGHTS)
        self.key = key(PREFIX_MATCH, self.name)
        self.speculative: list[tuple[float, list[int], Entry]] = []
        self.wired = False  # an endpoint-notification-source feeds it (dataLayer): it subscribes per endpoint
        self.seen: dict[str, float] = {}
        self.subscriber: Subscriber | None = None
        self._finalizer: weakref.finalize | None = None
        self.in_process = False
        self.sinks: list[Pool] = [self.pool]

    # --------------------------------------------------------------- data and events
    def data_produced(self) -> set[str]:
        return {self.key}

    def data_consumed(self) -> tuple[set[str], set[str]]:
        return {key(TOKENIZED_PROMPT)}, set()

    def consumes(self) -> str:
        """As a data-layer extractor it reads endpoint notifications."""
        return ENDPOINTS

    @property
    def block_size(self) -> int | None:
        """None: the events may use any block size (the index maps engine blocks to its own)."""
        return None

    def receive(self, topic: str, payload: bytes) -> None:
        pod, model = parse_topic(topic)
        events = decode_batch(payload)[1]
        for pool in self.sinks:
            pool.apply(pod, model, events)

    def feed(self, other: PrecisePrefixProducer) -> None:
        """Kit-only (picker replicas in one process): messages this producer reads update ``other``'s index too."""
        other.in_process = True
        self.sinks.append(other.pool)

    def start(self) -> None:
        if self.subscriber is not None or self.in_process:
            return
        sinks = self.sinks

        def handle(topic: str, _seq: int, payload: bytes) -> None:
            pod, model = parse_topic(topic)
            events = decode_batch(payload)[1]
            for pool in sinks:
                pool.apply(pod, model, events)

        ev = self.p.kv_events_config
        self.subscriber = Subscriber(handle, ev.topic_filter, ev.zmq_endpoint)
        self._finalizer = weakref.finalize(self, self.subscriber.close)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def _subscribe(self, eps: list[Endpoint]) -> None:
        if self.in_process:
            return
        self.start()
        ev = self.p.kv_events_config
        if not (self.wired and ev.discover_pods):
            return
        now = self.clock()
        for ep in eps:
            self.seen[ep.name] = now
            self.subscriber.ensure(ep.name, f"tcp://{ep.name.rsplit(':', 1)[0]}:{ev.pod_discovery_config.socket_port}")
        for name, at in list(self.seen.items()):
            if now - at > SUBSCRIPTION_TIMEOUT:
                del self.seen[name]
                self.subscriber.remove(name)

    def _expire(self) -> None:
        now = self.clock()
        while self.speculative and self.speculative[0][0] <= now:
            _, keys, entry = self.speculative.pop(0)
            for k in keys:
                self.index.evict(k, [entry], engine_key=False)

    # --------------------------------------------------------------- per request
    def request_keys(self, req: InferenceRequest) -> list[int]:
        tokens = req.tokens
        if not tokens:
            return []
        blocks = len(tokens) // self.tokens.block_size
        extras = [(req.cache_salt,)] + [None] * (blocks - 1) if req.cache_salt and blocks else None
        return self.tokens.keys_with(tokens, req.model, 0, extras)

    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        self._subscribe(eps)
        self._expire()
        keys = self.request_keys(req)
        if not keys:
            return
        start = self.clock()
        found = self.index.lookup(keys, {ep.name for ep in eps})
        scores = longest_prefix(keys, found, self.weights)
        if self.stats:
            self.stats.lookup_seconds += self.clock() - start
            best = max(scores.values(), default=0.0)
            self.stats.max_pod_hits += best
            self.stats.hits += best
        total, bs = len(keys), self.tokens.block_size
        infos = {}
        for ep in eps:
            count, by_tier = held_blocks(keys, found, ep.name) if ep.name in scores else (0, {})
            infos[ep.name] = MatchInfo(int(scores.get(ep.name, 0.0)), total, bs, count, by_tier)
        state[self.key] = infos
        state[self.name + "/keys"] = keys

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        keys = state.get(self.name + "/keys")
        if not self.p.speculative_indexing or not keys:
            return
        entry = Entry(ep.name, "", True)
        self.index.add(None, keys, [entry])
        self.speculative.append((self.clock() + self.p.ttl, keys, entry))

    def gauges(self) -> dict[str, float]:
        if not self.stats:
            return {}
        out = {}
        for name, value in self.stats.gauges().items():
            out[name] = value  # the deprecated kvcache_index_* names, still emitted by v0.10.0
            out["llm_d_router_epp_kv_cache_index_" + name.removeprefix("kvcache_index_")] = value
        return out


class PrecisePrefixScorer(PluginBase):
    """``precise-prefix-cache-scorer`` of llm-d-router v0.10.0 (deprecated: configure the producer and
    ``prefix-cache-scorer``): its own ``precise-prefix-cache-producer`` and a ``prefix-cache-scorer`` in one
    plugin, or, after a configured producer, only the scorer (module docstring). Parameters: those of
    ``precise-prefix-cache-producer``, plus ``indexerConfig.tokenizersPoolConfig``."""

    type = "precise-prefix-cache-scorer"
    Params = PreciseParams

    def __init__(self, name: str | None = None, params: PreciseParams | None = None,
                 existing: PrecisePrefixProducer | None = None):
        super().__init__(name, params)
        p = self.p = params or PreciseParams()
        self.producer: PrecisePrefixProducer | None = None
        if existing is None:
            self.producer = PrecisePrefixProducer(self.name, p)
            self.producer.type = self.type
        self.tokenizes = existing is None and p.indexer_config.tokenizers_pool_config is not None
        source = existing.name if existing is not None else self.name
        self.scorer = PrefixCacheScorer(self.name, PrefixScorerParams(prefixMatchInfoProducerName=source))

    # The producer's lifecycle and events, when it has its own (nothing otherwise).
    def start(self) -> None:
        if self.producer is not None:
            self.producer.start()

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()

    def receive(self, topic: str, payload: bytes) -> None:
        if self.producer is not None:
            self.producer.receive(topic, payload)

    def feed(self, other: PrecisePrefixScorer) -> None:
        if self.producer is not None and other.producer is not None:
            self.producer.feed(other.producer)

    def consumes(self) -> str:
        return ENDPOINTS

    @property
    def wired(self) -> bool:
        return self.producer is not None and self.producer.wired

    @wired.setter
    def wired(self, value: bool) -> None:
        if self.producer is not None:
            self.producer.wired = value

    @property
    def in_process(self) -> bool:
        return self.producer is None or self.producer.in_process

    @in_process.setter
    def in_process(self, value: bool) -> None:
        if self.producer is not None:
            self.producer.in_process = value

    @property
    def block_size(self) -> int | None:
        return None

    def data_produced(self) -> set[str]:
        return self.producer.data_produced() if self.producer else set()

    def data_consumed(self) -> tuple[set[str], set[str]]:
        required = set(self.scorer.data_consumed()[0])
        if self.producer is not None and not self.tokenizes:
            required |= self.producer.data_consumed()[0]
        return required, set()

    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        if self.producer is None:
            return
        if self.tokenizes and not req.tokens:
            req.tokens = kit_tokens(req) or None
        self.producer.prepare_request_data(state, req, eps)

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        return self.scorer.score(state, req, eps)

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        if self.producer is not None:
            self.producer.pre_request(state, req, ep)

    def gauges(self) -> dict[str, float]:
        return self.producer.gauges() if self.producer else {}
