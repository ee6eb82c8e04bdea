"""``running-requests-size-scorer``: prefer endpoints running fewer requests.

Consumes ``vllm:num_requests_running``; min-max normalised like ``queue-scorer``. No parameters.

Example::

    plugins:
    - type: running-requests-size-scorer
"""

from __future__ import annotations

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, PluginBase, min_max


class RunningRequestsScorer(PluginBase):
    """``running-requests-size-scorer`` of GIE v1.4.0 (the guide's EPP, llm-d-inference-scheduler v0.7.0): fewer running
    requests score higher, min-max over the candidates (module docstring). No parameters."""

    type = "running-requests-size-scorer"
    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        return min_max({ep: ep.metrics.running for ep in eps})
