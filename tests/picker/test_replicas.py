"""Picker replicas in one gateway (kit-only, ``kit.picker.replicas``): requests split at random, each
replica keeps its own approximate index, every precise index reads every event, and a request's
lifecycle calls reach the replica that took it."""

from __future__ import annotations

import msgpack

from kit import paths, tokenizer
from kit.picker import Endpoint, InferenceRequest, load_picker_file
from kit.picker.replicas import ReplicatedScheduler

MODEL = "Qwen/Qwen3-0.6B"
SYSTEM = "You answer questions about the opening hours and stock of a hardware store, politely. " * 6


def replicated(profile: str, n: int, seed: int = 1) -> ReplicatedScheduler:
    path = str(paths.scheduler_profile(profile))
    return ReplicatedScheduler([load_picker_file(path).scheduler for _ in range(n)], seed=seed)


def endpoints() -> list[Endpoint]:
    eps = [Endpoint(name=f"127.0.0.1:{9000 + i}", url=f"http://127.0.0.1:{9000 + i}") for i in range(4)]
    for ep in eps:
        ep.updated = 1.0  # scraped, idle
    return eps


def route(sched: ReplicatedScheduler, eps: list[Endpoint], prompt: str, rid: str) -> tuple[str, int]:
    req = InferenceRequest(model=MODEL, prompt=prompt, request_id=rid)
    assert sched.admit(req, eps) is None
    decision, state = sched.schedule(req, eps)
    ep = next(e for e in eps if e.name == decision.picked[0])
    sched.pre_request(state, req, ep)
    sched.record(decision)
    sched.response_complete(req, ep)
    return ep.name, decision.replica


def test_requests_split_across_the_replicas_and_their_decisions_share_one_history():
    sched, eps = replicated("round-robin", 3), endpoints()
    took = [route(sched, eps, f"question {i}", f"r{i}")[1] for i in range(60)]
    assert sorted(set(took)) == [0, 1, 2] and all(took.count(r) >= 10 for r in range(3))
    assert [d.request_id for d in sched.recent] == [f"r{i}" for i in range(60)]
    assert sched.find("r7").replica == took[7] and sched.find("r7").to_dict()["replica"] == took[7]
    assert sched.routed == [took.count(r) for r in range(3)]


def prefix_scores(sched, eps: list[Endpoint], prompt: str) -> dict[str, float]:
    decision, _ = sched.schedule(InferenceRequest(model=MODEL, prompt=prompt), eps)
    return {c["endpoint"]: c["scores"]["prefix-cache-scorer"] for c in decision.candidates}


def test_each_approximate_index_learns_only_from_its_own_replicas_picks():
    sched, eps = replicated("prefix-only", 2), endpoints()
    name, first = route(sched, eps, SYSTEM + "question 0", "r0")
    other = sched.replicas[1 - first]
    assert prefix_scores(sched.replicas[first], eps, SYSTEM + "x")[name] == 1.0
    assert set(prefix_scores(other, eps, SYSTEM + "x").values()) == {0.0}  # it never saw that pick
    where: dict[int, set[str]] = {}
    for i in range(1, 40):
        name, r = route(sched, eps, SYSTEM + f"question {i}", f"r{i}")
        where.setdefault(r, set()).add(name)
    assert all(len(names) == 1 for names in where.values())  # each replica keeps the group where it sent it


def test_every_precise_index_reads_every_event_and_only_the_first_replica_subscribes():
    sched, eps = replicated("precise", 3), endpoints()
    scorers = [next(p for p in s.plugins if p.type == "precise-prefix-cache-scorer") for s in sched.replicas]
    assert [s.in_process for s in scorers] == [False, True, True]
    tokens = tokenizer.encode(SYSTEM)
    n = len(tokens) // 16
    event = ["BlockStored", list(range(1, n + 1)), None, tokens[: 16 * n], 16, None, "GPU", None]
    scorers[0].receive(f"kv@{eps[2].name}@{MODEL}", msgpack.packb([1.0, [event], 0], use_bin_type=True))
    for i in range(12):  # whichever replica takes it, the prompt goes where the server holds it
        assert route(sched, eps, SYSTEM + f"question {i}", f"p{i}")[0] == eps[2].name
    assert len({d.replica for d in sched.recent}) > 1
