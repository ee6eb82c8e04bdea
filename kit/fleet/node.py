"""One simulated model server on the virtual clock: ``kit.sim``'s engine, stepped lazily.

A ``Node`` holds an ``Engine`` (the code ``kit sim`` runs) and the step in flight. ``advance(t)`` runs
every step that ends by ``t``, exactly as ``Engine.run()`` would: complete the step, schedule the
next, charge it ``step_cost`` (times the time scale, as ``replay()`` does).

Most steps of a busy server do nothing but decode: every running sequence gains one token, the
queue cannot be admitted, nobody finishes. ``advance`` fast-forwards such *decode stretches* without
touching each sequence each step: it counts steps, commits and allocates only the KV blocks that fill
(one per sequence every ``block_size`` steps, in the engine's order), and writes each sequence's
state back when the stretch ends. A stretch ends before any step that would finish a sequence,
preempt one, or could admit a waiting one (a block of the queue head's cached prefix about to be
evicted, or the next block of that prefix being committed); those steps run through the engine
itself. The results are the same as stepping every step (``fast=False``), to the byte:
``tests/fleet/test_node.py`` checks it.

``next_event()`` is a lower bound of when the node can next finish a request (``inf`` when idle): the
fleet's event loop does not look at a node before then unless it sends it a request.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

from kit.sim.config import SimConfig
from kit.sim.engine import Engine, Sequence
from kit.sim.kvcache import chain_hashes
from kit.tokenizer import OUTPUT_TOKENS

_CYCLE = OUTPUT_TOKENS * 64


def _extend(seq: Sequence, length: int) -> None:
    """Append the tokens the engine would have generated until ``seq.tokens`` has ``length`` of them."""
    n = len(OUTPUT_TOKENS)
    while len(seq.tokens) < length:
        start = (seq.id + len(seq.tokens) - seq.prompt_len) % n
        seq.tokens += _CYCLE[start : start + min(length - len(seq.tokens), len(_CYCLE) - start)]


Hashes = dict[int, tuple[list[int], list[int]]]


class FleetEngine(Engine):
    """The simulator's engine, taking a prompt's block hashes from the fleet's cache when it holds that very
    token list (``id(prompt)`` → (prompt, hashes); the entry keeps the list alive, so the id stays its own)."""

    streams = False  # nobody reads the tokens as they come

    def __init__(self, cfg: SimConfig, observer: object, clock: Callable[[], float], hashes: Hashes):
        super().__init__(cfg, observer, clock)  # type: ignore[arg-type]
        self._hashes = hashes

    def hash_prompt(self, prompt: list[int]) -> list[int]:
        hit = self._hashes.get(id(prompt))
        if hit is not None and hit[0] is prompt:
            return list(hit[1])
        return super().hash_prompt(prompt)


class _Stretch:
    """A decode stretch in progress: per-sequence state at its start, and the steps completed since."""

    __slots__ = ("base", "buckets", "c", "ctx", "limit", "longest", "seqs", "watch_hash", "watch_ids")

    def __init__(self, seqs: list[Sequence], bs: int, ctx: int, limit: int, watch_ids: set[int],
                 watch_hash: int | None):
        self.seqs = seqs
        self.base = [s.num_computed for s in seqs]
        self.buckets: list[list[int]] = [[] for _ in range(bs)]
        for i, s in enumerate(seqs):  # the complete after which each fills a block and needs a new one
            self.buckets[(len(s.blocks) * bs - s.num_computed) % bs].append(i)
        self.c = 0  # steps completed in the stretch
        self.ctx = ctx  # KV tokens the step in flight reads
        self.longest = max(self.base, default=0)  # the longest context among them
        self.limit = limit  # completes allowed (the next one would finish a sequence)
        self.watch_ids = watch_ids
        self.watch_hash = watch_hash


class Node:
    """A simulated server: engine, step in flight, counters as its ``/metrics`` would show them."""

    def __init__(self, name: str, cfg: SimConfig, hashes: Hashes | None = None, fast: bool = True):
        self.name = name
        self.cfg = cfg
        self.fast = fast
        self.scale = cfg.time_scale
        self.now = 0.0
        self.engine = FleetEngine(cfg, self, lambda: self.now, {} if hashes is None else hashes)
        self.plan: list[tuple[Sequence, int]] | None = None
        self.decode = False  # the step in flight only decodes, and covers every running sequence
        self.step_start = 0.0
        self.step_end = math.inf
        self.ff: _Stretch | None = None
        self.finished: list[Sequence] = []
        self.prefix_hits = 0
        self.prefix_queries = 0
        self.generation_tokens = 0
        self.itl: dict[float, int] = defaultdict(int)  # inter-token gap (µs resolution) → tokens
        self.snap_tick = -math.inf  # virtual time of the last scrape
        self.snap_idle = False  # idle at that scrape, and sent nothing since

    # ------------------------------------------------------------- observer
    def on_schedule(self, seq: Sequence) -> None:
        self.prefix_queries += seq.prompt_len
        self.prefix_hits += seq.cached_tokens

    def on_token(self, seq: Sequence, gap: float | None) -> None:
        self.generation_tokens += 1
        if gap is not None:
            self.itl[round(gap, 6)] += 1

    def on_finish(self, seq: Sequence) -> None:
        self.finished.append(seq)

    # --------------------------------------------------------------- state
    @property
    def idle(self) -> bool:
        return self.plan is None

    @property
    def waiting(self) -> int:
        return len(self.engine.waiting)

    @property
    def running(self) -> int:
        return len(self.engine.running)

    @property
    def kv_usage(self) -> float:
        return self.engine.pool.usage

    def submit(self, t: float, prompt: list[int], max_tokens: int) -> Sequence:
        """A request arrives at ``t`` (the node must have been advanced to ``t``)."""
        self._leave_stretch()
        self.now = t
        self.snap_idle = False
        seq = self.engine.submit(prompt, max_tokens)
        if self.plan is None:
            self._schedule()
        return seq

    # ------------------------------------------------------------- stepping
    def _schedule(self) -> None:
        eng = self.engine
        plan = eng.schedule()
        if not plan:
            if eng.running or eng.waiting:
                raise RuntimeError(f"{self.name}: the engine scheduled nothing with work queued")
            self.plan, self.decode, self.step_end = None, False, math.inf
            return
        st = eng.step_cost(plan)
        eng.last_step = st
        self.plan = plan
        self.decode = len(plan) == len(eng.running) and st.prefill_tokens == 0
        self.step_start, self.step_end = self.now, self.now + st.duration * self.scale

    def _step(self) -> None:
        """Complete the step in flight through the engine and schedule the next."""
        self.now = self.step_end
        assert self.plan is not None
        self.engine.complete(self.plan)
        self.engine.steps += 1
        self._schedule()

    def advance(self, t: float) -> None:
        """Run every step that ends by ``t``."""
        while self.plan is not None and self.step_end <= t:
            if self.ff is None and not (self.fast and self.decode and self._enter_stretch()):
                self._step()
                continue
            self._fast_forward(t)

    # ---------------------------------------------------------- fast-forward
    def _enter_stretch(self) -> bool:
        eng, cfg = self.engine, self.cfg
        seqs = eng.running
        if not seqs:
            return False
        limit = min(s.target_len - s.output_len for s in seqs) - 1
        if limit < 1 or any(s.last_token_at != self.step_start for s in seqs):
            return False
        bs = cfg.block_size
        if any(not 0 < len(s.blocks) * bs - s.num_computed <= bs for s in seqs):
            return False
        watch_ids: set[int] = set()
        watch_hash = None
        if eng.waiting:
            budget = cfg.max_num_batched_tokens - len(seqs)
            if budget > 0 and len(seqs) < cfg.max_num_seqs:
                # The queue head is not admitted now and, with fewer free blocks, will not be, unless its
                # cached prefix changes: watch its idle cached blocks and the next hash of its prefix.
                head = eng.waiting[0]
                usable = (head.prompt_len - 1) // bs if head.hashes else 0
                # However much of its prefix is cached, the head needs at least this many new blocks.
                floor = min(-(-len(head.tokens) // bs) - usable, -(-budget // bs))
                if floor > eng.pool.num_free:
                    return self._start(seqs, bs, limit, set(), None)
                hit = []
                if head.hashes:
                    hit = eng.pool.lookup(head.hashes[:usable])
                cached = len(hit) * bs
                n = min(len(head.tokens) - cached, budget)
                need = -(-(cached + n) // bs) - len(hit)
                idle = [b.id for b in hit if b.ref == 0]
                if need <= eng.pool.num_free - len(idle):
                    return False
                watch_ids = set(idle)
                watch_hash = head.hashes[len(hit)] if len(hit) < usable else None
        return self._start(seqs, bs, limit, watch_ids, watch_hash)

    def _start(self, seqs: list[Sequence], bs: int, limit: int, watch_ids: set[int], watch_hash: int | None) -> bool:
        self.ff = _Stretch(list(seqs), bs, sum(s.num_computed for s in seqs), limit, watch_ids, watch_hash)
        return True

    def _fast_forward(self, t: float) -> None:
        """Complete decode steps that end by ``t`` while nothing but decoding happens."""
        ff = self.ff
        assert ff is not None
        eng, pool, bs = self.engine, self.engine.pool, self.cfg.block_size
        caching = self.cfg.enable_prefix_caching
        seqs, base, buckets = ff.seqs, ff.base, ff.buckets
        b = len(seqs)
        itl = self.itl
        while self.step_end <= t:
            if ff.c >= ff.limit:
                self._leave_stretch()  # the next complete finishes a sequence: the engine does it
                self._step()
                return
            # complete the step in flight
            self.now = end = self.step_end
            ff.c += 1
            c = ff.c
            itl[round(end - self.step_start, 6)] += b
            self.generation_tokens += b
            bucket = buckets[c % bs]
            rescan = False
            if caching:
                for i in bucket:
                    seq = seqs[i]
                    nc = base[i] + c
                    last = nc // bs
                    if last > len(seq.hashes):
                        _extend(seq, nc)
                        parent = seq.hashes[-1] if seq.hashes else None
                        seq.hashes += chain_hashes(seq.tokens, bs, eng.root, len(seq.hashes), parent)  # len == nc
                    pool.commit(seq.blocks[last - 1], seq.hashes[last - 1])
                    if ff.watch_hash is not None and seq.hashes[last - 1] == ff.watch_hash:
                        rescan = True
            # schedule the next step: every sequence decodes again; those that filled a block take a new one
            m = len(bucket)
            if rescan or m > pool.num_free or (ff.watch_ids and any(k in ff.watch_ids for k in pool.upcoming(m))):
                self._leave_stretch(completed=True)
                self._schedule()
                return
            for i in bucket:
                seqs[i].blocks += pool.allocate(1)
            ff.ctx += b
            ff.longest += 1
            self.step_start = end
            self.step_end = end + eng.decode_seconds(b, ff.ctx, ff.longest) * self.scale

    def _leave_stretch(self, completed: bool = False) -> None:
        """Write the stretch back into the sequences. The step in flight stays in flight (as a plan the
        engine can complete), unless ``completed``: then it was completed and the next is not scheduled."""
        ff = self.ff
        if ff is None:
            return
        self.ff = None
        c, when = ff.c, self.now
        for seq, nc in zip(ff.seqs, ff.base, strict=True):
            if c:
                seq.num_computed = nc + c
                _extend(seq, nc + c + 1)
                seq.last_token_at = when
        self.engine.steps += c
        self.plan = None if completed else [(s, 1) for s in ff.seqs]

    def next_event(self) -> float:
        """No request can finish on this node before this time unless it is sent another."""
        if self.plan is None:
            return math.inf
        if not self.fast or not self.decode:
            return self.step_end
        seqs = self.engine.running
        ff = self.ff
        steps = (ff.limit - ff.c) if ff else min(s.target_len - s.output_len for s in seqs) - 1
        if self.engine.waiting:
            steps = min(steps, min(s.target_len for s in self.engine.waiting))
        steps = min(steps, self._steps_to_preemption())
        return self.step_end + max(0, steps) * (self.step_end - self.step_start)

    def _steps_to_preemption(self) -> int:
        """Completes before the one after which the free blocks no longer cover the decode steps."""
        bs = self.cfg.block_size
        seqs = self.engine.running
        if self.ff is not None:
            due = [len(self.ff.buckets[(self.ff.c + k) % bs]) for k in range(1, bs + 1)]
        else:
            due = [0] * bs
            for s in seqs:
                due[(len(s.blocks) * bs - s.num_computed - 1) % bs] += 1
        free = self.engine.pool.num_free
        per_cycle = sum(due)
        if per_cycle == 0:
            return 1 << 60
        cycles, left = divmod(free, per_cycle)
        k = 0
        while left >= due[k]:
            left -= due[k]
            k += 1
        return cycles * bs + k
