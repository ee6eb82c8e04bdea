"""``session-affinity-scorer`` (llm-d): send a session back to the endpoint that served it before.

Reads header ``x-session-token`` (base64 of the endpoint's name); that endpoint scores 1.0, every
other 0. The plugin writes the header on each response (a ``ResponseHeaders`` hook), so a client that
echoes it sticks. No parameters.

Example::

    plugins:
    - type: session-affinity-scorer
"""

from __future__ import annotations

import base64
import binascii

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, PluginBase

HEADER = "x-session-token"


def token_for(ep: Endpoint) -> str:
    return base64.b64encode(ep.name.encode()).decode()


class SessionAffinityScorer(PluginBase):
    """``session-affinity-scorer`` of llm-d-inference-scheduler v0.7.0: 1.0 for the endpoint the ``x-session-token``
    header names (module docstring). No parameters."""

    type = "session-affinity-scorer"
    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        token = req.headers.get(HEADER, "")
        try:
            wanted = base64.b64decode(token, validate=True).decode() if token else ""
        except (binascii.Error, UnicodeDecodeError):
            wanted = ""
        return {ep: 1.0 if ep.name == wanted else 0.0 for ep in eps}

    def response_headers(self, req: InferenceRequest, ep: Endpoint) -> dict[str, str]:
        return {HEADER: token_for(ep)}
