"""Release v0.10 profiles on the virtual clock: the release follows the profile (or ``Fleet.release``), a rendering
token producer gets the server tokenizer's tokens, the precise producer reads the servers' events whatever
their block size, and the in-flight load hears of each first token before the next decision."""

import json
from dataclasses import asdict

import pytest

from kit import tokenizer
from kit.errors import KitError
from kit.experiments.workloads import Load, SharedPrefix, body
from kit.fleet import Fleet, simulate
from kit.fleet.loop import _Run
from kit.fleet.scenario import Trace
from kit.sim.config import SimConfig

SIM = SimConfig(max_num_seqs=16, num_gpu_blocks=512, max_model_len=8192)
WORKLOAD = SharedPrefix(groups=6, prompts_per_group=8, system_prompt_len=1000, question_len=100, output_len=24,
                        seed=1)
LOAD = Load(rate=32, requests=48)


def fleet(profile: str, **kw) -> Fleet:
    return Fleet(replicas=kw.pop("replicas", 3), profile=profile, sim=kw.pop("sim", SIM), **kw)


def test_the_profile_names_its_release_and_a_mismatch_is_refused():
    run = _Run(fleet("optimized-baseline"), WORKLOAD, LOAD, progress=False)
    assert run.loaded.release == "v0.10" and not run.renders and run.starts
    assert _Run(fleet("default-plugins", release="v0.10"), WORKLOAD, LOAD, progress=False).loaded.release == "v0.10"
    with pytest.raises(KitError, match=r"needs release v0\.10"):
        simulate(WORKLOAD, LOAD, fleet("optimized-baseline", release="v0.7"))


def test_optimized_baseline_keeps_groups_together_and_is_deterministic():
    a = simulate(WORKLOAD, LOAD, fleet("optimized-baseline"))
    assert a.summary.ok == 48 and a.summary.prefix_cache_hit_rate > 0.6
    assert json.dumps(asdict(a)) == json.dumps(asdict(simulate(WORKLOAD, LOAD, fleet("optimized-baseline"))))


def test_every_first_token_reaches_the_picker_before_the_next_decision():
    run = _Run(fleet("optimized-baseline"), WORKLOAD, LOAD, progress=False)
    heard: dict[str, float] = {}
    start = run.sched.response_start

    def record(req, ep):
        heard[req.request_id] = run.t
        start(req, ep)

    run.sched.response_start = record
    result = run.run()
    assert set(heard) == {r.request_id for r in result.requests}
    first = {r.request_id: r.started + r.ttft for r in result.requests}
    assert all(heard[k] >= first[k] - 1e-9 for k in heard)  # never before the token
    decisions = sorted(r.started for r in result.requests)
    for k, t in heard.items():  # and no later than the first decision after it (or the request's end)
        later = [d for d in decisions if d >= first[k]]
        end = next(r.started + r.e2e for r in result.requests if r.request_id == k)
        assert t <= min([*later[:1], end]) + 1e-9
    inflight = next(p for p in run.sched.plugins if p.type == "inflight-load-producer")
    assert all(inflight.load(ep.name) == (0, 0) for ep in run.eps)


def test_a_rendering_token_producer_gets_the_servers_tokens_and_the_precise_index_its_events():
    run = _Run(fleet("precise-prefix-cache-routing", sim=SIM.model_copy(update={"block_size": 32,
                                                                               "num_gpu_blocks": 256})),
               WORKLOAD, LOAD, progress=False, trace=Trace())
    assert run.renders and run.feed is not None
    seen = []
    schedule = run.sched.schedule

    def spy(req, eps, exclude=frozenset()):
        seen.append(list(req.tokens))
        return schedule(req, eps, exclude)

    run.sched.schedule = spy
    result = run.run()
    b = body(run.jobs[0].prompt(0, []), WORKLOAD.output_len, LOAD)
    text = tokenizer.apply_chat_template(b["messages"], add_generation_prompt=True) if "messages" in b \
        else b["prompt"]
    assert seen[0] == tokenizer.encode(text, allow_special="messages" in b)
    assert run.trace.event_batches > 0  # 32-token engine blocks feed the 16-token index
    believed = [v for v in run.trace.beliefs.values()]
    assert sum(v >= 0.8 for v in believed) > len(believed) / 2
    assert result.summary.prefix_cache_hit_rate > 0.6

