"""Simulator settings: engine limits, the latency model, time scale and fault injection.

Defaults model ``Qwen/Qwen3-0.6B`` served by vLLM on one 80 GB H100; docs/simulator.md gives the
derivation of every number. ``kit sim`` builds its command-line flags from this model, so the
field descriptions are the ``--help`` text.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from kit.config import StrictModel


class SimConfig(StrictModel):
    model: str = Field("Qwen/Qwen3-0.6B", description="model name served (404 for any other)")
    max_model_len: int = Field(40960, ge=16, description="longest prompt + output in tokens")
    block_size: int = Field(16, ge=1, le=256, description="tokens per KV-cache block")
    num_gpu_blocks: int = Field(40000, ge=1, description="KV-cache blocks (40,000 × 16 ≈ 640k tokens)")
    max_num_seqs: int = Field(256, ge=1, description="most sequences in one engine step")
    max_num_batched_tokens: int = Field(
        8192, ge=1, description="token budget of one engine step (longer prefills are chunked)"
    )
    enable_prefix_caching: bool = Field(True, description="reuse cached blocks of earlier prompts")
    step_overhead_ms: float = Field(2.5, ge=0, description="fixed cost of one engine step")
    prefill_us_per_token: float = Field(3.0, ge=0, description="cost per uncached prompt token computed")
    decode_us_per_seq: float = Field(15.0, ge=0, description="cost per sequence decoding in a step")
    decode_ns_per_context_token: float = Field(
        34.0, ge=0, description="cost per KV token read by decoding sequences (attention)"
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

    @model_validator(mode="after")
    def _fits(self) -> SimConfig:
        if self.num_gpu_blocks * self.block_size < self.block_size * 2:
            raise ValueError("num_gpu_blocks: the KV cache must hold at least two blocks")
        return self

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        """Simulated duration of one engine step (before time scaling)."""
        return (
            self.step_overhead_ms * 1e-3
            + prefill_tokens * self.prefill_us_per_token * 1e-6
            + decode_seqs * self.decode_us_per_seq * 1e-6
            + context_tokens * self.decode_ns_per_context_token * 1e-9
        )
