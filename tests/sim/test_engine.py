"""The engine's scheduling, stepped by hand: no clock, no sleeping."""

import re

import pytest
from pydantic import ValidationError

from kit.sim.config import SimConfig
from kit.sim.engine import DONE, Engine, EngineFull


def engine(**kw) -> Engine:
    return Engine(SimConfig(**kw))


def run_until_idle(e: Engine, limit: int = 10_000) -> int:
    steps = 0
    while e.running or e.waiting:
        e.complete(e.schedule())
        steps += 1
        assert steps < limit, "engine did not drain"
    return steps


def drain(seq) -> list[int]:
    out = []
    while (t := seq.out.get_nowait()) != DONE:
        out.append(t)
    return out


def test_requests_beyond_max_num_seqs_wait():
    e = engine(max_num_seqs=2)
    seqs = [e.submit(list(range(20)), 5) for _ in range(3)]
    plan = e.schedule()
    assert [s for s, _ in plan] == seqs[:2]
    assert list(e.waiting) == seqs[2:]
    run_until_idle(e)
    assert all(s.finish_reason == "length" and s.output_len == 5 for s in seqs)


def test_long_prompts_are_prefilled_in_chunks_within_the_token_budget():
    e = engine(max_num_batched_tokens=64)
    seq = e.submit(list(range(100)), 3)
    plan = e.schedule()
    assert plan == [(seq, 64)]
    e.complete(plan)
    assert seq.first_token_at is None  # no token until the whole prompt is computed
    plan = e.schedule()
    assert plan == [(seq, 36)]
    e.complete(plan)
    assert seq.output_len == 1


def test_decoding_sequences_share_the_budget_with_new_prefills():
    e = engine(max_num_batched_tokens=50)
    a = e.submit(list(range(30)), 10)
    e.complete(e.schedule())  # a prefilled, now decoding
    b = e.submit(list(range(1000, 1100)), 2)
    plan = e.schedule()
    assert plan == [(a, 1), (b, 49)]
    cost = e.step_cost(plan)
    assert (cost.decode_seqs, cost.prefill_tokens, cost.context_tokens) == (1, 49, 30)


def test_a_repeated_prompt_hits_the_prefix_cache_except_its_last_token():
    e = engine(block_size=16)
    prompt = list(range(64))
    first = e.submit(prompt, 2)
    run_until_idle(e)
    again = e.submit(prompt, 2)
    plan = e.schedule()
    assert first.cached_tokens == 0
    assert again.cached_tokens == 48  # 3 of 4 blocks: the last prompt token is always computed
    assert plan == [(again, 16)]


def test_generated_tokens_fill_blocks_that_later_prompts_can_hit():
    e = engine(block_size=4)
    seq = e.submit([1, 2, 3, 4, 5, 6], 6)
    run_until_idle(e)
    follow_up = e.submit([*seq.tokens, 9, 9, 9], 1)  # a chat turn that repeats the whole history
    e.schedule()
    # 11 of the 12 tokens were computed (the last sampled one never is): 2 full blocks, the second
    # holding generated tokens, though the prompt alone filled only one.
    assert follow_up.cached_tokens == 8


def test_without_prefix_caching_nothing_hits():
    e = engine(enable_prefix_caching=False)
    e.submit(list(range(64)), 1)
    run_until_idle(e)
    again = e.submit(list(range(64)), 1)
    e.schedule()
    assert again.cached_tokens == 0


def test_full_kv_cache_preempts_the_newest_sequence_and_everything_still_finishes():
    e = engine(block_size=4, num_gpu_blocks=8, max_num_seqs=4, max_model_len=32)
    old = e.submit(list(range(10)), 12)  # needs 6 blocks at the end
    new = e.submit(list(range(50, 60)), 12)
    run_until_idle(e)
    assert e.preemptions >= 1
    assert new.preemptions >= 1 and old.preemptions == 0
    assert old.output_len == new.output_len == 12
    assert e.pool.usage == 0.0


def test_kv_usage_counts_blocks_of_running_requests():
    e = engine(block_size=16, num_gpu_blocks=100, max_model_len=1600)
    e.submit(list(range(160)), 50)
    e.complete(e.schedule())
    assert e.kv_usage == pytest.approx(0.10)  # 160 computed tokens → 10 blocks
    e.complete(e.schedule())
    assert e.kv_usage == pytest.approx(0.11)  # the first generated token needs an 11th block
    run_until_idle(e)
    assert e.kv_usage == 0.0


def test_abort_frees_blocks_and_ends_the_stream():
    e = engine()
    seq = e.submit(list(range(100)), 1000)
    e.complete(e.schedule())
    e.abort(seq)
    assert seq.finish_reason == "abort" and not e.running
    assert e.kv_usage == 0.0
    assert drain(seq) == [seq.tokens[100]]


