"""``load-aware-scorer`` (llm-d): half credit for an empty queue, less as the queue grows.

Consumes ``vllm:num_requests_waiting``. Score = 0.5 when the queue is empty, else
0.5 × (1 − min(q, threshold) / threshold).

Parameters: ``threshold`` (queue length that scores 0; default 128).

Example::

    plugins:
    - type: load-aware-scorer
      parameters:
        threshold: 64
"""

from __future__ import annotations

from pydantic import Field

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase


class LoadAwareParams(Params):
    threshold: int = Field(128, gt=0, description="queue length at which the score reaches 0")


class LoadAwareScorer(PluginBase):
    """``load-aware-scorer`` of llm-d-inference-scheduler v0.7.0: 0.5 for an empty queue, less as it grows to
    ``threshold`` (module docstring). Parameters: ``threshold`` (128)."""

    type = "load-aware-scorer"
    Params = LoadAwareParams

    def __init__(self, name: str | None = None, params: LoadAwareParams | None = None):
        super().__init__(name, params)
        self.threshold = (params or LoadAwareParams()).threshold

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        t = self.threshold
        return {ep: 0.5 if ep.metrics.waiting <= 0 else 0.5 * (1 - min(ep.metrics.waiting, t) / t) for ep in eps}
