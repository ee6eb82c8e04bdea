"""Workloads as data: what to send and when. Pure: ``kit.experiments.loadgen`` sends them over HTTP and
``kit.fleet`` replays them on a virtual clock, both from the same ``jobs`` and ``arrival_times``.

What to send:

* ``SharedPrefix``: inference-perf's ``shared_prefix`` data, G groups sharing a system prompt with P
  questions each; every prompt once, shuffled (repeated in that order when more requests are asked).
* ``MultiTurn``: chat conversations that grow turn by turn; each turn resends the whole history (the
  system prompt, earlier questions and the answers the server gave), so a server that served the
  previous turn holds most of the next one in its cache.
* ``Skewed``: shared-prefix groups where a few hot groups get most of the traffic.

How: a ``Load`` is a Poisson or constant rate, rate stages (``"10:30,20:30"``: 10/s for 30 s, then
20/s for 30 s), or a fixed number in flight (closed loop). A *job* is what one arrival starts: one
request, or for ``MultiTurn`` a whole conversation whose turns follow each answer.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

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


class Skewed(SharedPrefix):
    """Shared-prefix groups with skewed popularity: ``hot_groups`` groups get ``hot_share`` of the requests."""

    hot_groups: int = Field(2, ge=1, description="number of hot groups (the first ones)")
    hot_share: float = Field(0.8, ge=0, le=1, description="share of requests that go to the hot groups")

    @model_validator(mode="after")
    def _fewer_hot(self) -> Skewed:
        if self.hot_groups > self.groups:
            raise ValueError(f"hot_groups: {self.hot_groups} is more than groups ({self.groups})")
        return self


class MultiTurn(StrictModel):
    """Chat conversations: a system prompt, then ``turns`` questions, each sent with the whole history."""

    conversations: int = Field(20, ge=1, description="number of conversations")
    turns: int = Field(4, ge=1, description="questions per conversation")
    system_prompt_len: int = Field(200, ge=1, description="system prompt length in tokens (one per conversation)")
    question_len: int = Field(50, ge=1, description="length of each question in tokens")
    output_len: int = Field(50, ge=1, description="tokens generated per answer (ignore_eos)")
    think_time: float = Field(0.0, ge=0, description="seconds between an answer and the next question")
    seed: int = Field(0, description="seed of the text and the arrival times")


Workload = SharedPrefix | Skewed | MultiTurn
WORKLOADS: dict[str, type[StrictModel]] = {"shared-prefix": SharedPrefix, "multi-turn": MultiTurn, "skewed": Skewed}


def _stages(value: object) -> object:
    """``"10:30,20:30"`` → ``[{"rate": 10, "duration": 30}, ...]``; anything else is left to pydantic."""
    if not isinstance(value, str):
        return value
    out = []
    for part in value.split(","):
        rate, sep, duration = part.strip().partition(":")
        if not sep:
            raise ValueError(f"expected RATE:SECONDS stages separated by commas, got {part.strip()!r}")
        out.append({"rate": rate, "duration": duration})
    return out


class Stage(StrictModel):
    rate: float = Field(gt=0, description="requests (or conversations) per second")
    duration: float = Field(gt=0, description="seconds at this rate")


class Load(StrictModel):
    """How requests are sent: a rate, rate stages, or a fixed number in flight."""

    rate: float | None = Field(None, gt=0, description="requests per second (conversations for multi-turn)")
    stages: Annotated[list[Stage] | None, BeforeValidator(_stages)] = Field(
        None, description="rate stages, RATE:SECONDS,... (e.g. 10:30,20:30)")
    arrival: Literal["poisson", "constant"] = Field("poisson", description="arrivals at a rate: poisson or constant")
    concurrency: int | None = Field(None, ge=1, description="requests (conversations) in flight at once")
    requests: int | None = Field(None, ge=1, description="how many to send (default: every prompt once, or "
                                                          "until the stages end)")
    stream: bool = Field(True, description="stream the answers (needed for TTFT and ITL)")
    chat: bool = Field(False, description="use chat completions (system prompt as a system message)")

    @model_validator(mode="after")
    def _one_mode(self) -> Load:
        if sum(x is not None for x in (self.rate, self.stages, self.concurrency)) != 1:
            raise ValueError("give exactly one of rate or concurrency (or stages instead of a rate)")
        if self.stages == []:
            raise ValueError("stages: give at least one RATE:SECONDS stage")
        return self

    def describe(self) -> str:
        if self.concurrency:
            return f"{self.concurrency} in flight"
        if self.stages:
            return f"{self.arrival} stages " + ", ".join(f"{s.rate:g}/s × {s.duration:g} s" for s in self.stages)
        return f"{self.arrival} {self.rate:g}/s"


_WORD_IDS = {w: tokenizer.encode(" " + w) for w in _WORDS}


def random_text(rng: random.Random, n: int) -> str:
    """``n`` tokens of text: random words, each with its leading space (a word is one or more tokens)."""
    ids: list[int] = []
    for w in rng.choices(_WORDS, k=n):
        ids += _WORD_IDS[w]
        if len(ids) >= n:
            break
    return tokenizer.decode(ids[:n])


@dataclass(frozen=True)
class Prompt:
    """One request's content: a system prompt, earlier turns (user, assistant, ... for multi-turn) and a question."""

    group: int
    system: str
    question: str
    history: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The completions prompt: everything concatenated, so a shared beginning is a shared prefix."""
        return self.system + "".join(self.history) + self.question

    def messages(self) -> list[dict[str, str]]:
        roles = ("user", "assistant")
        return [{"role": "system", "content": self.system},
                *({"role": roles[i % 2], "content": h} for i, h in enumerate(self.history)),
                {"role": "user", "content": self.question}]


def body(p: Prompt, output_len: int, load: Load) -> dict:
    """The OpenAI request body for ``p`` (what the load generator sends and the fleet simulator routes)."""
    out: dict = {"max_tokens": output_len, "ignore_eos": True}
    if load.chat:
        out["messages"] = p.messages()
    else:
        out["prompt"] = p.text
    if load.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def shared_prefix_prompts(w: SharedPrefix) -> list[Prompt]:
    """G × P prompts of exactly the asked token lengths (kit tokenizer), shuffled once, as inference-perf."""
    return list(_shared_prefix_prompts(w.groups, w.prompts_per_group, w.system_prompt_len, w.question_len, w.seed))


@functools.lru_cache(maxsize=4)  # sweeps ask for the same prompts at every point
def _shared_prefix_prompts(groups: int, per_group: int, system_len: int, question_len: int,
                           seed: int) -> tuple[Prompt, ...]:
    w = SharedPrefix(groups=groups, prompts_per_group=per_group, system_prompt_len=system_len,
                     question_len=question_len, seed=seed)
    rng = random.Random(w.seed)
    prompts = []
    for g in range(w.groups):
        system = random_text(rng, w.system_prompt_len)
        for _ in range(w.prompts_per_group):
            prompts.append(Prompt(g, system, random_text(rng, w.question_len)))
    rng.shuffle(prompts)
    return tuple(prompts)


def skewed_prompts(w: Skewed, n: int) -> list[Prompt]:
    """``n`` prompts: each picks a hot group with probability ``hot_share`` (else a cold one), then one of its
    questions."""
    by_group: dict[int, list[Prompt]] = {}
    for p in shared_prefix_prompts(w):
        by_group.setdefault(p.group, []).append(p)
    rng = random.Random(w.seed + 2)
    hot, cold = list(range(w.hot_groups)), list(range(w.hot_groups, w.groups))
    out = []
    for _ in range(n):
        pool = hot if not cold or rng.random() < w.hot_share else cold
        out.append(rng.choice(by_group[rng.choice(pool)]))
    return out


@dataclass
class Job:
    """What one arrival starts: one request, or a conversation's turns (each sent after the previous answer)."""

    group: int
    system: str
    questions: list[str]
    think_time: float = 0.0
    history: list[str] = field(default_factory=list)

    def prompt(self, turn: int, answers: list[str]) -> Prompt:
        """Turn ``turn``'s request, given the answers to the turns before it."""
        past: list[str] = []
        for q, a in zip(self.questions[:turn], answers, strict=True):
            past += [q, a]
        return Prompt(self.group, self.system, self.questions[turn], tuple(past))


