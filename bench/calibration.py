"""The simulator's step times against step times measured on GPUs, for the same shapes.

The measured figures: a Qwen3-0.6B-shaped model (bf16, CUDA graphs, forward pass and LM head) timed on
one H100 and one H200 on 2026-11-27 (the project's GPU calibration reference; docs/explanation/simulator.md).
Each shape is built in the real engine (``Engine.schedule`` / ``step_cost``): one prompt of N tokens
prefilled in one step, four prompts of 2,048, or B sequences decoding with L tokens of context each.

    .venv/bin/python bench/calibration.py [--hardware h100|h200] [--markdown]

Target: within 10% at every measured point with B ≤ 256 and L (or N) ≤ 2,048.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import yaml

from kit.sim.config import SimConfig
from kit.sim.engine import Engine

# Milliseconds per step, as measured.
MEASURED: dict[str, dict[str, float]] = {
    "h100": {"prefill 128": 2.79, "prefill 512": 3.87, "prefill 2048": 10.1, "prefill 8192": 45.7,
             "prefill 4x2048": 35.6,
             "decode B=1 L=512": 2.46, "decode B=8 L=512": 2.83, "decode B=32 L=512": 3.36,
             "decode B=128 L=512": 5.40, "decode B=256 L=512": 8.17,
             "decode B=1 L=2048": 3.00, "decode B=8 L=2048": 3.35, "decode B=32 L=2048": 5.21,
             "decode B=128 L=2048": 12.7, "decode B=256 L=2048": 22.7,
             "decode B=1 L=8192": 5.15, "decode B=8 L=8192": 5.54, "decode B=32 L=8192": 12.5},
    "h200": {"prefill 128": 2.67, "prefill 512": 3.74, "prefill 2048": 9.83, "prefill 8192": 43.4,
             "prefill 4x2048": 34.1,
             "decode B=1 L=512": 2.47, "decode B=8 L=512": 2.67, "decode B=32 L=512": 3.08,
             "decode B=128 L=512": 4.84, "decode B=256 L=512": 7.23,
             "decode B=1 L=2048": 3.01, "decode B=8 L=2048": 3.22, "decode B=32 L=2048": 4.34,
             "decode B=128 L=2048": 9.79, "decode B=256 L=2048": 17.0,
             "decode B=1 L=8192": 5.19, "decode B=8 L=8192": 5.39, "decode B=32 L=8192": 9.31},
}
LIMIT = 2048  # the target covers shapes with L (or N) up to this


def _engine(hardware: str, seqs: int, tokens: int, budget: int) -> Engine:
    blocks = seqs * (tokens // 16 + 2) + 16
    return Engine(SimConfig(hardware=hardware, enable_prefix_caching=False, max_num_seqs=max(seqs, 1),
                            max_num_batched_tokens=budget, num_gpu_blocks=blocks, max_model_len=tokens + 16))


def _prompts(count: int, length: int) -> list[list[int]]:
    ids = itertools.count(1000)
    return [[next(ids) for _ in range(length)] for _ in range(count)]


def prefill_ms(hardware: str, count: int, length: int) -> float:
    """One step prefilling ``count`` prompts of ``length`` tokens."""
    e = _engine(hardware, count, length, count * length)
    for p in _prompts(count, length):
        e.submit(p, 2)
    plan = e.schedule()
    assert sum(n for _, n in plan) == count * length, "the prompts did not fit one step"
    return 1e3 * e.step_cost(plan).duration


def decode_ms(hardware: str, batch: int, context: int) -> float:
    """One step of ``batch`` sequences each decoding with ``context`` tokens of context."""
    e = _engine(hardware, batch, context, batch * context)  # one prefill step: every context equal
    seqs = [e.submit(p, 4) for p in _prompts(batch, context)]  # L tokens in the KV cache when decoding
    while any(s.output_len == 0 for s in seqs):
        e.complete(e.schedule())
    plan = e.schedule()
    st = e.step_cost(plan)
    assert st.decode_seqs == batch and st.prefill_tokens == 0 and st.longest_context == context
    return 1e3 * st.duration


def simulated(hardware: str, shape: str) -> float:
    kind, *rest = shape.split()
    if kind == "prefill":
        count, _, length = rest[0].rpartition("x")
        return prefill_ms(hardware, int(count or 1), int(length))
    b, l_ = (int(part.split("=")[1]) for part in rest)
    return decode_ms(hardware, b, l_)


def in_target(shape: str) -> bool:
    sizes = [int(p.split("=")[-1].split("x")[-1]) for p in shape.split()[1:]]
    return sizes[-1] <= LIMIT


def compare(hw: str) -> list[tuple[str, float, float, float, bool]]:
    """(shape, measured ms, simulator ms, relative error, inside the target) for each measured shape."""
    rows = []
    for shape, measured in MEASURED[hw].items():
        sim = simulated(hw, shape)
        rows.append((shape, measured, sim, sim / measured - 1, in_target(shape)))
    return rows


def coefficients(hw: str) -> str:
    cfg = SimConfig(hardware=hw)
    return ", ".join(f"{k} {getattr(cfg, k)}" for k in (
        "step_overhead_ms", "prefill_us_per_token", "prefill_ns_per_token_pair", "decode_us_per_seq",
        "decode_ns_per_context_token", "decode_ns_per_longest_context_token"))


def compare_profile(path: str) -> int:
    """The simulator with a measured profile against the points it was fitted to."""
    with open(path) as fh:
        profile = yaml.safe_load(fh)
    overhead = profile.get("request_overhead_ms", 0.0)
    print(f"{path}: {coefficients(path)}; request overhead {overhead} ms")
    errors = []
    for shape, point in profile["points"].items():
        sim = simulated(path, shape) + (overhead if shape.startswith("prefill") else 0.0)
        errors.append(sim / point["measured_ms"] - 1)
        print(f"  {shape:22s} measured {point['measured_ms']:8.2f} ms   simulator {sim:8.2f} ms   "
              f"{100 * errors[-1]:+6.1f}%")
    sizes = sorted(map(abs, errors))
    print(f"largest error {100 * sizes[-1]:.1f}%, median {100 * sizes[len(sizes) // 2]:.1f}%")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", choices=sorted(MEASURED), action="append", help="card(s) to compare (default: all)")
    ap.add_argument("--markdown", action="store_true", help="one markdown table of every card (as in docs/results)")
    ap.add_argument("--profile", help="a hardware profile written by kit calibrate: the simulator against its points")
    args = ap.parse_args()
    if args.profile:
        return compare_profile(args.profile)
    cards = args.hardware or sorted(MEASURED)
    results = {hw: compare(hw) for hw in cards}
    for hw in cards:
        print(f"{hw.upper()} (--hardware {hw}): {coefficients(hw)}")
    if args.markdown:
        print("\n| shape | " + " | ".join(f"{hw.upper()} measured | simulator | error" for hw in cards) + " |")
        print("|---|" + "---|---|---|" * len(cards))
        for i, (shape, *_rest) in enumerate(results[cards[0]]):
            cells = [f"{results[hw][i][1]:.2f} | {results[hw][i][2]:.2f} | {100 * results[hw][i][3]:+.1f}%"
                     for hw in cards]
            print(f"| {shape}{'' if results[cards[0]][i][4] else ' *'} | " + " | ".join(cells) + " |")
        print("\nTimes in ms per engine step; * outside the target (L or N above 2,048).")
    else:
        for hw in cards:
            print(f"\n{hw.upper()}")
            for shape, measured, sim, err, target in results[hw]:
                note = "" if target else " (outside the target)"
                print(f"  {shape:22s} measured {measured:6.2f} ms   simulator {sim:6.2f} ms   {100 * err:+6.1f}%{note}")
    worst = 0.0
    for hw in cards:
        card_worst = max(abs(err) for *_x, err, target in results[hw] if target)
        worst = max(worst, card_worst)
        print(f"{hw.upper()}: largest error within the target (B ≤ 256, L ≤ {LIMIT:,}): {100 * card_worst:.1f}%")
    print(f"all cards: largest error within the target {100 * worst:.1f}% (target: 10%)")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
