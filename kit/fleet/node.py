"""One simulated model server on the virtual clock: ``kit.sim``'s engine, stepped lazily.

A ``Node`` holds an ``Engine`` (the code ``kit sim`` runs) and the step in flight. ``advance(t)`` runs
every step that ends by ``t``, exactly as ``Engine.run()`` would: complete the step, schedule the
next, charge it ``step_cost`` (times the time scale, as ``replay()`` does).

Most of a busy server's work is decoding: each running sequence gains one token per step. ``advance``
keeps such sequences *lazy* (``_Stretch``): it counts steps, commits and allocates only the KV blocks
that fill (one per sequence every ``block_size`` steps, in the engine's order), and writes a sequence's
state only when it finishes or the fast-forward ends. Everything else a step does (admitting, prefill
chunks, a new request's first token) runs through the engine's own code beside the lazy decoders, and a
prefilled request joins them. The fast-forward ends only where the engine would preempt, or could not
fit every lazy decoder in the token budget; the engine then steps itself until it can resume. The
results are the same as stepping every step (``fast=False``), to the byte: ``tests/fleet/test_node.py``
checks it, KV-cache events included: with ``engine.pool.events`` a list, each step's events (what
``Engine.complete`` and ``schedule`` record) go to ``on_events(time, events)`` (``kit.fleet.events`` feeds
them to the precise prefix scorer).

``next_event()`` is a lower bound of when the node can next finish a request (``inf`` when idle): the
fleet's event loop does not look at a node before then unless it sends it a request.
"""

from __future__ import annotations

