"""``precise-prefix-cache-scorer`` (llm-d-inference-scheduler v0.7.0, llm-d-kv-cache v0.7.0): prefer the
endpoints whose KV cache *really* holds the prompt's prefix, as their vLLM servers report it.

Each vLLM server publishes its cache's changes over ZMQ (``--kv-events-config``; the simulator does too).
The scorer subscribes to every endpoint's events and keeps an index from block key to the endpoints
holding it (``kit.picker.plugins.kv_index``: keys, events, index and scoring as llm-d-kv-cache v0.7.0;
``kit.picker.plugins.kv_subscriber``: the sockets). Per request it tokenizes the prompt (the
``tokenizer`` plugin's tokens when one ran earlier in the cycle, else in process with ``kit.tokenizer``,
the simulator's tokenizer), computes the request keys, counts for each endpoint the consecutive
leading blocks it holds (weighted by tier: gpu 1.0, cpu 0.8), and normalises those counts min-max
over every endpoint that has one: the best scores 1.0, the least 0.0, all equal 1.0, an endpoint the
index does not know 0.0 (v0.7.0's ``indexedScoresToNormalizedScoredPods``; later versions divide by
the prompt's block count instead). The per-endpoint block counts go into the cycle state for
``no-hit-lru-scorer``.

**Speculative indexing** (``speculativeIndexing``, off by default): the keys are computed and looked up
before the profile runs (over the candidates only) and, once an endpoint is picked, added to the index
for it as *speculative* entries that expire after ``speculativeTTL`` (2s) on the picker's clock; they
cover the gap until the server's own ``BlockStored`` arrives.

Parameters (upstream's names; Go's defaults apply to what a config leaves out):

* ``tokenProcessorConfig``: ``blockSize`` (16; must equal the servers' block size), ``hashSeed`` ("":
  seeds the request keys; the guide sets it with vLLM's ``PYTHONHASHSEED``, although in v0.7.0 the
  index derives its keys from the events' token ids, not from vLLM's hashes);
* ``indexerConfig``: ``kvBlockIndexConfig`` (``inMemoryConfig.size`` 1e8 keys, ``podCacheSize`` 10,
  ``enableMetrics``: the ``kvcache_index_*`` gauges), ``kvCacheBackendConfigs`` (tier weights),
  ``tokenizersPoolConfig`` (upstream's tokenizer; the kit tokenizes in process, so it is accepted and
  ``modelName`` is not required: upstream v0.7.0 refuses a config without it, and the loader warns);
* ``kvEventsConfig``: ``zmqEndpoint`` ("": when set, the scorer binds it and every server connects to
  it, as the precise guide deploys), ``topicFilter`` (``kv@``), ``discoverPods`` (true: also connect to
  ``tcp://<endpoint host>:<podDiscoveryConfig.socketPort>``, 5557, for each endpoint scored),
  ``concurrency`` (accepted; the kit applies events in one thread), ``engineType`` (``vllm`` only);
* ``speculativeIndexing`` (false), ``speculativeTTL`` (``2s``);
* ``scoreNormalization`` (**kit-only**): ``minmax`` (default, v0.7.0's rule above) or ``absolute``:
  held blocks / prompt blocks, the rule upstream adopted after v0.8.0 (llm-d-inference-scheduler #1107,
  because min-max lifts a few leading blocks to 1.0 when no endpoint holds more). Upstream v0.7.0 ignores
  the key.

The subscriber starts with the scheduler (``Scheduler.start()``, which ``kit gateway`` calls before
serving) or at the scorer's first scheduling cycle, and stops with ``close()`` or when the scorer is
collected; loading a config opens no socket. With ``in_process`` set (the fleet simulator sets it) no socket
ever opens: the caller hands each message to ``receive``, which applies it as the subscriber thread does.
``AllBlocksCleared`` leaves the index as it is, as in every upstream release to v0.8.1.

Example::

    plugins:
    - type: precise-prefix-cache-scorer
      parameters:
        tokenProcessorConfig: {blockSize: 16}
        kvEventsConfig: {zmqEndpoint: "tcp://*:5557", discoverPods: false}
        indexerConfig:
          tokenizersPoolConfig: {modelName: Qwen/Qwen3-0.6B}
          kvBlockIndexConfig: {enableMetrics: true}
"""

