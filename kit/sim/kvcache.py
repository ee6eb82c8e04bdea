"""The KV-cache block pool with automatic prefix caching, the way vLLM's V1 engine keeps it.

* The cache is a fixed number of blocks of ``block_size`` tokens.
* A full block is identified by a chained hash: its tokens plus the hash of the block before, so a
  hit on block *i* implies blocks 0..i-1 match too.
* Blocks in use carry a reference count. When the last request using a block ends, the block goes
  to the tail of the free queue but keeps its content and hash, so a later prompt can still hit it.
* A new block is taken from the head of the free queue (least recently freed first); if it still
  held a cached block, that entry is evicted. A request's blocks are freed in reverse order, so
  the end of a prompt is evicted before its shared beginning. Blocks that never filled (no hash)
  go to the head, since nothing can hit them.
* Blocks are created on first use: the free queue holds one placeholder for the run of blocks never used
  yet (initially every block, in id order), so a pool of 40,000 blocks that a run touches 5,000 of costs
  5,000 objects. It changes nothing the pool does: the placeholder sits where those blocks would.

With ``events`` set to a list (``kit.sim.kv_events`` does it when ``--kv-events-config`` enables them)
the pool records what changed, as vLLM's block pool does: ``("stored", hashes, parent, tokens)`` for
each run of blocks a request filled (its hashes even where another block already held one, as vLLM
reports duplicates too), ``("removed", [hash])`` for each cached block evicted for reuse, and
``("cleared",)`` for a reset. With ``events`` None (the default) nothing is recorded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from itertools import takewhile
from operator import is_not


class Block:
    __slots__ = ("hash", "id", "ref")

    def __init__(self, block_id: int):
        self.id = block_id
        self.ref = 0
        self.hash: Hashable | None = None


def chain_hashes(tokens: Sequence[int], block_size: int, root: Hashable, start: int = 0,
                 parent: Hashable | None = None, hash_block: Callable | None = None) -> list:
    """Chained hashes of the full blocks of ``tokens`` from block index ``start``;
    ``hash_block(parent, block_tokens)`` (default: Python's tuple hash)."""
    prev = root if parent is None else parent
    out = []
    for i in range(start * block_size, len(tokens) - block_size + 1, block_size):
        block = tokens[i : i + block_size]
        prev = hash((prev, *block)) if hash_block is None else hash_block(prev, block)
        out.append(prev)
    return out


_UNUSED = -1  # the free queue's key for the run of blocks never used yet
_is_block = partial(is_not, None)


class BlockPool:
    """Fixed pool of KV blocks with a prefix-cache index and an LRU free queue."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks: list[Block] = []  # every block used so far, by id (the others do not exist yet)
        # Free blocks, least recently freed first; the placeholder (key _UNUSED, value None) stands for the
        # blocks never used, len(blocks) to num_blocks - 1.
        self.free: OrderedDict[int, Block | None] = OrderedDict({_UNUSED: None} if num_blocks else {})
        self.num_free = num_blocks  # blocks not referenced by any running request (cached or empty)
        self.cached: dict[Hashable, Block] = {}
        self.evictions = 0
        self.events: list[tuple] | None = None  # a list records KV-cache events (module docstring)

    @property
    def usage(self) -> float:
        """Share of blocks referenced by running requests, as ``vllm:kv_cache_usage_perc``."""
        return 1.0 - self.num_free / self.num_blocks

    def upcoming(self, n: int) -> list[int]:
        """The ids of the next ``n`` blocks ``allocate`` would take (fewer if fewer are free)."""
        out: list[int] = []
        for bid in self.free:
            if bid == _UNUSED:
                start = len(self.blocks)
                out += range(start, min(self.num_blocks, start + n - len(out)))
            else:
                out.append(bid)
            if len(out) >= n:
                break
        return out

    def lookup(self, hashes: Sequence[int]) -> list[Block]:
        """The cached blocks for the longest prefix of ``hashes``."""
        return list(takewhile(_is_block, map(self.cached.get, hashes)))

    def touch(self, blocks: Sequence[Block]) -> None:
        """Take a reference on cached blocks (removing idle ones from the free queue)."""
        for b in blocks:
            if b.ref == 0:
                del self.free[b.id]
                self.num_free -= 1
            b.ref += 1

    def allocate(self, n: int) -> list[Block] | None:
        """``n`` fresh blocks, evicting least recently freed cached blocks; None if too few are free."""
        if n > self.num_free:
            return None
        self.num_free -= n
        out: list[Block] = []
        free = self.free
        while len(out) < n:
            _, b = free.popitem(last=False)
            if b is None:  # blocks never used: create the next ones, in id order
                start = len(self.blocks)
                end = min(self.num_blocks, start + n - len(out))
                new = [Block(i) for i in range(start, end)]
                for nb in new:
                    nb.ref = 1
                self.blocks += new
                out += new
                if end < self.num_blocks:  # the rest of the run stays where it was: at the head
                    free[_UNUSED] = None
                    free.move_to_end(_UNUSED, last=False)
                continue
            if b.hash is not None:
                del self.cached[b.hash]
                if self.events is not None:
                    self.events.append(("removed", [b.hash]))
                b.hash = None
                self.evictions += 1
            b.ref = 1
            out.append(b)
        return out

    def commit(self, block: Block, h: Hashable) -> None:
        """Register a block that just became full under its chained hash."""
        if block.hash is None and h not in self.cached:
            block.hash = h
            self.cached[h] = block

    def commit_full(self, blocks: Sequence[Block], hashes: Sequence[Hashable], first: int, last: int,
                    tokens: Sequence[int]) -> None:
        """Register blocks ``first..last-1`` of a request that just became full (``tokens``: the request's)."""
        for idx in range(first, last):
            self.commit(blocks[idx], hashes[idx])
        if self.events is not None:
            bs = self.block_size
            self.events.append(("stored", list(hashes[first:last]), hashes[first - 1] if first else None,
                                list(tokens[first * bs : last * bs])))

    def release(self, blocks: Sequence[Block]) -> None:
        """Drop a request's references, last block first."""
        for b in reversed(blocks):
            b.ref -= 1
            if b.ref == 0:
                self.num_free += 1
                self.free[b.id] = b
                if b.hash is None:
                    self.free.move_to_end(b.id, last=False)

    def reset(self) -> bool:
        """Forget every cached block, as vLLM's reset does: only when no request holds a block (else nothing
        changes and the answer is False)."""
        if any(b.ref for b in self.blocks):
            return False
        for b in self.blocks:
            b.hash = None
        self.cached.clear()
        if self.events is not None:
            self.events.append(("cleared",))
        return True
