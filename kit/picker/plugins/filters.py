"""Filters: drop candidate endpoints by pod label.

``decode-filter`` keeps endpoints whose ``llm-d.ai/role`` is decode, prefill-decode, both or
encode-prefill-decode, and those without the label::

    plugins:
    - type: decode-filter

``prefill-filter`` keeps endpoints whose ``llm-d.ai/role`` is prefill::

    plugins:
    - type: prefill-filter

``by-label`` keeps endpoints whose ``label`` has one of ``validValues`` (and, with ``allowsNoLabel``,
those without it)::

    plugins:
    - type: by-label
      parameters:
        label: hardware
        validValues: [h100, h200]
        allowsNoLabel: false

``label-selector-filter`` (legacy name ``by-label-selector``) keeps endpoints matching every entry of
``matchLabels``::

    plugins:
    - type: label-selector-filter
      parameters:
        matchLabels:
          llm-d.ai/role: decode
"""

from __future__ import annotations

from pydantic import Field

from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase

ROLE = "llm-d.ai/role"


class _RoleFilter(PluginBase):
    roles: frozenset[str] = frozenset()
    allow_unlabelled = True

    def filter(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> list[Endpoint]:
        return [ep for ep in eps
                if ep.labels.get(ROLE) in self.roles or (self.allow_unlabelled and ROLE not in ep.labels)]


class DecodeFilter(_RoleFilter):
    """``decode-filter`` of llm-d-inference-scheduler v0.7.0: decode-capable or unlabelled endpoints
    (``llm-d.ai/role``). No parameters."""

    type = "decode-filter"
    roles = frozenset({"decode", "prefill-decode", "both", "encode-prefill-decode"})


class PrefillFilter(_RoleFilter):
    """``prefill-filter`` of llm-d-inference-scheduler v0.7.0: endpoints labelled ``llm-d.ai/role: prefill``. No
    parameters."""

    type = "prefill-filter"
    roles = frozenset({"prefill"})
    allow_unlabelled = False


class ByLabelParams(Params):
    label: str = Field(min_length=1, description="the label read")
    valid_values: list[str] = Field(default_factory=list, alias="validValues", description="values kept")
    allows_no_label: bool = Field(False, alias="allowsNoLabel", description="keep endpoints without the label")


class ByLabelFilter(PluginBase):
    """``by-label`` of llm-d-inference-scheduler v0.7.0: endpoints whose ``label`` has one of ``validValues`` (or, with
    ``allowsNoLabel``, no such label). Parameters: ``label`` (required), ``validValues`` ([]), ``allowsNoLabel``
    (false)."""

    type = "by-label"
    Params = ByLabelParams

    def __init__(self, name: str | None = None, params: ByLabelParams | None = None):
        super().__init__(name, params)
        if params is None:
            raise ValueError("by-label needs parameters")
        self.p = params

    def filter(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> list[Endpoint]:
        p = self.p
        return [ep for ep in eps
                if (p.label not in ep.labels and p.allows_no_label) or ep.labels.get(p.label) in p.valid_values]


class LabelSelectorParams(Params):
    match_labels: dict[str, str] = Field(alias="matchLabels", description="labels an endpoint must carry")


class LabelSelectorFilter(PluginBase):
    """``label-selector-filter`` (``by-label-selector``) of llm-d-inference-scheduler v0.7.0: endpoints carrying every
    ``matchLabels`` entry. Parameters: ``matchLabels`` (required)."""

    type = "label-selector-filter"
    Params = LabelSelectorParams

    def __init__(self, name: str | None = None, params: LabelSelectorParams | None = None):
        super().__init__(name, params)
        self.match = params.match_labels if params else {}

    def filter(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> list[Endpoint]:
        return [ep for ep in eps if all(ep.labels.get(k) == v for k, v in self.match.items())]