def test_natural_stop_is_reported_as_stop():
    e = engine()
    seq = e.submit(list(range(10)), 100, natural_len=7)
    run_until_idle(e)
    assert (seq.output_len, seq.finish_reason) == (7, "stop")


def test_requests_longer_than_the_model_length_are_refused():
    with pytest.raises(EngineFull, match="maximum context length is 64 tokens"):
        engine(max_model_len=64).submit(list(range(100)), 10)


def test_a_model_length_the_kv_cache_cannot_hold_is_a_config_error():
    """Like vLLM, the simulator refuses to start when one max-length sequence cannot fit."""
    with pytest.raises(ValidationError, match=re.escape(
            "max_model_len: one sequence of 40960 tokens needs 2560 KV blocks, but the cache holds 512 (8192 tokens); "
            "set max_model_len to at most 8192")):
        SimConfig(num_gpu_blocks=512)
    assert SimConfig(num_gpu_blocks=512, max_model_len=8192).max_model_len == 8192


def _environments():
    from kit.manifests.environments import available, load_environment

    return [(name, load_environment(name)) for name in available()]


@pytest.mark.parametrize("name", [n for n, env in _environments() if env.local is not None])
def test_a_request_without_max_tokens_works_on_every_shipped_local_environment(name):
    """The server gives such a request max_model_len − prompt tokens, as vLLM does."""
    env = dict(_environments())[name]
    cfg = SimConfig(**env.local.simulator)
    e = Engine(cfg)
    prompt = list(range(40))
    seq = e.submit(prompt, cfg.max_model_len - len(prompt), natural_len=12)
    run_until_idle(e)
    assert (seq.output_len, seq.finish_reason) == (12, "stop")


def test_step_duration_follows_the_latency_model():
    cfg = SimConfig(step_overhead_ms=2, prefill_us_per_token=10, prefill_ns_per_token_pair=1, decode_us_per_seq=100,
                    decode_ns_per_context_token=1000, decode_ns_per_longest_context_token=4000)
    # Decode attention is the larger of the bandwidth term (2000 tokens × 1000 ns) and the floor (600 × 4000 ns).
    assert cfg.step_seconds(1000, 4, 2000, 3_000_000, 600) == pytest.approx(
        0.002 + 0.010 + 0.003 + 0.0004 + 0.0024)
    assert cfg.step_seconds(0, 4, 2000, 0, 400) == pytest.approx(0.002 + 0.0004 + 0.002)


def test_the_step_inputs_of_prefill_chunks_and_decoding():
    e = engine(max_num_batched_tokens=64)
    a = e.submit(list(range(100)), 3)
    st = e.step_cost(plan := e.schedule())
    assert (st.prefill_tokens, st.prefill_pairs) == (64, 64 * 64)
    e.complete(plan)
    st = e.step_cost(plan := e.schedule())
    assert (st.prefill_tokens, st.prefill_pairs) == (36, 36 * 36 + 2 * 36 * 64)  # attends to the first chunk
    e.complete(plan)
    st = e.step_cost(e.schedule())
    assert (st.decode_seqs, st.context_tokens, st.longest_context) == (1, 100, 100)
    assert a.output_len == 1


@pytest.mark.parametrize("hardware", ["h100", "h200"])
def test_hardware_sets_the_latency_defaults_and_flags_still_win(hardware):
    from kit.sim.config import HARDWARE

    cfg = SimConfig(hardware=hardware)
    assert cfg.decode_us_per_seq == HARDWARE[hardware]["decode_us_per_seq"]
    assert SimConfig(hardware=hardware, decode_us_per_seq=1.0).decode_us_per_seq == 1.0
    with pytest.raises(ValidationError, match="hardware"):
        SimConfig(hardware="h300")


def test_replay_predicts_queueing_on_a_virtual_clock():
    from kit.sim.engine import replay

    cfg = SimConfig(max_num_seqs=1, step_overhead_ms=10, prefill_us_per_token=0, prefill_ns_per_token_pair=0,
                    decode_us_per_seq=0, decode_ns_per_context_token=0, decode_ns_per_longest_context_token=0)
    first, second = replay(cfg, [[1, 2, 3], [4, 5, 6]], 5)
    # One slot: the second request waits for the first's 5 steps, then needs its own prefill step.
    assert first.first_token_at == pytest.approx(0.010)
    assert second.first_token_at == pytest.approx(0.060)
    late = replay(cfg, [[1, 2, 3]], 2, arrivals=[1.0])[0]
    assert late.arrival == 1.0 and late.first_token_at == pytest.approx(1.010)


@pytest.mark.slow
def test_the_latency_model_is_within_ten_percent_of_the_measured_step_times():
    """bench/calibration.py builds every measured shape in the engine; it exits 1 above the 10% target."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench/calibration.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "largest error within the target" in proc.stdout
