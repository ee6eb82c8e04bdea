"""llm-d-router v0.10.0's ``burst-prefix-cache-producer``. The assignment cases follow upstream's
``burstprefix/assign_test.go`` and the window cases its ``plugin_test.go``, rewritten; the rest is how the kit holds a
window: on the gateway's event loop (``Scheduler.produce``), on a virtual clock (``Scheduler.hold``), or not at all
(``Scheduler.schedule`` alone)."""

import asyncio
from collections import Counter

import pytest

from kit.errors import ConfigError
from kit.picker import Endpoint, InferenceRequest, load_picker_config
from kit.picker.framework import CycleState, WindowFull
from kit.picker.plugins.router.burst import BurstParams, BurstPrefixProducer, Entry, assign
from kit.picker.plugins.router.data import PREFIX_MATCH, key

KEY = key(PREFIX_MATCH, "burst-prefix-cache-producer")


def pods(n: int) -> list[Endpoint]:
    return [Endpoint(name=f"pod{i}", url=f"http://pod{i}") for i in range(1, n + 1)]


def group(n: int, hashes: list[int]) -> list[Entry]:
    return [Entry(list(hashes)) for _ in range(n)]


def placed(entries: list[Entry]) -> dict[str | None, int]:
    return dict(Counter(e.assigned for e in entries))


# ------------------------------------------------------------------------------------------ joint assignment
def test_without_a_cap_a_whole_group_goes_to_one_server():
    g = group(8, [1, 2, 3])
    assign(g, pods(4))
    assert placed(g) == {"pod1": 8}


def test_a_cap_of_two_spreads_eight_samples_two_per_server():
    g = group(8, [1, 2, 3])
    assign(g, pods(4), k=2)
    assert placed(g) == {"pod1": 2, "pod2": 2, "pod3": 2, "pod4": 2}


def test_a_cap_fills_one_server_before_the_next():
    g = group(8, [1, 2, 3])
    assign(g, pods(4), k=4)
    assert placed(g) == {"pod1": 4, "pod2": 4}


def test_a_lone_request_and_requests_without_tokens_get_no_affinity():
    lone = group(1, [1, 2, 3])
    assign(lone, pods(2))
    empty = [Entry([]), Entry([])]
    assign(empty, pods(2))
    assert lone[0].assigned is None and all(e.assigned is None for e in empty)


def test_distinct_groups_go_to_distinct_servers():
    a, b = group(8, [1, 2, 3]), group(8, [9, 9, 9])
    assign(a + b, pods(4))
    assert placed(a) == {"pod1": 8} and placed(b) == {"pod2": 8}


def test_families_sharing_a_prefix_stay_together_within_the_fair_share():
    x1, x2, y1, y2 = group(2, [1, 2, 3]), group(2, [1, 2, 4]), group(2, [7, 8, 5]), group(2, [7, 8, 6])
    assign(x1 + x2 + y1 + y2, pods(2), min_colocate=2)
    assert x1[0].assigned == x2[0].assigned and y1[0].assigned == y2[0].assigned
    assert x1[0].assigned != y1[0].assigned
    assert placed(x1 + x2 + y1 + y2) == {"pod1": 4, "pod2": 4}


def test_the_fair_share_keeps_prefix_sharing_groups_from_piling_onto_one_server():
    units = [group(2, [1, 2, n]) for n in (3, 4, 5, 6)]
    assign([e for u in units for e in u], pods(4), min_colocate=2)
    assert placed([e for u in units for e in u]) == {"pod1": 2, "pod2": 2, "pod3": 2, "pod4": 2}


def test_a_single_request_joins_the_group_whose_prefix_it_shares():
    gx, sx, gy, sy = group(2, [1, 2, 3]), group(1, [1, 2, 8]), group(2, [7, 8, 5]), group(1, [7, 8, 9])
    everything = gx + sx + gy + sy
    assign(everything, pods(2), min_colocate=2)
    assert gx[0].assigned == gx[1].assigned == sx[0].assigned
    assert gy[0].assigned == sy[0].assigned
    assert placed(everything) == {"pod1": 3, "pod2": 3}


def test_a_single_request_sharing_nothing_stays_free():
    g, lone = group(2, [1, 2, 3]), group(1, [5, 5, 5])
    assign(g + lone, pods(2), min_colocate=2)
    assert lone[0].assigned is None and g[0].assigned == g[1].assigned is not None


def test_single_requests_sharing_a_prefix_are_placed_without_any_group():
    singles = [Entry([1, 2, n]) for n in (3, 4, 5, 6)]
    assign(singles, pods(2), min_colocate=2)
    assert placed(singles) == {"pod1": 2, "pod2": 2}


def test_a_prefix_shorter_than_min_colocate_blocks_does_not_bind_groups():
    x1, x2, y1, y2 = group(2, [1, 2, 3]), group(2, [1, 2, 4]), group(2, [7, 8, 5]), group(2, [7, 8, 6])
    assign(x1 + x2 + y1 + y2, pods(2), min_colocate=3)
    assert x1[0].assigned != x2[0].assigned
    assert placed(x1 + x2 + y1 + y2) == {"pod1": 4, "pod2": 4}