def jobs(w: Workload, load: Load, count: int | None = None) -> list[Job]:
    """The run's jobs in arrival order: ``count`` of them, else as ``load.requests`` says (a conversation may be
    cut short to match it), else every prompt (conversation) once."""
    if isinstance(w, MultiTurn):
        rng = random.Random(w.seed)
        convs = [Job(c, random_text(rng, w.system_prompt_len),
                     [random_text(rng, w.question_len) for _ in range(w.turns)], w.think_time)
                 for c in range(w.conversations)]
        left = load.requests if count is None and load.requests else None
        n = count or (-(-left // w.turns) if left else len(convs))
        out = []
        for i in range(n):
            c = convs[i % len(convs)]
            turns = w.turns if left is None else min(left - i * w.turns, w.turns)
            out.append(Job(i % len(convs), c.system, c.questions[:turns], c.think_time))
        return out
    n = count or load.requests or w.groups * w.prompts_per_group
    if isinstance(w, Skewed):
        prompts = skewed_prompts(w, n)
    else:
        base = shared_prefix_prompts(w)
        prompts = [base[i % len(base)] for i in range(n)]
    return [Job(p.group, p.system, [p.question]) for p in prompts]


def arrival_times(load: Load, n: int | None, seed: int) -> list[float]:
    """Start times (seconds) of up to ``n`` jobs under a rate or stages; the first job starts at 0.

    Poisson gaps come from ``random.Random(seed + 1)``; a new stage starts its own process at its start
    (exact for Poisson arrivals, which have no memory). With stages the list ends with the last stage.
    """
    if load.concurrency:
        raise ValueError("a closed-loop load has no arrival times")
    stages = load.stages or [Stage(rate=load.rate, duration=float("inf"))]
    limit = float("inf") if n is None else n
    rng = random.Random(seed + 1)
    out: list[float] = []
    start = 0.0
    for i, st in enumerate(stages):
        end = start + st.duration
        if load.arrival == "constant":
            k = 0
            while len(out) < limit and (t := start + k / st.rate) < end:
                out.append(t)
                k += 1
        else:
            t = start if i == 0 else start + rng.expovariate(st.rate)
            while len(out) < limit and t < end:
                out.append(t)
                t += rng.expovariate(st.rate)
        start = end
    return out


def plan(w: Workload, load: Load) -> tuple[list[Job], list[float] | None]:
    """The jobs and, for an open-loop load, their start times (None for a closed loop)."""
    if load.concurrency:
        return jobs(w, load), None
    if load.stages and not load.requests:
        times = arrival_times(load, None, w.seed)
        return jobs(w, load, len(times)), times
    js = jobs(w, load)
    return js, arrival_times(load, len(js), w.seed)


def ideal_hit_rate(prompts: list[list[int]], block: int = 16) -> float:
    """Hit rate of an unbounded prefix cache that has seen every earlier prompt (full blocks, the last
    prompt token always computed, as the simulator and vLLM count it)."""
    seen: set[tuple[int, ...]] = set()
    hits = queries = 0
    for ids in prompts:
        blocks = [tuple(ids[: (i + 1) * block]) for i in range(len(ids) // block)]
        usable = (len(ids) - 1) // block
        n = 0
        while n < usable and blocks[n] in seen:
            n += 1
        hits += n * block
        queries += len(ids)
        seen.update(blocks)
    return hits / queries if queries else 0.0
