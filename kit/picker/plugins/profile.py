"""``single-profile-handler``: run the one scheduling profile. Added implicitly when a config has one
profile and no handler, as upstream's loader does::

    plugins:
    - type: single-profile-handler
"""

from __future__ import annotations

from kit.picker.framework import PluginBase


class SingleProfileHandler(PluginBase):
    """``single-profile-handler`` of GIE v1.4.0 (the guide's EPP, llm-d-inference-scheduler v0.7.0): runs the one
    profile. No parameters."""

    type = "single-profile-handler"
    def profiles_to_run(self, names: list[str]) -> list[str]:
        return names[:1]