def test_one_server_takes_everything():
    a, b = group(4, [1, 2, 3]), group(4, [9, 9, 9])
    assign(a + b, pods(1), min_colocate=2)
    assert placed(a + b) == {"pod1": 8}


def test_balancing_by_tokens_keeps_a_long_prefix_alone():
    long, short1, short2 = group(2, [1, 2, 3, 4]), group(2, [5]), group(2, [6])
    assign(long + short1 + short2, pods(2))
    assert long[0].assigned == short2[0].assigned  # by request count a short unit joins the long one
    long, short1, short2 = group(2, [1, 2, 3, 4]), group(2, [5]), group(2, [6])
    assign(long + short1 + short2, pods(2), by_tokens=True)
    assert long[0].assigned != short1[0].assigned and short1[0].assigned == short2[0].assigned


def test_balancing_by_tokens_charges_a_shared_prefix_once():
    head = list(range(1, 10))
    units = [group(2, [*head, tail]) for tail in (10, 11, 12)]
    assign([e for u in units for e in u], pods(2), min_colocate=9, by_tokens=True)
    assert units[0][0].assigned == units[1][0].assigned == units[2][0].assigned


def test_past_the_cap_on_every_server_the_rest_is_spread_evenly():
    g = group(8, [1, 2, 3])
    assign(g, pods(2), k=2)
    assert placed(g) == {"pod1": 4, "pod2": 4}


def test_ties_go_to_the_server_running_fewer_requests():
    servers = pods(3)
    servers[0].metrics.running, servers[1].metrics.running, servers[2].metrics.running = 5, 1, 3
    g = group(3, [1, 2])
    assign(g, servers)
    assert placed(g) == {"pod2": 3}


