"""Workloads as data: what to send (inference-perf's shared-prefix prompts) and how (a Poisson rate or a
fixed concurrency). Pure: ``kit.experiments.loadgen`` sends them over HTTP."""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import Field, model_validator

from kit import tokenizer
from kit.config import StrictModel

_WORDS = ("system policy customer order return refund shipping warranty account billing support product "
          "service network cluster request latency token cache model server answer question detail "
          "context record review update status report result value index memory region").split()


class SharedPrefix(StrictModel):
    """inference-perf's ``shared_prefix`` data: G groups sharing a system prompt, P questions each."""

    groups: int = Field(10, ge=1, description="number of distinct system prompts")
    prompts_per_group: int = Field(10, ge=1, description="questions per system prompt")
    system_prompt_len: int = Field(100, ge=1, description="system prompt length in tokens")
    question_len: int = Field(50, ge=1, description="question length in tokens")
    output_len: int = Field(50, ge=1, description="tokens to generate (ignore_eos)")
    seed: int = Field(0, description="seed of the prompt text and the arrival times")


class Load(StrictModel):
    """How requests are sent: a Poisson rate, or a fixed number in flight."""

    rate: float | None = Field(None, gt=0, description="requests per second (Poisson arrivals)")
    concurrency: int | None = Field(None, ge=1, description="requests in flight at once")
    requests: int | None = Field(None, ge=1, description="how many to send (default: every prompt once)")
    stream: bool = Field(True, description="stream the answers (needed for TTFT and ITL)")
    chat: bool = Field(False, description="use chat completions (system prompt as a system message)")

    @model_validator(mode="after")
    def _one_mode(self) -> Load:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give exactly one of rate or concurrency")
        return self


def _tokens(rng: random.Random, n: int) -> list[int]:
    words = " ".join(rng.choice(_WORDS) for _ in range(n))  # ≥ n tokens: each word is ≥ 1 token
    return tokenizer.encode(" " + words)[:n]


@dataclass
class Prompt:
    group: int
    system: str
    question: str

    @property
    def text(self) -> str:
        return self.system + self.question


def shared_prefix_prompts(w: SharedPrefix) -> list[Prompt]:
    """G × P prompts of exactly the asked token lengths (kit tokenizer), shuffled once, as inference-perf."""
    rng = random.Random(w.seed)
    prompts = []
    for g in range(w.groups):
        system = tokenizer.decode(_tokens(rng, w.system_prompt_len))
        for _ in range(w.prompts_per_group):
            prompts.append(Prompt(g, system, tokenizer.decode(_tokens(rng, w.question_len))))
    rng.shuffle(prompts)
    return prompts
