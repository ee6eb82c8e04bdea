"""Plugin registry: upstream type names → plugin classes, with typed parameters.

Each plugin class has a ``Params`` pydantic model. Parameters of the wrong type are errors naming the
field; parameters a plugin does not know are accepted, as upstream accepts them, but reported as
warnings naming the field (upstream silently drops them).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from kit.config import describe
from kit.errors import ConfigError, UnknownChoiceError


class Params(BaseModel):
    """Base of plugin parameters: camelCase names as upstream spells them; unknown keys ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from a Go duration string (``"200ms"``, ``"1m30s"``) or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value and _DURATION.sub("", value) == "":
        return sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(value))
    raise ValueError(f"expected a duration such as '200ms' or '2m', got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]

_REGISTRY: dict[str, type] = {}


def register(plugin_type: str, cls: type, *aliases: str) -> None:
    for name in (plugin_type, *aliases):
        _REGISTRY[name] = cls


def types() -> list[str]:
    register_all()
    return sorted(_REGISTRY)


def plugin_class(plugin_type: str) -> type:
    register_all()
    if plugin_type not in _REGISTRY:
        raise UnknownChoiceError("plugin type", plugin_type, _REGISTRY)
    return _REGISTRY[plugin_type]


def create(plugin_type: str, name: str, raw: dict[str, Any] | None, path: str, warnings: list[str]) -> Any:
    """Instantiate a plugin; ``path`` (e.g. ``plugins[2]``) prefixes every message."""
    try:
        cls = plugin_class(plugin_type)
    except UnknownChoiceError as err:
        raise ConfigError("EndpointPickerConfig", [f"{path}.type: {err}"]) from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError("EndpointPickerConfig", [f"{path}.parameters: must be a mapping"])
    model: type[Params] = cls.Params or Params
    known = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
    for key in raw:
        if key not in known:
            warnings.append(f"{path}.parameters.{key}: unknown parameter of {plugin_type}, ignored "
                            f"(known: {', '.join(sorted(known)) or 'none'})")
    try:
        params = model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("EndpointPickerConfig", [f"{path}.parameters.{line}" for line in describe(err)]) from None
    return cls(name, params)


_DONE = False


def register_all() -> None:
    """Register every built-in plugin (idempotent); the one readable list of what exists."""
    global _DONE
    if _DONE:
        return
    from kit.picker.plugins import filters, pickers, profile
    from kit.picker.plugins.scorers import (
        active_request,
        kv_cache,
        load_aware,
        prefix,
        queue,
        running,
        session_affinity,
    )

    register("queue-scorer", queue.QueueScorer)
    register("kv-cache-utilization-scorer", kv_cache.KVCacheUtilizationScorer)
    register("running-requests-size-scorer", running.RunningRequestsScorer)
    register("load-aware-scorer", load_aware.LoadAwareScorer)
    register("active-request-scorer", active_request.ActiveRequestScorer)
    register("session-affinity-scorer", session_affinity.SessionAffinityScorer)
    register("prefix-cache-scorer", prefix.PrefixCacheScorer)
    register("max-score-picker", pickers.MaxScorePicker)
    register("random-picker", pickers.RandomPicker)
    register("weighted-random-picker", pickers.WeightedRandomPicker)
    register("round-robin-picker", pickers.RoundRobinPicker)  # kit-only baseline: a plain Service
    register("decode-filter", filters.DecodeFilter)
    register("prefill-filter", filters.PrefillFilter)
    register("by-label", filters.ByLabelFilter)
    # Upstream renamed by-label-selector to label-selector-filter; both names load.
    register("label-selector-filter", filters.LabelSelectorFilter, "by-label-selector")
    register("single-profile-handler", profile.SingleProfileHandler)
    _DONE = True