# ------------------------------------------------------------------------------------------ parameters
def load(params: str) -> object:
    return load_picker_config(f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: burst-prefix-cache-producer
  parameters: {params}
- type: prefix-cache-scorer
  parameters: {{prefixMatchInfoProducerName: burst-prefix-cache-producer}}
""", "burst.yaml", release="v0.10")


@pytest.mark.parametrize(("params", "words"), [
    ("{windowDurationMs: 0}", "windowDurationMs must be > 0 (current value: 0)"),
    ("{windowDurationMs: 10001}", "windowDurationMs must be <= 10000"),
    ("{maxPerReplica: 0}", "maxPerReplica must be -1 (unlimited) or >= 1"),
    ("{blockSizeTokens: 0}", "blockSizeTokens must be > 0"),
    ("{maxPrefixTokensToMatch: 10, blockSizeTokens: 64}", "must be 0 or >= blockSizeTokens (64)"),
    ("{minColocateBlocks: -1}", "minColocateBlocks must be >= 0"),
    ("{maxBatchSize: 0}", "maxBatchSize must be -1 (unlimited) or >= 1"),
    ("{balanceBy: bogus}", 'balanceBy must be "requests" or "tokens"'),
    ("{windowMs: 5}", "plugins[0].parameters.windowMs: unknown field of burst-prefix-cache-producer"),
])
def test_a_bad_parameter_is_refused_naming_it(params, words):
    with pytest.raises(ConfigError) as err:
        load(params)
    assert words in str(err.value) and "plugins[0].parameters" in str(err.value)


def test_the_defaults_are_upstreams_and_the_type_is_alpha():
    cfg = load("{}")
    p = next(pl for pl in cfg.scheduler.plugins if isinstance(pl, BurstPrefixProducer)).p
    assert (p.window_duration_ms, p.max_per_replica, p.block_size_tokens, p.max_prefix_tokens_to_match,
            p.min_colocate_blocks, p.max_batch_size, p.balance_by) == (100, -1, 64, 0, 0, 1000, "requests")
    assert any("Alpha stability" in w for w in cfg.warnings)
    assert cfg.scheduler.holds and not cfg.scheduler.renders
    assert BurstParams(balanceBy="").balance_by == "requests"


# ------------------------------------------------------------------------------------------ the window
class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def producer(clock: Clock | None = None, **params) -> BurstPrefixProducer:
    p = BurstPrefixProducer(params=BurstParams(**{"blockSizeTokens": 4, "maxBatchSize": -1, **params}))
    if clock is not None:
        p.clock = clock
    return p


def request(tokens: list[int], rid: str = "") -> InferenceRequest:
    return InferenceRequest("m", "", request_id=rid, tokens=list(tokens))


def assigned(p: BurstPrefixProducer, req: InferenceRequest, eps: list[Endpoint]) -> str:
    """The server the producer steered ``req`` to (the one with a non-zero match), or ''."""
    state = CycleState()
    p.prepare_request_data(state, req, eps)
    infos = state[p.key]
    assert set(infos) == {ep.name for ep in eps}, "every candidate gets a match"
    return next((name for name, info in infos.items() if info.match_blocks > 0), "")


def test_an_identical_burst_waits_for_its_window_and_lands_on_one_server():
    p = producer(windowDurationMs=100)

    async def burst() -> list[str]:
        reqs = [request([1, 2, 3, 4, 5, 6, 7, 8], str(i)) for i in range(8)]
        await asyncio.gather(*(p.produce(r, None) for r in reqs))
        return [assigned(p, r, pods(4)) for r in reqs]  # each request sees its own copy of the four servers

    names = asyncio.run(burst())
    assert names[0] and names == [names[0]] * 8


def test_a_request_alone_in_its_window_gets_no_affinity():
    p = producer(windowDurationMs=50)
    req = request([1, 2, 3, 4])
    assert asyncio.run(p.produce(req, None)) is True
    assert assigned(p, req, pods(2)) == ""


def test_a_request_cancelled_before_the_seal_leaves_no_match():
    p = producer(windowDurationMs=10000)
    req = request([1, 2, 3, 4])

    async def cancelled() -> None:
        task = asyncio.ensure_future(p.produce(req, None))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    state = CycleState()
    p.prepare_request_data(state, req, pods(2))  # sealed by the cycle: alone, so no affinity
    assert all(info.match_blocks == 0 for info in state[p.key].values())


def test_a_sealed_window_is_detached_and_the_next_requests_open_another():
    p = producer(windowDurationMs=30)

    async def window(tokens: list[int]) -> list[str]:
        reqs = [request(tokens) for _ in range(4)]
        await asyncio.gather(*(p.produce(r, None) for r in reqs))
        return [assigned(p, r, pods(3)) for r in reqs]

    first = asyncio.run(window([1, 2, 3, 4, 5, 6, 7, 8]))
    assert p.open is None, "the seal detaches the window"
    second = asyncio.run(window([9, 10, 11, 12, 13, 14, 15, 16]))
    assert first[0] and first == [first[0]] * 4
    assert second[0] and second == [second[0]] * 4


def test_on_a_virtual_clock_a_window_covers_its_duration_and_no_more():
    clock = Clock()
    p = producer(clock, windowDurationMs=100)
    a, b, c = (request([1, 2, 3, 4, 5], rid) for rid in "abc")
    assert p.join(a) == pytest.approx(50.1)
    clock.t = 50.099
    assert p.join(b) == pytest.approx(50.1)  # same window
    clock.t = 50.1
    assert p.join(c) == pytest.approx(50.2)  # time is up: a new window
    assert assigned(p, a, pods(2)) == assigned(p, b, pods(2)) != ""
    assert assigned(p, c, pods(2)) == ""


def test_a_full_window_refuses_the_next_request():
    p = producer(Clock(), maxBatchSize=2)
    p.join(request([1]))
    p.join(request([1]))
    with pytest.raises(WindowFull, match="maxBatchSize 2 reached"):
        p.join(request([1]))
    assert p.gauges() == {"kit_burst_prefix_batch_full": 1.0}
    assert asyncio.run(p.produce(request([1]), None)) is False


def test_a_request_not_held_is_a_window_of_its_own():
    p = producer()
    state = CycleState()
    p.prepare_request_data(state, request([1, 2, 3, 4, 5]), pods(2))
    assert {n: (i.match_blocks, i.total_blocks) for n, i in state[p.key].items()} == {"pod1": (0, 2),
                                                                                       "pod2": (0, 2)}


def test_a_retry_without_the_assigned_server_gets_no_affinity():
    clock = Clock()
    p = producer(clock)
    reqs = [request([1, 2, 3, 4]) for _ in range(3)]
    for r in reqs:
        p.join(r)
    servers = pods(3)
    to = assigned(p, reqs[0], servers)
    assert to == "pod1"
    assert assigned(p, reqs[0], [ep for ep in servers if ep.name != to]) == ""


# ------------------------------------------------------------------------------------------ through the scheduler
CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: burst-prefix-cache-producer
  parameters: {windowDurationMs: 100, maxBatchSize: 3}
- type: prefix-cache-scorer
  parameters: {prefixMatchInfoProducerName: burst-prefix-cache-producer}
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer}]
"""


def test_the_scheduler_holds_a_burst_on_a_virtual_clock_and_places_it_together():
    clock = Clock()
    sched = load_picker_config(CONFIG, "burst.yaml", clock=clock, release="v0.10").scheduler
    servers = pods(3)
    servers[0].metrics.running = 3  # the window's ties go to servers running fewer requests
    prompt = "the same rollout prompt " * 40
    reqs = [sched.request({"model": "m", "prompt": prompt}, "/v1/completions", "m", request_id=str(i))
            for i in range(4)]
    until = [sched.hold(r) for r in reqs]
    assert until[:3] == [pytest.approx(50.1)] * 3 and reqs[0].tokens, "the estimate tokens came before the hold"
    assert until[3] is None and reqs[3].produce_failed, "the fourth finds the window full: scheduled at once"
    clock.t = 50.1
    decisions = [sched.schedule(r, servers)[0] for r in reqs]
    assert [d.picked[0] for d in decisions[:3]] == ["pod2"] * 3
    assert all(row["scores"]["prefix-cache-scorer"] == 0 for row in decisions[3].candidates)