from __future__ import annotations

import weakref
from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from kit.picker.framework import CycleState, Duration, Endpoint, InferenceRequest, Params, PluginBase
from kit.picker.plugins.approx_prefix import PrefixMatch
from kit.picker.plugins.datalayer import ENDPOINTS
from kit.picker.plugins.kv_index import (
    TIER_WEIGHTS,
    Entry,
    IndexStats,
    KVBlockIndex,
    TokenProcessor,
    apply_events,
    parse_batch,
    parse_topic,
)
from kit.picker.plugins.kv_subscriber import Subscriber
from kit.picker.plugins.tokenizer import STATE_KEY as TOKENS_KEY
from kit.picker.plugins.tokenizer import tokenize

DEFAULT_TTL = 2.0
SUBSCRIPTION_TIMEOUT = 600.0  # an endpoint not scored for 10 minutes loses its subscription (pod discovery)


class TokenProcessorParams(Params):
    block_size: int = Field(16, alias="blockSize", gt=0, description="tokens per block; must be the servers'")
    hash_seed: str = Field("", alias="hashSeed", description="seed of the request keys")


class InMemoryParams(Params):
    size: int = Field(100_000_000, gt=0, description="keys the index holds")
    pod_cache_size: int = Field(10, alias="podCacheSize", gt=0, description="entries per key")


class BlockIndexParams(Params):
    in_memory_config: InMemoryParams = Field(default_factory=InMemoryParams, alias="inMemoryConfig",
                                             description="the in-memory index")
    enable_metrics: bool = Field(False, alias="enableMetrics", description="export the index's counters")
    metrics_logging_interval: Any = Field(None, alias="metricsLoggingInterval", description="accepted, unused")


class BackendParams(Params):
    name: str = Field(description="a tier (gpu, cpu, ...)")
    weight: float = Field(description="what a block held in that tier counts")


class IndexerParams(Params):
    kv_block_index_config: BlockIndexParams = Field(default_factory=BlockIndexParams, alias="kvBlockIndexConfig",
                                                    description="the index")
    kv_cache_backend_configs: list[BackendParams] | None = Field(None, alias="kvCacheBackendConfigs",
                                                                 description="tier weights (gpu 1.0, cpu 0.8)")
    tokenizers_pool_config: dict[str, Any] | None = Field(None, alias="tokenizersPoolConfig",
                                                          description="upstream's tokenizer (accepted; the kit "
                                                                      "tokenizes in process)")
    token_processor_config: dict[str, Any] | None = Field(None, alias="tokenProcessorConfig",
                                                          description="accepted, unused")


class PodDiscoveryParams(Params):
    socket_port: int = Field(5557, alias="socketPort", gt=0, lt=65536,
                             description="each endpoint's event port (discoverPods)")


class KVEventsParams(Params):
    zmq_endpoint: str = Field("", alias="zmqEndpoint", description="bound when set: every server connects to it")
    topic_filter: str = Field("kv@", alias="topicFilter", description="ZMQ subscription prefix")
    concurrency: int = Field(4, gt=0, description="event workers (the kit applies events in one thread)")
    engine_type: str = Field("vllm", alias="engineType", description="whose events")
    discover_pods: bool = Field(True, alias="discoverPods", description="connect to every endpoint's socket")
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
    speculative_ttl: Duration | None = Field(None, alias="speculativeTTL",
                                             description="how long speculative entries live (2s when unset)")
    score_normalization: Literal["minmax", "absolute"] = Field("minmax", alias="scoreNormalization",
                                                               description="kit-only: minmax (v0.7.0) or "
                                                                           "absolute (held / prompt blocks)")

    @model_validator(mode="after")
    def _notes(self, info: ValidationInfo) -> PreciseParams:
        notes = info.context.get("notes") if isinstance(info.context, dict) else None
        if notes is None:
            return self
        ix, ev = self.indexer_config, self.kv_events_config
        pool = ix.tokenizers_pool_config
        if not (pool and pool.get("modelName")):
            notes.append(("indexerConfig.tokenizersPoolConfig.modelName",
                          "missing: upstream v0.7.0 refuses the config without it; the kit tokenizes in "
                          "process and does not need it"))
        elif set(pool) - {"modelName", "workersCount"}:
            notes.append(("indexerConfig.tokenizersPoolConfig", "accepted but not used: the kit tokenizes in "
                          "process (kit.tokenizer)"))
        if ix.token_processor_config is not None:
            notes.append(("indexerConfig.tokenProcessorConfig", "ignored, as in v0.7.0: the keys follow the "
                          "top-level tokenProcessorConfig"))
        if ev.engine_type != "vllm":
            notes.append(("kvEventsConfig.engineType", f"{ev.engine_type!r} is not supported: the kit reads "
                          "vLLM's events"))
        if ev.concurrency != 4:
            notes.append(("kvEventsConfig.concurrency", "accepted: the kit applies events in one thread"))
        if self.speculative_ttl is not None and not self.speculative_indexing:
            notes.append(("speculativeTTL", "ignored: speculativeIndexing is off"))
        return self


