"""``queue-scorer``: prefer endpoints with short waiting queues.

Consumes ``vllm:num_requests_waiting``. Score = (maxQ − q) / (maxQ − minQ) over the candidates;
1.0 for all when every queue is equal. No parameters.

Example::

    plugins:
    - type: queue-scorer
    schedulingProfiles:
    - name: default
      plugins:
      - pluginRef: queue-scorer
        weight: 2
"""

from __future__ import annotations

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, PluginBase, min_max


class QueueScorer(PluginBase):
    """``queue-scorer`` of GIE v1.4.0 (the guide's EPP, llm-d-inference-scheduler v0.7.0): a shorter waiting queue
    scores higher, min-max over the candidates (module docstring). No parameters."""

    type = "queue-scorer"
    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        return min_max({ep: ep.metrics.waiting for ep in eps})
