"""Plugin registry: upstream type names → plugin classes, instantiated with typed parameters.

Each plugin class may set ``Params`` (a pydantic model). Parameters of the wrong type are errors
naming the field; parameters a plugin does not know are accepted, as upstream accepts them, but
reported as warnings naming the field (upstream silently drops them), and so are values a plugin
replaced by its default (upstream falls back silently). A type the kit does not implement is an error
that lists the implemented ones. The built-in plugins are listed once, in ``kit.picker.plugins``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kit.config import describe
from kit.errors import ConfigError
from kit.picker.framework import Clock, Params


class Registry:
    """``type name → plugin class``; ``create`` builds an instance from a config entry. ``info`` holds a release's
    registration metadata (``kit.picker.plugins.router.Info``) and ``upstream`` every type that release registers
    upstream, implemented by the kit or not (both only for llm-d-router v0.10)."""

    def __init__(self, plugins: dict[str, type] | None = None, info: dict[str, Any] | None = None,
                 upstream: frozenset[str] = frozenset()):
        self._classes: dict[str, type] = dict(plugins or {})
        self.info: dict[str, Any] = dict(info or {})
        self.upstream = upstream

    def register(self, plugin_type: str, cls: type) -> None:
        self._classes[plugin_type] = cls

    def types(self) -> list[str]:
        return sorted(self._classes)

    def plugin_class(self, plugin_type: str) -> type:
        if plugin_type not in self._classes:
            raise KeyError(plugin_type)
        return self._classes[plugin_type]

    def unknown(self, plugin_type: str) -> str:
        """The message for a type the kit does not implement, listing those it does."""
        return (f"unknown plugin type {plugin_type!r}: the kit's picker does not implement it; "
                f"implemented: {', '.join(self.types())}")

    def create(self, plugin_type: str, name: str | None = None, raw: dict[str, Any] | None = None,
               path: str = "plugins", warnings: list[str] | None = None, clock: Clock | None = None) -> Any:
        """An instance of ``plugin_type`` named ``name`` (default: the type) reading time from ``clock``;
        ``path`` (e.g. ``plugins[2]``) prefixes every message; unknown or replaced parameters are
        appended to ``warnings``."""
        if plugin_type not in self._classes:
            raise ConfigError("EndpointPickerConfig", [f"{path}.type: {self.unknown(plugin_type)}"])
        cls = self._classes[plugin_type]
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError("EndpointPickerConfig", [f"{path}.parameters: must be a mapping"])
        model: type[Params] = cls.Params or Params
        alias = {n: f.alias or n for n, f in model.model_fields.items()}
        known = set(alias.values()) | set(alias)
        notes: list[tuple[str, str]] = []
        if warnings is not None:
            for key in raw:
                if key not in known:
                    warnings.append(f"{path}.parameters.{key}: unknown parameter of {plugin_type}, ignored "
                                    f"(known: {', '.join(sorted(set(alias.values()))) or 'none'})")
        try:
            params = model.model_validate(raw, context={"notes": notes})
        except ValidationError as err:
            raise ConfigError("EndpointPickerConfig",
                              [f"{path}.parameters.{line}" for line in describe(err)]) from None
        if warnings is not None:
            warnings.extend(f"{path}.parameters.{alias.get(field, field)}: {msg}" for field, msg in notes)
        plugin = cls(name or plugin_type, params)
        if clock is not None:
            plugin.clock = clock
        return plugin


_DEFAULT: dict[str, Registry] = {}


def default(release: str = "v0.7") -> Registry:
    """The registry of the kit's built-in plugins for ``release`` (``kit.picker.release``)."""
    if release not in _DEFAULT:
        if release == "v0.10":
            from kit.picker.plugins.router import PLUGINS, UPSTREAM_TYPES

            _DEFAULT[release] = Registry({t: i.cls for t, i in PLUGINS.items()}, PLUGINS, UPSTREAM_TYPES)
        else:
            from kit.picker.plugins import BUILTINS

            _DEFAULT[release] = Registry(BUILTINS)
    return _DEFAULT[release]
