"""The endpoint picker: upstream's scheduling plugins in Python, configured by EndpointPickerConfig YAML.

What callers (the gateway, the fleet simulator, benchmarks) use; plugins stay behind the registry.
Pure scheduling logic: no network, no server, no plotting.
"""

from kit.picker.config import LoadedConfig, load_picker_config, load_picker_file
from kit.picker.framework import CycleState, Endpoint, InferenceRequest, KVEventsConsumer
from kit.picker.plugins.approx_prefix import PrefixMatch
from kit.picker.release import RELEASES
from kit.picker.scheduler import Decision, NoEndpoints, Scheduler, Unparseable

__all__ = ["RELEASES", "CycleState", "Decision", "Endpoint", "InferenceRequest", "KVEventsConsumer", "LoadedConfig",
           "MatchInfo", "NoEndpoints", "PrefixMatch", "Scheduler", "Unparseable", "load_picker_config",
           "load_picker_file"]


def __getattr__(name: str) -> object:
    """``MatchInfo`` (release v0.10's ``PrefixCacheMatchInfo``) is imported on first use, so that release v0.7 never
    imports v0.10's plugins (their objects would cost every garbage collection of a v0.7 gateway)."""
    if name == "MatchInfo":
        from kit.picker.plugins.router.data import MatchInfo

        return MatchInfo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
