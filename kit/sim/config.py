"""Simulator settings: engine limits, the latency model, time scale and fault injection.

Defaults model ``Qwen/Qwen3-0.6B`` served by vLLM on one 80 GB H100; docs/explanation/simulator.md gives the
derivation of every number. The latency model's coefficients come from step times measured on an H100
and an H200 (``--hardware h100|h200``), or from a profile file that ``kit calibrate`` measured on a running
server (``--hardware FILE``); any of them can be set on its own. ``kit sim`` builds its command-line
flags from this model, so the field descriptions are the ``--help`` text.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, Field, model_validator

from kit.config import StrictModel
from kit.sim.kv_events import HashAlgo, KVEventsConfig, parse_kv_events_config


class Hardware(StrEnum):
    H100 = "h100"
    H200 = "h200"


# Minimax fits (largest relative error) to the step times measured on each card for a
# Qwen3-0.6B-shaped model, 2026-11-27: docs/explanation/simulator.md, docs/results/simulator.md (bench/calibration.py).
HARDWARE: dict[str, dict[str, float]] = {
    Hardware.H100: {"step_overhead_ms": 2.44, "prefill_us_per_token": 3.13, "prefill_ns_per_token_pair": 0.307,
                    "decode_us_per_seq": 4.05, "decode_ns_per_context_token": 39.3,
                    "decode_ns_per_longest_context_token": 336.0},
    Hardware.H200: {"step_overhead_ms": 2.28, "prefill_us_per_token": 3.11, "prefill_ns_per_token_pair": 0.268,
                    "decode_us_per_seq": 7.57, "decode_ns_per_context_token": 25.8,
                    "decode_ns_per_longest_context_token": 389.0},
}
_H100 = HARDWARE[Hardware.H100]
COEFFICIENTS = tuple(_H100)  # the latency model's six coefficients, in SimConfig's units


def hardware_profile(value: str) -> dict[str, float]:
    """The coefficients of a shipped card (``h100``, ``h200``) or of a profile file written by ``kit calibrate``
    (YAML with a ``coefficients`` mapping); ValueError naming what is wrong."""
    if value in HARDWARE:
        return HARDWARE[value]
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"hardware: expected h100, h200 or a profile file written by kit calibrate, got {value!r}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"hardware: {value}: not readable YAML ({err})") from None
    coeffs = data.get("coefficients") if isinstance(data, dict) else None
    if not isinstance(coeffs, dict):
        raise ValueError(f"hardware: {value}: no 'coefficients' mapping (a profile written by kit calibrate has one)")
    bad = [k for k in COEFFICIENTS if not isinstance(coeffs.get(k), int | float) or coeffs[k] < 0]
    if bad:
        raise ValueError(f"hardware: {value}: coefficients missing, not numbers or negative: {', '.join(bad)}")
    return {k: float(coeffs[k]) for k in COEFFICIENTS}


class SimConfig(StrictModel):
    model: str = Field("Qwen/Qwen3-0.6B", description="model name served (404 for any other)")
    max_model_len: int = Field(
        40960, ge=16, description="longest prompt + output in tokens; one such sequence must fit the KV cache")
    block_size: int = Field(16, ge=1, le=256, description="tokens per KV-cache block")
    num_gpu_blocks: int = Field(40000, ge=1, description="KV-cache blocks (40,000 × 16 ≈ 640k tokens)")
    max_num_seqs: int = Field(256, ge=1, description="most sequences in one engine step")
    max_num_batched_tokens: int = Field(
        8192, ge=1, description="token budget of one engine step (longer prefills are chunked)"
    )
    enable_prefix_caching: bool = Field(True, description="reuse cached blocks of earlier prompts")
    prefix_caching_hash_algo: HashAlgo = Field(
        HashAlgo.BUILTIN, description="block hash: vLLM's sha256, sha256_cbor, xxhash, xxhash_cbor (seeded by "
                                      "PYTHONHASHSEED), or the kit's fast builtin")
    kv_events_config: Annotated[KVEventsConfig | None, BeforeValidator(parse_kv_events_config)] = Field(
        None, description="vLLM's KV-cache event publisher as JSON, e.g. "
                          '\'{"enable_kv_cache_events":true,"endpoint":"tcp://*:5557","topic":"kv@IP:PORT@MODEL"}\'')
    enable_lora: bool = Field(False, description="expose vllm:lora_requests_info as vLLM does with --enable-lora "
                                                 "(no adapter is ever loaded)")
    hardware: str = Field(
        Hardware.H100.value, description="whose measured step times set the latency model's defaults: h100, h200, "
                                         "or a profile file written by kit calibrate")
    step_overhead_ms: float = Field(_H100["step_overhead_ms"], ge=0, description="fixed cost of one engine step")
    prefill_us_per_token: float = Field(
        _H100["prefill_us_per_token"], ge=0, description="cost per uncached prompt token computed")
    prefill_ns_per_token_pair: float = Field(
        _H100["prefill_ns_per_token_pair"], ge=0,
        description="attention over the prompt while prefilling: cost per (token, earlier token) pair, "
                    "N² for an N-token prompt")
    decode_us_per_seq: float = Field(
        _H100["decode_us_per_seq"], ge=0, description="cost per sequence decoding in a step")
    decode_ns_per_context_token: float = Field(
        _H100["decode_ns_per_context_token"], ge=0,
        description="cost per KV token read by decoding sequences (attention, bandwidth-bound)"
    )
    decode_ns_per_longest_context_token: float = Field(
        _H100["decode_ns_per_longest_context_token"], ge=0,
        description="attention's floor in small batches: cost per token of the longest decoding context"
    )
    time_scale: float = Field(
        1.0, gt=0, description="wall-clock seconds per simulated second (10 runs ten times slower)"
    )
    fail_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered with --fail-status")
    fail_status: int = Field(503, ge=400, le=599, description="HTTP status of injected failures")
    extra_latency_ms: float = Field(0.0, ge=0, description="added delay before each request starts")
    drop_rate: float = Field(
        0.0, ge=0, le=1, description="share of requests whose connection is dropped mid-response"
    )
    seed: int = Field(0, description="seed of the fault-injection random generator")

    @model_validator(mode="before")
    @classmethod
    def _hardware_defaults(cls, data: Any) -> Any:
        """Latency coefficients not given take the chosen hardware's measured values."""
        if isinstance(data, dict):
            return {**hardware_profile(str(data.get("hardware", Hardware.H100.value))), **data}
        return data

    @model_validator(mode="after")
    def _fits(self) -> SimConfig:
        if self.num_gpu_blocks < 2:
            raise ValueError("num_gpu_blocks: the KV cache must hold at least two blocks")
        capacity = self.num_gpu_blocks * self.block_size
        if self.max_model_len > capacity:
            # vLLM refuses to start when one sequence of max_model_len tokens cannot fit its KV cache.
            raise ValueError(
                f"max_model_len: one sequence of {self.max_model_len} tokens needs "
                f"{-(-self.max_model_len // self.block_size)} KV blocks, but the cache holds {self.num_gpu_blocks} "
                f"({capacity} tokens); set max_model_len to at most {capacity} or raise num_gpu_blocks, "
                "as vLLM refuses to start in this case")
        return self

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, context_tokens: int,
                     prefill_pairs: int = 0, longest_context: int = 0) -> float:
        """Simulated duration of one engine step (before time scaling).

        ``prefill_pairs``: Σ over prefill chunks of n² + 2·n·s (n tokens computed after s earlier ones);
        ``context_tokens``: Σ of the decoding sequences' contexts; ``longest_context``: the largest of them.
        Attention while decoding is bandwidth-bound in large batches and latency-bound in small ones, so it
        costs the larger of the two.
        """
        attention = max(context_tokens * self.decode_ns_per_context_token,
                        longest_context * self.decode_ns_per_longest_context_token)
        return (
            self.step_overhead_ms * 1e-3
            + prefill_tokens * self.prefill_us_per_token * 1e-6
            + prefill_pairs * self.prefill_ns_per_token_pair * 1e-9
            + decode_seqs * self.decode_us_per_seq * 1e-6
            + attention * 1e-9
        )
