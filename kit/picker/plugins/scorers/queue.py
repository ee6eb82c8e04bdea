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
    type = "queue-scorer"
    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        return min_max({ep: ep.metrics.waiting for ep in eps})
