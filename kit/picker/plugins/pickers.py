"""Pickers: choose among scored endpoints. Each takes ``maxNumOfEndpoints`` (default 1; ≤ 0 means the
default, as upstream). Behaviour follows GIE v1.4.0.

``max-score-picker`` shuffles the candidates, then stable-sorts by score, so ties break randomly::

    plugins:
    - type: max-score-picker

``random-picker`` ignores scores and picks uniformly::

    plugins:
    - type: random-picker

``weighted-random-picker`` samples in proportion to score (A-Res: key u^(1/score), largest keys win).
An endpoint scoring 0 gets key 0: it is never chosen over a positive one, but stays selectable, so
with ``maxNumOfEndpoints`` above the number of positive scores the zero-score endpoints fill the
remaining places (in candidate order). When every score is 0 it picks uniformly, like
``random-picker``::

    plugins:
    - type: weighted-random-picker
      parameters:
        maxNumOfEndpoints: 1

``round-robin-picker`` (kit-only) cycles through the candidates in name order, ignoring scores: what a
plain Kubernetes Service does, the baseline the guide compares against::

    plugins:
    - type: round-robin-picker

``least-recent-max-score-picker`` (kit-only) picks the top score like ``max-score-picker`` but breaks ties
by the endpoint it picked least recently (never-picked first, in name order) instead of at random. Among
endpoints that look alike, arrivals then rotate as under round-robin, which spaces each server's
prefills; random ties let two land together (docs/results/scheduling.md)::

    plugins:
    - type: least-recent-max-score-picker
"""

from __future__ import annotations

import itertools
import random
from operator import attrgetter
from typing import Annotated

from pydantic import Field

from kit.picker.framework import CycleState, Endpoint, Params, PluginBase, positive_or

_name = attrgetter("name")


class PickerParams(Params):
    max_num_of_endpoints: Annotated[int, positive_or(1)] = Field(1, alias="maxNumOfEndpoints")


class _Picker(PluginBase):
    Params = PickerParams

    def __init__(self, name: str | None = None, params: PickerParams | None = None, rng: random.Random | None = None):
        super().__init__(name, params)
        self.n = (params or PickerParams()).max_num_of_endpoints
        self.rng = rng or random.Random()


class MaxScorePicker(_Picker):
    type = "max-score-picker"

    def pick(self, state: CycleState, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        if self.n == 1:  # the same choice as shuffle-then-sort, in one pass: uniform among the top scores
            best = _top(scored)
            return [best[0] if len(best) == 1 else self.rng.choice(best)] if best else []
        shuffled = list(scored)
        self.rng.shuffle(shuffled)
        shuffled.sort(key=lambda es: es[1], reverse=True)
        return [ep for ep, _ in shuffled[: self.n]]


def _top(scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
    """The endpoints whose score equals the highest, in order: ``top = max(scores)`` then those ``== top``,
    in one pass (a NaN first is the ``max``, as ``max`` has it, and equals nothing)."""
    if not scored:
        return []
    ep, top = scored[0]
    best = [ep] if top == top else []
    for ep, s in scored[1:]:
        if s > top:
            top, best = s, [ep]
        elif s == top:
            best.append(ep)
    return best


class RandomPicker(_Picker):
    type = "random-picker"

    def pick(self, state: CycleState, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        return [ep for ep, _ in self.rng.sample(scored, min(self.n, len(scored)))]


class WeightedRandomPicker(_Picker):
    type = "weighted-random-picker"

    def pick(self, state: CycleState, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        if not any(s > 0 for _, s in scored):
            return [ep for ep, _ in self.rng.sample(scored, min(self.n, len(scored)))]
        keyed = [((self.rng.random() or 1e-10) ** (1.0 / s) if s > 0 else 0.0, ep) for ep, s in scored]
        keyed.sort(key=lambda k: k[0], reverse=True)  # stable: zero keys keep candidate order
        return [ep for _, ep in keyed[: self.n]]


class RoundRobinPicker(_Picker):
    type = "round-robin-picker"

    def __init__(self, name: str | None = None, params: PickerParams | None = None, rng: random.Random | None = None):
        super().__init__(name, params, rng)
        self._turn = itertools.count()

    def pick(self, state: CycleState, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        ordered = sorted([ep for ep, _ in scored], key=_name)
        start = next(self._turn) % len(ordered)
        return [ordered[start]] if self.n == 1 else (ordered[start:] + ordered[:start])[: self.n]


class LeastRecentMaxScorePicker(_Picker):
    type = "least-recent-max-score-picker"

    def __init__(self, name: str | None = None, params: PickerParams | None = None, rng: random.Random | None = None):
        super().__init__(name, params, rng)
        self._picks = itertools.count(1)
        self._last: dict[str, int] = {}  # endpoint name → the pick number that last chose it

    def pick(self, state: CycleState, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        last = self._last

        def rank(es: tuple[Endpoint, float]) -> tuple[float, int, str]:
            return -es[1], last.get(es[0].name, 0), es[0].name

        if self.n == 1:  # the first of the sorted order, without sorting every candidate
            chosen = [min(scored, key=rank)[0]] if scored else []
        else:
            chosen = [ep for ep, _ in sorted(scored, key=rank)[: self.n]]
        for ep in chosen:
            self._last[ep.name] = next(self._picks)
        return chosen
