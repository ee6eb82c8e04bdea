from kit.sim.kvcache import BlockPool, chain_hashes


def test_chained_hashes_depend_on_every_earlier_block():
    a = chain_hashes([1] * 16 + [2] * 16 + [3] * 16, 16, root=7)
    b = chain_hashes([9] * 16 + [2] * 16 + [3] * 16, 16, root=7)
    assert len(a) == 3
    assert a[1] != b[1] and a[2] != b[2]  # same block content, different history
    assert chain_hashes([1] * 20, 16, root=7) == a[:1]  # partial blocks are not hashed
    assert chain_hashes([1] * 16, 16, root=8) != a[:1]  # the root (model) is mixed in


def _fill(pool: BlockPool, tokens: list[int]) -> list:
    hashes = chain_hashes(tokens, pool.block_size, 0)
    blocks = pool.allocate(len(hashes))
    for b, h in zip(blocks, hashes, strict=True):
        pool.commit(b, h)
    return blocks


def test_freed_blocks_stay_cached_until_reused():
    pool = BlockPool(4, 4)
    blocks = _fill(pool, list(range(8)))
    assert pool.usage == 0.5
    pool.release(blocks)
    assert pool.usage == 0.0
    assert pool.lookup(chain_hashes(list(range(8)), 4, 0)) == blocks
    pool.touch(blocks)
    assert pool.usage == 0.5 and pool.num_free == 2


def test_eviction_takes_least_recently_freed_and_the_tail_of_a_prompt_first():
    pool = BlockPool(4, 4)
    a = _fill(pool, list(range(8)))        # prompt A: 2 blocks
    b = _fill(pool, list(range(100, 108)))  # prompt B: 2 blocks
    pool.release(a)
    pool.release(b)
    pool.allocate(1)  # evicts A's last block first (A freed earlier, tail before head)
    assert pool.lookup(chain_hashes(list(range(8)), 4, 0)) == a[:1]
    assert pool.lookup(chain_hashes(list(range(100, 108)), 4, 0)) == b
    assert pool.evictions == 1


def test_allocation_fails_cleanly_when_full():
    pool = BlockPool(2, 4)
    assert pool.allocate(3) is None
    assert len(pool.allocate(2)) == 2
    assert pool.allocate(1) is None


def test_unhashed_blocks_are_reused_before_cached_ones():
    pool = BlockPool(3, 4)
    cached = _fill(pool, list(range(4)))
    scratch = pool.allocate(1)
    pool.release(cached)
    pool.release(scratch)
    assert pool.allocate(1) == scratch
    assert pool.lookup(chain_hashes(list(range(4)), 4, 0)) == cached
