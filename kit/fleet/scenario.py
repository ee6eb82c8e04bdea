"""What happens to the fleet besides the workload: kit-only scenario knobs
(docs/explanation/fleet-simulator.md, "Scenarios").

* **Picker replicas** (``Fleet.picker_replicas``): several endpoint pickers, each loaded from the same
  profile with its own state (prefix index, in-flight counts, random choices), split the traffic; each
  request goes to one of them uniformly at random, as a load balancer in front of several EPP replicas
  spreads it. They share the servers' scrapes (the same metrics at the same ticks). Each approximate
  index learns only from its own picks; every precise index reads all the servers' events.
* **Outside traffic** (``Fleet.outside_rate``): requests sent straight to the servers, around the pickers,
  at a constant pace and to each server in turn (as ``kit.outside_traffic`` does on the local stack): a
  fresh prompt of ``outside_prompt_len`` random tokens asking for ``outside_output_len`` tokens. No picker
  sees them; they fill KV caches and evict the prefixes the picked requests left. They stop once the
  workload's last request has finished, and are not in the run's requests (the servers' own counters, hence
  the summary's hit rate, include them, as the local stack's would).
* **Trace**: what the picker believed, for counting *stale picks* after a run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from kit.experiments.results import ProfileRun
from kit.picker import CycleState, Endpoint, PrefixMatch

STALE_BELIEF, STALE_FOUND = 0.9, 0.5


def seed_picker(sched: Any, tag: str) -> None:
    """Seed every random choice a scheduler's plugins make (ties, random pickers, a defaulted picker)."""
    plugins = {id(p): p for p in [*sched.plugins, *(pr.picker for pr in sched.profiles.values())]}
    for i, p in enumerate(plugins.values()):
        if isinstance(getattr(p, "rng", None), random.Random):
            p.rng = random.Random(f"{tag}/{i}")


class Replicas:
    """Picker replicas 1..k-1 (replica 0 is the run's own scheduler and endpoints), and the choice of one."""

    def __init__(self, k: int, load: Any, eps: list[Endpoint], seed: int):
        self.primary = eps
        self.extra: list[tuple[Any, list[Endpoint]]] = []
        for r in range(1, k):
            sched = load()
            seed_picker(sched, f"{seed}/replica{r}")
            self.extra.append((sched, [Endpoint(name=e.name, url=e.url, metrics=e.metrics) for e in eps]))
        self.rng = random.Random(f"{seed}/picker-replicas")

    @property
    def schedulers(self) -> list[Any]:
        return [s for s, _ in self.extra]

    def choose(self, sched: Any) -> tuple[Any, list[Endpoint]]:
        """The replica that takes the next request: its scheduler and endpoints (scrapes copied in)."""
        r = self.rng.randrange(len(self.extra) + 1)
        if r == 0:
            return sched, self.primary
        sched, eps = self.extra[r - 1]
        self.refresh(eps)
        return sched, eps

    def refresh(self, eps: list[Endpoint]) -> None:
        """A replica's endpoints with the shared scrapes' times (again, for a request held since its choice)."""
        if eps is not self.primary:
            for mine, scraped in zip(eps, self.primary, strict=True):
                mine.updated = scraped.updated


class Outside:
    """Outside traffic: one request every ``1/rate`` seconds, to each server in turn, bypassing the pickers."""

    def __init__(self, rate: float, prompt_len: int, output_len: int, seed: int):
        self.period, self.prompt_len, self.output_len = 1.0 / rate, prompt_len, output_len
        self.rng = random.Random(f"{seed}/outside")
        self.sent = 0

    def first(self) -> float:
        return self.period

    def send(self, run: Any, t: float) -> float | None:
        """Send one request at ``t``; the time of the next, or None once the workload has finished."""
        if run.left <= 0:
            return None
        i = self.sent % len(run.nodes)
        self.sent += 1
        prompt = [self.rng.randrange(1000, 100_000) for _ in range(self.prompt_len)]
        run.sync(i, t)
        run.nodes[i].submit(t, prompt, self.output_len)
        run.rebound(i)
        return t + self.period


def believed(state: CycleState, endpoint: str) -> float | None:
    """The share of the prompt's blocks the prefix scorers (release v0.7) or prefix producers (release v0.10:
    each endpoint's ``PrefixCacheMatchInfo``) believed ``endpoint`` held (the highest, if several did), or
    None when none ran."""
    shares = []
    for m in state.values():
        if isinstance(m, PrefixMatch):
            if m.hashes:
                shares.append(m.servers.get(endpoint, 0) / len(m.hashes))
        elif isinstance(m, dict) and getattr(info := m.get(endpoint), "total_blocks", 0):  # a MatchInfo (v0.10)
            shares.append(info.ratio)
    return max(shares) if shares else None


@dataclass
class Trace:
    """What a run's pickers believed: request id → share of the prompt believed cached on the picked server."""

    beliefs: dict[str, float] = field(default_factory=dict)
    outside: int = 0  # outside requests sent
    event_batches: int = 0  # KV-event batches delivered to the precise index

    def stale_picks(self, run: ProfileRun) -> int:
        """Requests sent where the picker believed ≥ 90% of the prompt cached and the server found < 50%
        (the definition of bench/precise_routing.py on the local stack)."""
        return sum(1 for r in run.requests if r.ok and r.prompt_tokens and r.request_id in self.beliefs
                   and self.beliefs[r.request_id] >= STALE_BELIEF and r.cached_tokens < STALE_FOUND * r.prompt_tokens)