import heapq
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
    """The lazy decoders (running sequences that decode one token every step, tracked without being
    touched) and the step in flight's other work.

    A lazy sequence's ``num_computed`` is ``base[seq] + c`` after ``c`` steps completed in the stretch;
    its fields are written back when it finishes or the stretch ends. The lazy sequences are the head
    of the engine's running list, in its order; the rest (``active``: prefill chunks, the first step of
    an admitted request) runs through the engine's own per-sequence code."""

    __slots__ = ("active", "base", "buckets", "c", "ends", "finishing", "longest", "recheck", "total",
                 "watch_hash", "watch_ids")

    def __init__(self, bs: int):
        self.base: dict[Sequence, int] = {}  # lazy sequence → num_computed - c, in running order
        self.buckets: list[list[Sequence]] = [[] for _ in range(bs)]  # c % bs → who fills a block at complete c
        self.finishing: dict[int, list[Sequence]] = {}  # complete → who gets its last token then
        self.ends: list[int] = []  # heap of finishing's keys
        self.c = 0  # steps completed in the stretch
        self.total = 0  # Σ base
        self.longest = 0  # max base
        self.active: list[tuple[Sequence, int]] = []  # the step in flight's work besides the lazy decoders
        self.recheck = True  # the queue head may be admissible: ask the engine at the next schedule
        self.watch_ids: set[int] = set()  # else it stays blocked unless one of these idle blocks is evicted
        self.watch_hash: int | None = None  # ... or this block of its prefix is committed


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
        # KV-cache events (kit.fleet.events sets both): each step's batch goes to on_events(time, events)
        self.on_events: Callable[[float, list], None] | None = None

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
        self.now = t
        self.snap_idle = False
        seq = self.engine.submit(prompt, max_tokens)
        if self.ff is not None:
            self.ff.recheck = True
        if self.plan is None:
            self._schedule()
        return seq

    # ------------------------------------------------------------- stepping
    def _schedule(self) -> None:
        eng = self.engine
        plan = eng.schedule()
        if eng.pool.events:
            self.flush_events()
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
        """Complete the step in flight through the engine and schedule the next (fast-forwarding, if it can)."""
        self.now = self.step_end
        assert self.plan is not None
        self.engine.complete(self.plan)
        self.engine.steps += 1
        if not (self.fast and self._enter_stretch()):
            self._schedule()
        elif self.engine.pool.events:
            self.flush_events()  # what the step recorded, as _schedule would have handed it over

    def flush_events(self) -> None:
        """Hand the KV-cache events recorded since the last flush to ``on_events``, stamped now."""
        pool = self.engine.pool
        if pool.events and self.on_events is not None:
            events, pool.events = pool.events, []
            self.on_events(self.now, events)

    def advance(self, t: float) -> None:
        """Run every step that ends by ``t``."""
        while self.plan is not None and self.step_end <= t:
            if self.ff is None:
                self._step()
            else:
                self._fast_forward(t)

    # ---------------------------------------------------------- fast-forward
    def _lazy(self, seq: Sequence) -> bool:
        """``seq`` (running, just completed a step) decodes one token per step from here on."""
        nc = seq.num_computed
        return (len(seq.tokens) == nc + 1 and nc >= seq.prompt_len and seq.last_token_at == self.now
                and len(seq.blocks) == -(-nc // self.cfg.block_size))

    def _join(self, seq: Sequence) -> None:
        ff = self.ff
        assert ff is not None
        base = seq.num_computed - ff.c
        ff.base[seq] = base
        ff.total += base
        if len(ff.base) == 1 or base > ff.longest:
            ff.longest = base
        ff.buckets[-base % self.cfg.block_size].append(seq)
        end = ff.c + seq.target_len - (len(seq.tokens) - seq.prompt_len)
        if end not in ff.finishing:
            ff.finishing[end] = []
            heapq.heappush(ff.ends, end)
        ff.finishing[end].append(seq)

    def _absorb(self) -> None:
        """Make lazy the running sequences after the lazy ones that now only decode (in running order)."""
        ff, running = self.ff, self.engine.running
        assert ff is not None
        while len(ff.base) < len(running) and self._lazy(running[len(ff.base)]):
            self._join(running[len(ff.base)])

    def _enter_stretch(self) -> bool:
        """Between steps: fast-forward from here if the first running sequences only decode."""
        running = self.engine.running
        if not running or not self._lazy(running[0]):
            return False
        self.ff = _Stretch(self.cfg.block_size)
        self._absorb()
        if self._plan_stretch():
            return True
        self.ff = None  # nothing was changed: the engine schedules
        return False

    def _plan_stretch(self) -> bool:
        """Schedule the next step as ``Engine.schedule`` would, the lazy decoders without touching them; False
        (and nothing changed) if a sequence would have to be preempted or not every lazy one fits the budget."""
        ff, eng, cfg = self.ff, self.engine, self.cfg
        assert ff is not None
        pool, bs = eng.pool, cfg.block_size
        b = len(ff.base)
        budget = cfg.max_num_batched_tokens - b
        if budget < 0:
            return False
        due = ff.buckets[ff.c % bs]
        need = len(due)
        work: list[tuple[Sequence, int, int]] = []
        running = eng.running
        for i in range(b, len(running)):  # the others, as Engine.schedule takes them
            if budget <= 0:
                break
            seq = running[i]
            n = min(len(seq.tokens) - seq.num_computed, budget)
            k = -(-(seq.num_computed + n) // bs) - len(seq.blocks)
            work.append((seq, n, k))
            need += max(k, 0)
            budget -= n
        if need > pool.num_free:
            return False  # the engine would preempt
        if ff.watch_ids and any(k in ff.watch_ids for k in pool.upcoming(need)):
            ff.recheck = True  # an idle block of the queue head's prefix is about to be evicted
        if due:
            for seq, block in zip(due, pool.allocate(len(due)), strict=True):
                seq.blocks.append(block)
        plan: list[tuple[Sequence, int]] = []
        for seq, n, k in work:
            if k > 0:
                seq.blocks += pool.allocate(k)
            plan.append((seq, n))
        if eng.waiting and (ff.recheck or plan):
            eng.admit(plan, budget)
            ff.recheck = False
            ff.watch_ids, ff.watch_hash = self._watch()
        ff.active = plan
        c = ff.c
        if plan:
            duration = eng.step_cost(plan, b, ff.total + b * c, ff.longest + c).duration
        else:
            duration = eng.decode_seconds(b, ff.total + b * c, ff.longest + c)
        self.plan = plan
        self.step_start, self.step_end = self.now, self.now + duration * self.scale
        return True

    def _watch(self) -> tuple[set[int], int | None]:
        """What could let the blocked queue head in while free blocks only shrink: its cached prefix's idle
        blocks (if one is evicted) and the next block hash of its prefix (if it is committed)."""
        eng = self.engine
        if not eng.waiting:
            return set(), None
        head, bs = eng.waiting[0], self.cfg.block_size
        if not head.hashes:
            return set(), None
        usable = (head.prompt_len - 1) // bs
        hit = eng.pool.lookup(head.hashes[:usable])
        return {b.id for b in hit if b.ref == 0}, head.hashes[len(hit)] if len(hit) < usable else None

    def _fast_forward(self, t: float) -> None:
        """Complete the steps that end by ``t``: the lazy decoders in bulk, the rest through the engine."""
        ff = self.ff
        assert ff is not None
        eng, pool, bs = self.engine, self.engine.pool, self.cfg.block_size
        caching = self.cfg.enable_prefix_caching
        base, buckets, ends, itl = ff.base, ff.buckets, ff.ends, self.itl
        running, waiting, decode_seconds, scale = eng.running, eng.waiting, eng.decode_seconds, self.scale
        start, end = self.step_start, self.step_end
        while end <= t:
            self.now = end
            c = ff.c = ff.c + 1
            b = len(base)
            itl[round(end - start, 6)] += b
            self.generation_tokens += b
            eng.steps += 1
            due = buckets[c % bs]  # the lazy decoders that filled a block; at the next step each takes a new one
            if caching:  # they commit it, in running order
                for seq in due:
                    nc = base[seq] + c
                    last = nc // bs
                    if last > len(seq.hashes):
                        parent = seq.hashes[-1] if seq.hashes else None
                        out = nc - bs - seq.prompt_len  # the block's first generated token, if all are
                        if out >= 0 and last == len(seq.hashes) + 1:  # hash it without writing the tokens
                            first = (seq.id + out) % len(OUTPUT_TOKENS)
                            seq.hashes += chain_hashes(_CYCLE[first : first + bs], bs, eng.root, 0, parent,
                                                       eng.hash_block)
                        else:
                            _extend(seq, nc)
                            seq.hashes += chain_hashes(seq.tokens, bs, eng.root, len(seq.hashes), parent,
                                                       eng.hash_block)  # len(tokens) == nc
                    pool.commit(seq.blocks[last - 1], seq.hashes[last - 1])
                    if pool.events is not None:  # what Engine.complete records for the block (commit_full)
                        _extend(seq, nc)
                        pool.events.append(("stored", seq.hashes[last - 1 : last], seq.hashes[last - 2] if last > 1
                                            else None, seq.tokens[(last - 1) * bs : last * bs]))
                    if seq.hashes[last - 1] == ff.watch_hash:
                        ff.recheck = True
            if ends[0] == c:
                self._finish_lazy(c)
            if ff.active:  # after the lazy ones, as they follow them in the running list
                eng.complete(ff.active)
                ff.recheck = True
                self._absorb()
            if base and len(running) == len(base) and not (waiting and (ff.recheck or ff.watch_ids)) \
                    and len(due) <= pool.num_free:
                # the usual step: only the lazy decoders, nobody to admit
                if due:
                    for seq, block in zip(due, pool.allocate(len(due)), strict=True):
                        seq.blocks.append(block)
                if ff.active:
                    ff.active = self.plan = []
                b = len(base)
                start, end = end, end + decode_seconds(b, ff.total + b * c, ff.longest + c) * scale
                self.step_start, self.step_end = start, end
                if pool.events:
                    self.flush_events()
            elif base and self._plan_stretch():
                start, end = self.step_start, self.step_end
                if pool.events:
                    self.flush_events()
            else:
                self._leave_stretch()
                self._schedule()
                return

    def _finish_lazy(self, c: int) -> None:
        """The lazy decoders that got their last token at complete ``c`` finish, as ``Engine.complete`` does."""
        ff, eng = self.ff, self.engine
        assert ff is not None
        heapq.heappop(ff.ends)
        for seq in ff.finishing.pop(c):
            base = ff.base.pop(seq)
            ff.buckets[-base % self.cfg.block_size].remove(seq)
            ff.total -= base
            seq.num_computed = base + c
            _extend(seq, base + c + 1)
            seq.last_token_at = self.now
            eng.retire(seq)
        if ff.base:
            ff.longest = max(ff.base.values())
        ff.recheck = True

    def _leave_stretch(self) -> None:
        """Between steps: write the lazy decoders back; the engine takes over."""
        ff = self.ff
        assert ff is not None
        self.ff = None
        c, now = ff.c, self.now
        for seq, base in ff.base.items():
            seq.num_computed = base + c
            _extend(seq, base + c + 1)
            seq.last_token_at = now
        self.plan = None

    def next_event(self) -> float:
        """No request can finish on this node before this time unless it is sent another."""
        if self.plan is None:
            return math.inf
        ff = self.ff
        if ff is not None:
            if ff.active:
                return self.step_end
            steps = ff.ends[0] - ff.c - 1  # completes before the first lazy decoder's last
        elif not self.fast or not self.decode:
            return self.step_end
        else:
            steps = min(s.target_len - s.output_len for s in self.engine.running) - 1
        if self.engine.waiting:
            steps = min(steps, min(s.target_len for s in self.engine.waiting))
        # In ``steps`` completes each running sequence fills at most steps // block_size + 1 blocks.
        if self.engine.pool.num_free < len(self.engine.running) * (steps // self.cfg.block_size + 1):
            steps = min(steps, self._steps_to_preemption())
        return self.step_end + max(0, steps) * (self.step_end - self.step_start)

    def _steps_to_preemption(self) -> int:
        """Completes before the one after which the free blocks no longer cover the decode steps."""
        bs = self.cfg.block_size
        if self.ff is not None:
            due = [len(self.ff.buckets[(self.ff.c + k) % bs]) for k in range(1, bs + 1)]
        else:
            due = [0] * bs
            for s in self.engine.running:
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