Sink = tuple[KVBlockIndex, TokenProcessor]


def _apply(sinks: list[Sink], topic: str, payload: bytes) -> None:
    """Parse one message once and apply it to every index in ``sinks``."""
    pod, model = parse_topic(topic)
    events = parse_batch(payload)
    for index, processor in sinks:
        apply_events(index, processor, pod, model, events)


class PreciseState:
    """One cycle's keys and raw per-endpoint counts, shared by the hooks."""

    def __init__(self, keys: list[int], counts: dict[str, float]):
        self.keys, self.counts = keys, counts


class PrecisePrefixCacheScorer(PluginBase):
    """``precise-prefix-cache-scorer`` of llm-d-inference-scheduler v0.7.0 (llm-d-kv-cache v0.7.0): the leading blocks
    each endpoint really holds, from the servers' KV-cache events, min-max normalised (module docstring). Parameters:
    ``tokenProcessorConfig`` (``blockSize`` 16, ``hashSeed``), ``indexerConfig``, ``kvEventsConfig``
    (``zmqEndpoint``, ``topicFilter`` kv@, ``concurrency`` 4, ``discoverPods`` true, ``socketPort`` 5557),
    ``speculativeIndexing`` (false), ``speculativeTTL`` (2s), kit-only ``scoreNormalization`` (minmax)."""

    type = "precise-prefix-cache-scorer"
    Params = PreciseParams

    def __init__(self, name: str | None = None, params: PreciseParams | None = None):
        super().__init__(name, params)
        p = self.p = params or PreciseParams()
        mem = p.indexer_config.kv_block_index_config
        self.stats = IndexStats() if mem.enable_metrics else None
        self.processor = TokenProcessor(p.token_processor_config.block_size, p.token_processor_config.hash_seed)
        self.index = KVBlockIndex(mem.in_memory_config.size, mem.in_memory_config.pod_cache_size, self.stats)
        backends = p.indexer_config.kv_cache_backend_configs
        self.weights = {b.name: b.weight for b in backends} if backends else dict(TIER_WEIGHTS)
        self.ttl = p.speculative_ttl if p.speculative_ttl and p.speculative_ttl > 0 else DEFAULT_TTL
        self.speculative: list[tuple[float, list[int], Entry]] = []  # (expiry, keys, entry), oldest first
        self.seen: dict[str, float] = {}  # endpoint → when it was last scored (pod discovery)
        self.subscriber: Subscriber | None = None
        self._finalizer: weakref.finalize | None = None
        self.in_process = False  # True: events arrive through receive() (the fleet simulator), no socket opens
        self.sinks: list[Sink] = [(self.index, self.processor)]  # the indexes this scorer's messages update

    def start(self) -> None:
        """Start the event subscriber (once): bind ``zmqEndpoint`` if set; endpoints join as they are scored."""
        if self.subscriber is not None or self.in_process:
            return
        sinks = self.sinks  # the handler must not hold the scorer

        def handle(topic: str, _seq: int, payload: bytes) -> None:
            _apply(sinks, topic, payload)

        ev = self.p.kv_events_config
        self.subscriber = Subscriber(handle, ev.topic_filter, ev.zmq_endpoint)
        self._finalizer = weakref.finalize(self, self.subscriber.close)

    @property
    def block_size(self) -> int:
        return self.processor.block_size

    def receive(self, topic: str, payload: bytes) -> None:
        """Apply one message of vLLM's KV-cache events (topic ``kv@<endpoint>@<model>``, msgpack payload) as
        the subscriber thread applies each it reads; the fleet simulator calls it with ``in_process`` set."""
        _apply(self.sinks, topic, payload)

    def feed(self, other: PrecisePrefixCacheScorer) -> None:
        """Kit-only, for picker replicas in one process (``kit.picker.replicas``): every message this scorer
        reads also updates ``other``'s index, as if ``other`` held its own subscription; ``other`` opens none."""
        other.in_process = True
        self.sinks.append((other.index, other.processor))

    def close(self) -> None:
        """Stop the event subscriber (its sockets close)."""
        if self._finalizer is not None:
            self._finalizer()

    def consumes(self) -> str:
        """As a data-layer extractor it reads endpoint notifications (upstream's layout from v0.8)."""
        return ENDPOINTS

    # ------------------------------------------------------------------------------------ keys
    def _keys(self, state: CycleState, req: InferenceRequest) -> list[int]:
        tokens = state.get(TOKENS_KEY)
        if not isinstance(tokens, list) or not tokens:
            tokens = tokenize(req)
        return self.processor.keys(tokens, req.model)

    def _expire(self) -> None:
        now = self.clock()
        while self.speculative and self.speculative[0][0] <= now:
            _, keys, entry = self.speculative.pop(0)
            for k in keys:
                self.index.evict(k, [entry], engine_key=False)

    def _subscribe(self, eps: list[Endpoint]) -> None:
        if self.in_process:
            return
        self.start()
        ev = self.p.kv_events_config
        if not ev.discover_pods:
            return
        now = self.clock()
        for ep in eps:
            host = ep.name.rsplit(":", 1)[0]
            self.seen[ep.name] = now
            self.subscriber.ensure(ep.name, f"tcp://{host}:{ev.pod_discovery_config.socket_port}")
        for name, at in list(self.seen.items()):
            if now - at > SUBSCRIPTION_TIMEOUT:
                del self.seen[name]
                self.subscriber.remove(name)

    def _lookup(self, keys: list[int], pods: list[str] | None) -> dict[str, float]:
        if not keys:
            return {}
        start = self.clock()
        scores = self.index.longest_prefix(keys, pods, self.weights)
        if self.stats:
            self.stats.lookup_seconds += self.clock() - start
        return scores

    # ------------------------------------------------------------------------------- the hooks
    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        """With speculative indexing: keys and counts before the profile runs, over the candidates."""
        if not self.p.speculative_indexing:
            return
        self.start()
        self._expire()
        keys = self._keys(state, req)
        state[self.name + "/precise"] = PreciseState(keys, self._lookup(keys, [ep.name for ep in eps]))

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        self._subscribe(eps)
        self._expire()
        pre = state.get(self.name + "/precise")
        if not isinstance(pre, PreciseState):
            keys = self._keys(state, req)
            pre = PreciseState(keys, self._lookup(keys, None))
            state[self.name + "/precise"] = pre
        counts = pre.counts
        state[self.name] = PrefixMatch(pre.keys, {pod: int(c) for pod, c in counts.items() if c > 0},
                                       self.processor.block_size)
        if self.p.score_normalization == "absolute":  # upstream main (#1107): held blocks / prompt blocks
            n = len(pre.keys)
            return {ep: min(1.0, counts.get(ep.name, 0.0) / n) if n else 0.0 for ep in eps}
        if not counts:
            return dict.fromkeys(eps, 0.0)
        lo, hi = min(counts.values()), max(counts.values())
        return {ep: (0.0 if ep.name not in counts else 1.0 if hi == lo else (counts[ep.name] - lo) / (hi - lo))
                for ep in eps}

    def pre_request(self, state: CycleState, req: InferenceRequest, ep: Endpoint) -> None:
        """With speculative indexing: the picked endpoint holds the request's blocks until ``speculativeTTL``."""
        pre = state.get(self.name + "/precise")
        if not self.p.speculative_indexing or not isinstance(pre, PreciseState) or not pre.keys:
            return
        entry = Entry(ep.name, "", True)
        self.index.add(None, pre.keys, [entry])
        self.speculative.append((self.clock() + self.ttl, pre.keys, entry))

    def gauges(self) -> dict[str, float]:
        return self.stats.gauges() if self.stats else {}
