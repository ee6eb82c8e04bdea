"""Continuous-batching engine: vLLM's scheduling loop in simulated time.

Each engine step the scheduler (1) gives every running sequence its next tokens, decoding ones one
token and prefilling ones a chunk, within ``max_num_batched_tokens``, preempting the newest running
sequence when the KV cache has no block left, and (2) admits waiting sequences first-come first-
served while there are free sequence slots, budget and blocks, reusing cached prefix blocks. The
step then lasts as long as the latency model says, after which each sequence that has computed
all its tokens samples one more. Time to first token therefore includes queueing, chunked prefill
and the batch the request shares steps with, as on a real server.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kit.sim.config import SimConfig
from kit.sim.kv_events import block_hasher
from kit.sim.kvcache import Block, BlockPool, chain_hashes
from kit.tokenizer import OUTPUT_TOKENS

# Sentinel put on a sequence's queue when it ends.
DONE = -1


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    id: int
    prompt_len: int
    tokens: list[int]
    target_len: int
    natural_stop: bool
    arrival: float
    max_tokens: int = 0  # what the request asked for (``target_len`` is less when it stops on its own)
    out: asyncio.Queue[int] | None = field(default_factory=asyncio.Queue)  # None: nobody streams the tokens
    num_computed: int = 0
    blocks: list[Block] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish_reason: str | None = None
    preemptions: int = 0

    @property
    def output_len(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class StepStats:
    """What the last step did, for tests and the fidelity benchmark (the latency model's inputs)."""

    prefill_tokens: int = 0
    decode_seqs: int = 0
    context_tokens: int = 0
    duration: float = 0.0
    prefill_pairs: int = 0  # Σ n² + 2·n·s over prefill chunks: attention over the prompt
    longest_context: int = 0  # the longest decoding context


class Observer(Protocol):
    """Receives the engine's events (the metrics registry is one)."""

    def on_schedule(self, seq: Sequence) -> None: ...
    def on_token(self, seq: Sequence, gap: float | None) -> None: ...
    def on_finish(self, seq: Sequence) -> None: ...


class EngineFull(Exception):
    """The request can never fit the model length (SimConfig makes every such request fit the KV cache)."""


class Engine:
    """Runs sequences through simulated engine steps; ``run()`` is the loop task."""

    streams = True  # each sequence's tokens go to its ``out`` queue (the server reads them; the fleet does not)

    def __init__(self, cfg: SimConfig, observer: Observer | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.pool = BlockPool(cfg.num_gpu_blocks, cfg.block_size)
        self.root, self.hash_block = block_hasher(cfg.prefix_caching_hash_algo, cfg.model,
                                                  os.environ.get("PYTHONHASHSEED"))
        self.on_events: Callable[[list], None] | None = None
        self.on_step: Callable[[int], None] | None = None  # tokens each step of ``run()`` computed (metrics)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.observer = observer
        self.preemptions = 0
        self.steps = 0
        self.last_step = StepStats()
        self._ids = itertools.count()
        self._wake = asyncio.Event()

    # ----------------------------------------------------------------- requests
    def submit(self, prompt: list[int], max_tokens: int, natural_len: int | None = None) -> Sequence:
        """Queue a request; it generates ``max_tokens`` tokens, or ``natural_len`` if that is fewer."""
        cfg = self.cfg
        if len(prompt) + max_tokens > cfg.max_model_len:
            raise EngineFull(
                f"This model's maximum context length is {cfg.max_model_len} tokens. However, you "
                f"requested {len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or completion."
            )
        natural = natural_len is not None and natural_len < max_tokens
        seq = Sequence(
            id=next(self._ids), prompt_len=len(prompt), tokens=list(prompt),
            target_len=natural_len if natural else max_tokens, natural_stop=natural,
            arrival=self.clock(), max_tokens=max_tokens, out=asyncio.Queue() if self.streams else None,
        )
        if cfg.enable_prefix_caching:
            seq.hashes = self.hash_prompt(prompt)
        self.waiting.append(seq)
        self._wake.set()
        return seq

    def hash_prompt(self, prompt: list[int]) -> list[int]:
        """Chained hashes of the prompt's full blocks (the fleet simulator caches them per prompt)."""
        return chain_hashes(prompt, self.cfg.block_size, self.root, hash_block=self.hash_block)

    def abort(self, seq: Sequence) -> None:
        """Stop a sequence (client went away); frees its blocks."""
        if seq.finished:
            return
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
        self._finish(seq, "abort")

    def preempt_all(self) -> None:
        """Send every running sequence back to the waiting queue (its blocks freed; it recomputes), in an order
        that keeps them first-come first-served, as vLLM does before a forced cache reset."""
        while self.running:
            self._preempt()

    # ---------------------------------------------------------------- scheduling
    def _blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.cfg.block_size)

    def _preempt(self) -> Sequence:
        victim = self.running.pop()
        self.pool.release(victim.blocks)
        victim.blocks = []
        victim.num_computed = 0
        victim.cached_tokens = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def schedule(self) -> list[tuple[Sequence, int]]:
        """Pick this step's work: (sequence, tokens to compute) pairs."""
        cfg, pool = self.cfg, self.pool
        bs = cfg.block_size
        budget = cfg.max_num_batched_tokens
        plan: list[tuple[Sequence, int]] = []
        preempted = False
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = len(seq.tokens) - seq.num_computed
            if n > budget:
                n = budget
            need = -(-(seq.num_computed + n) // bs) - len(seq.blocks)
            while need > pool.num_free:
                preempted = True
                if self._preempt() is seq:
                    break
            else:
                if need > 0:
                    seq.blocks += pool.allocate(need)
                plan.append((seq, n))
                budget -= n
                i += 1
                continue
            break  # ``seq`` itself was preempted; everything after it already was too
        if not preempted:
            self.admit(plan, budget)
        return plan

    def admit(self, plan: list[tuple[Sequence, int]], budget: int) -> None:
        """Admit waiting sequences first-come first-served while there are free sequence slots, ``budget``
        tokens and blocks, reusing cached prefix blocks; each admitted one is added to ``plan``."""
        cfg, pool = self.cfg, self.pool
        while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            seq = self.waiting[0]
            hit: list[Block] = []
            if seq.hashes:
                # vLLM always computes the last prompt token, so at most len-1 tokens can hit.
                usable = (seq.prompt_len - 1) // cfg.block_size
                hit = pool.lookup(seq.hashes[:usable])
            cached = len(hit) * cfg.block_size
            n = min(len(seq.tokens) - cached, budget)
            need = self._blocks_for(cached + n) - len(hit)
            if need > pool.num_free - [b.ref for b in hit].count(0):  # idle cached blocks are free blocks too
                break
            pool.touch(hit)
            seq.blocks = hit + pool.allocate(need)
            seq.num_computed = cached
            seq.cached_tokens = cached
            self.waiting.popleft()
            self.running.append(seq)
            if seq.scheduled_at is None:
                seq.scheduled_at = self.clock()
            if self.observer:
                self.observer.on_schedule(seq)
            plan.append((seq, n))
            budget -= n

    def step_cost(self, plan: list[tuple[Sequence, int]], decode: int = 0, context: int = 0,
                  longest: int = 0) -> StepStats:
        """Latency-model inputs and simulated duration of ``plan``, plus ``decode`` sequences outside it that
        decode one token each, reading ``context`` KV tokens in all, ``longest`` for the longest (the fleet
        simulator's fast-forwarded ones)."""
        prefill = pairs = 0
        for seq, n in plan:
            nc = seq.num_computed
            if n == 1 and len(seq.tokens) > seq.prompt_len:  # decoding: one token, reads its whole context
                decode += 1
                context += nc
                if nc > longest:
                    longest = nc
            else:  # prefilling n tokens after num_computed earlier ones (cached or computed)
                prefill += n
                pairs += n * n + 2 * n * nc
        return StepStats(prefill_tokens=prefill, decode_seqs=decode, context_tokens=context, prefill_pairs=pairs,
                         longest_context=longest,
                         duration=self.cfg.step_seconds(prefill, decode, context, pairs, longest))

    def decode_seconds(self, seqs: int, context_tokens: int, longest_context: int) -> float:
        """What ``step_cost`` gives a plan in which ``seqs`` sequences each decode one token, reading
        ``context_tokens`` of KV in all, ``longest_context`` of them for the longest. The fleet simulator
        fast-forwards decode stretches with it, so it must change whenever ``step_cost`` does
        (tests/fleet/test_node.py checks the two agree)."""
        return self.cfg.step_seconds(0, seqs, context_tokens, 0, longest_context)

    def complete(self, plan: list[tuple[Sequence, int]]) -> None:
        """Apply a finished step: commit full blocks, sample tokens, finish sequences."""
        now = self.clock()
        bs = self.cfg.block_size
        caching = self.cfg.enable_prefix_caching
        observer = self.observer
        for seq, n in plan:
            if seq.finish_reason is not None:  # aborted while the step ran
                continue
            before = seq.num_computed
            seq.num_computed = computed = before + n
            tokens = seq.tokens
            if caching:
                first, last = before // bs, computed // bs
                if last > len(seq.hashes):  # blocks filled by generated tokens
                    parent = seq.hashes[-1] if seq.hashes else None
                    seq.hashes += chain_hashes(tokens[: last * bs], bs, self.root, len(seq.hashes), parent,
                                               self.hash_block)
                if last > first:
                    self.pool.commit_full(seq.blocks, seq.hashes, first, last, tokens)
            if computed < len(tokens):
                continue  # prefill chunk not finished yet
            out_len = len(tokens) - seq.prompt_len
            token = OUTPUT_TOKENS[(seq.id + out_len) % len(OUTPUT_TOKENS)]
            tokens.append(token)
            gap = None if seq.last_token_at is None else now - seq.last_token_at
            if seq.first_token_at is None:
                seq.first_token_at = now
            seq.last_token_at = now
            if observer:
                observer.on_token(seq, gap)
            if seq.out is not None:
                seq.out.put_nowait(token)
            if out_len + 1 >= seq.target_len:
                self.retire(seq)

    def retire(self, seq: Sequence) -> None:
        """``seq`` got its last token: it leaves the running list, frees its blocks and finishes."""
        self.running.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
        self._finish(seq, "stop" if seq.natural_stop else "length")

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        if seq.out is not None:
            seq.out.put_nowait(DONE)
        if self.observer:
            self.observer.on_finish(seq)

    # --------------------------------------------------------------------- loop
    async def run(self) -> None:
        """Step forever, sleeping each step's scaled duration against a running deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
            plan = self.schedule()
            if not plan:  # nothing fits yet (cannot happen with admission checks); yield
                await asyncio.sleep(0.001)
                continue
            st = self.step_cost(plan)
            self.last_step = st
            now = loop.time()
            # Keep a running deadline so timer rounding does not add up; restart if far behind.
            deadline = (deadline if now - deadline < 0.05 else now) + st.duration * self.cfg.time_scale
            if deadline > now:
                await asyncio.sleep(deadline - now)
            else:
                await asyncio.sleep(0)
            self.complete(plan)
            self.steps += 1
            if self.on_step is not None:
                self.on_step(sum(n for _, n in plan))
            self.flush_events()

    # ------------------------------------------------------------------- events
    def enable_events(self, sink: Callable[[list], None] | None) -> None:
        """Record KV-cache events and hand each step's to ``sink`` (None stops recording)."""
        self.on_events = sink
        self.pool.events = [] if sink else None

    def flush_events(self) -> None:
        """Hand the events recorded since the last call to the sink (after a step, or a cache reset)."""
        if self.pool.events and self.on_events:
            events, self.pool.events = self.pool.events, []
            self.on_events(events)

    @property
    def kv_usage(self) -> float:
        return self.pool.usage


def replay(cfg: SimConfig, prompts: list[list[int]], max_tokens: int,
           arrivals: list[float] | None = None) -> list[Sequence]:
    """Run requests through the scheduler on a virtual clock, each arriving at its time (default 0).

    The result is what the latency model alone predicts (no Python or network overhead): the
    reference that the live server's timings are benchmarked against.
    """
    now = [0.0]
    engine = Engine(cfg, clock=lambda: now[0])
    pending = sorted(zip(arrivals or [0.0] * len(prompts), range(len(prompts)), strict=True))
    seqs: list[Sequence | None] = [None] * len(prompts)
    while pending or engine.running or engine.waiting:
        while pending and pending[0][0] <= now[0]:
            seqs[pending[0][1]] = engine.submit(prompts[pending[0][1]], max_tokens)
            pending.pop(0)
        if not (engine.running or engine.waiting):
            now[0] = pending[0][0]
            continue
        plan = engine.schedule()
        now[0] += engine.step_cost(plan).duration * cfg.time_scale
        engine.complete(plan)
    return seqs  # type: ignore[return-value]
