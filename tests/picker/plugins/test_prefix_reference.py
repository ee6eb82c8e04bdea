"""The approximate prefix index's fast paths against a straightforward reading of GIE v1.4.0.

The reference below hashes the whole encoded prompt block by block and adds hashes to a per-endpoint
LRU one at a time, as upstream's indexer does; the kit's code cuts the prompt before encoding,
remembers chains, adds a request's hashes in one batch and shares holder sets. Random prompts
(multi-byte UTF-8, cut mid-character) and random request sequences must give the same hashes, the
same LRU contents in the same order, the same holders and the same match lengths.
"""

from collections import OrderedDict

import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.picker.framework import CycleState, Endpoint, InferenceRequest
from kit.picker.plugins import approx_prefix
from kit.picker.plugins.approx_prefix import ApproxPrefixCacheProducer, PrefixIndex, PrefixParams, block_hashes
from kit.vllm_metrics import EndpointMetrics


def reference_hashes(text: str, seed: str, block_bytes: int, max_blocks: int) -> list[int]:
    data = text.encode()[: block_bytes * max_blocks]
    prev, out = xxhash.xxh64_intdigest(seed.encode()), []
    for i in range(0, len(data) - block_bytes + 1, block_bytes):
        prev = xxhash.xxh64_intdigest(data[i : i + block_bytes] + prev.to_bytes(8, "little"))
        out.append(prev)
    return out


class ReferenceIndex:
    """One LRU per endpoint and a reverse map, updated one hash at a time."""

    def __init__(self) -> None:
        self.owners: dict[int, set[str]] = {}
        self.lrus: dict[str, OrderedDict[int, None]] = {}
        self.capacity: dict[str, int] = {}

    def add(self, name: str, hashes: list[int], capacity: int) -> None:
        lru = self.lrus.setdefault(name, OrderedDict())
        cap = self.capacity.setdefault(name, capacity)
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            self.owners.setdefault(h, set()).add(name)
            if len(lru) > cap:
                old, _ = lru.popitem(last=False)
                self.owners[old].discard(name)
                if not self.owners[old]:
                    del self.owners[old]

    def remove(self, name: str) -> None:
        for h in self.lrus.pop(name, {}):
            self.owners[h].discard(name)
            if not self.owners[h]:
                del self.owners[h]
        self.capacity.pop(name, None)

    def match(self, hashes: list[int]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for h in hashes:
            if h not in self.owners:
                break
            for name in self.owners[h]:
                counts[name] = counts.get(name, 0) + 1
        return counts


def same(index: PrefixIndex, ref: ReferenceIndex) -> None:
    assert {n: list(lru) for n, lru in index.lrus.items()} == {n: list(lru) for n, lru in ref.lrus.items()}
    assert {h: set(o) for h, o in index.owners.items()} == ref.owners
    assert index.capacity == ref.capacity


# Prompts mixing one- to four-byte characters, so cuts fall inside characters.
TEXT = st.text(st.sampled_from("ab c\u00e9\u00df\u20ac\u4e2d\U0001f600\n"), max_size=120)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, seed=st.text(max_size=8), block_bytes=st.integers(1, 12), max_blocks=st.integers(1, 40))
def test_block_hashes_equal_the_whole_prompt_reference(text, seed, block_bytes, max_blocks):
    want = reference_hashes(text, seed, block_bytes, max_blocks)
    assert block_hashes(text, seed, block_bytes, max_blocks) == want
    assert block_hashes(text, seed, block_bytes, max_blocks) == want  # again, from the memo


def test_a_cut_inside_a_character_keeps_its_first_bytes():
    text = "\u20ac" * 50  # three bytes each: a 64-byte block ends inside the 22nd character
    assert block_hashes(text, "m", 64, 2) == reference_hashes(text, "m", 64, 2)
    assert len(block_hashes(text, "m", 64, 2)) == 2


def test_the_memo_checks_the_bytes_not_only_their_key(monkeypatch):
    """Every prompt gets the same memo key: each lookup must still return its own prompt's chain."""
    monkeypatch.setattr(approx_prefix, "_CHAINS", approx_prefix.ChainMemo(size=4))
    monkeypatch.setattr(approx_prefix.xxhash, "xxh3_64_intdigest", lambda data: 0)
    for text in ("a" * 200, "b" * 200, "a" * 200, "a" * 100 + "c" * 100):
        assert block_hashes(text, "m", 16, 8) == reference_hashes(text, "m", 16, 8)


