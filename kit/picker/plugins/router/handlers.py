"""``data-parallel-profile-handler`` (llm-d-router v0.10.0, ``scheduling/profilehandler/dataparallel``).

Upstream it runs the config's one scheduling profile, then sends the request to the chosen pod's
``primaryPort`` (8000) with header ``x-data-parallel-host-port`` naming the chosen rank's ``host:port``, for a
sidecar there to forward it (upstream logs that it is deprecated in favour of ``single-profile-handler`` with
Istio ≥ 1.28.1). **Kit-only**: each kit endpoint is its own server, so the kit runs the profile as
``single-profile-handler`` does and sends the request to the chosen endpoint itself (no port rewrite); a
config with more than one profile is refused at load time. Parameters: ``primaryPort`` (8000; 0 or 1–65535).

Example::

    plugins:
    - type: data-parallel-profile-handler
      parameters:
        primaryPort: 8000
"""

from __future__ import annotations

from pydantic import Field, field_validator

from kit.picker.framework import Params, PluginBase


class DataParallelParams(Params):
    primary_port: int = Field(8000, alias="primaryPort", description="the pod's port requests are sent to")

    @field_validator("primary_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if value != 0 and not 1 <= value <= 65535:
            raise ValueError(f"invalid primaryPort: must be between 1 and 65535, got {value}")
        return value


class DataParallelProfileHandler(PluginBase):
    """``data-parallel-profile-handler`` of llm-d-router v0.10.0 (kit-only: no port rewrite; module docstring).
    Parameters: ``primaryPort`` (8000)."""

    type = "data-parallel-profile-handler"
    Params = DataParallelParams
    single = True  # runs exactly one profile

    def profiles_to_run(self, names: list[str]) -> list[str]:
        return names[:1]