def test_the_memo_forgets_the_least_recently_used():
    memo = approx_prefix.ChainMemo(size=2)
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    for data in (a, b, a, c):  # c evicts b, the least recently used
        memo.get(data, "m", 16)
    assert [entry[0] for entry in memo.entries.values()] == [a, c]


OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from("abc"), st.lists(st.integers(0, 12), max_size=10),
              st.integers(1, 8), st.booleans()),
    st.tuples(st.just("remove"), st.sampled_from("abc")),
    st.tuples(st.just("match"), st.lists(st.integers(0, 12), max_size=10)),
), max_size=40)


@settings(max_examples=400, deadline=None)
@given(ops=OPS)
def test_the_index_equals_one_hash_at_a_time(ops):
    """Small capacities and a small pool of hashes: evictions, requests longer than the LRU, repeated
    hashes in one request, and the ``held`` shortcut whenever the endpoint holds every hash."""
    index, ref = PrefixIndex(), ReferenceIndex()
    for op in ops:
        if op[0] == "add":
            _, name, hashes, cap, try_held = op
            held = try_held and name in ref.lrus and all(h in ref.lrus[name] for h in hashes)
            index.add(name, hashes, cap, held)
            ref.add(name, hashes, cap)
        elif op[0] == "remove":
            index.remove(op[1])
            ref.remove(op[1])
        else:
            assert index.match(op[1]) == ref.match(op[1])
        same(index, ref)


@settings(max_examples=150, deadline=None)
@given(picks=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.booleans()), min_size=1, max_size=30),
       blocks=st.lists(st.integers(1, 6), min_size=4, max_size=4))
def test_the_producer_teaches_the_index_as_the_reference(picks, blocks):
    """Requests from six prompts sharing heads go to endpoints with 1- to 6-block LRUs (autoTune); a
    request's PreRequest sometimes comes after the next request's match (the index moved meanwhile)."""
    eps = [Endpoint(name=f"e{i}", url=f"http://e{i}", metrics=EndpointMetrics(block_size=1, num_gpu_blocks=b))
           for i, b in enumerate(blocks)]
    prompts = ["sys\u00e9:" + "q" * (i % 3) + str(i) * i for i in range(6)]
    producer = ApproxPrefixCacheProducer(params=PrefixParams.model_validate({"maxPrefixBlocksToMatch": 5}))
    ref = ReferenceIndex()
    pending: list[tuple[CycleState, InferenceRequest, Endpoint, list[int]]] = []
    for prompt_no, ep_no, late in picks:
        req = InferenceRequest(model="m", prompt=prompts[prompt_no])
        state = CycleState()
        producer.prepare_request_data(state, req, eps)
        want = reference_hashes(req.prompt, "m", 4, 5)
        assert state[producer.name].hashes == want
        assert state[producer.name].servers == ref.match(want)
        pending.append((state, req, eps[ep_no], want))
        if not late:
            for state, req, ep, hashes in pending:
                producer.pre_request(state, req, ep)
                ref.add(ep.name, hashes, ep.metrics.num_gpu_blocks)
            pending.clear()
            same(producer.index, ref)


def test_a_match_made_before_the_index_changed_is_not_trusted():
    """Both requests match while ``a`` (two-block LRU) holds all of the first; the second's PreRequest
    evicts those blocks, so the first's PreRequest must insert them again, not only touch them."""
    a = Endpoint(name="a", url="http://a", metrics=EndpointMetrics(block_size=1, num_gpu_blocks=2))
    producer = ApproxPrefixCacheProducer()
    first, second = (InferenceRequest(model="m", prompt=p) for p in ("aaaabbbb", "ccccdddd"))
    producer.pre_request({producer.name: producer.match(first, [a])}, first, a)
    s1, s2 = CycleState(), CycleState()
    producer.prepare_request_data(s1, first, [a])
    producer.prepare_request_data(s2, second, [a])
    assert s1[producer.name].servers == {"a": 2}
    producer.pre_request(s2, second, a)
    producer.pre_request(s1, first, a)
    assert list(producer.index.lrus["a"]) == s1[producer.name].hashes
    assert {h: set(o) for h, o in producer.index.owners.items()} == {h: {"a"} for h in s1[producer.name].hashes}
