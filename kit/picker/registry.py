"""Plugin registry: upstream type names → plugin classes, instantiated with typed parameters.

Each plugin class may set ``Params`` (a pydantic model). Parameters of the wrong type are errors
naming the field; parameters a plugin does not know are accepted, as upstream accepts them, but
reported as warnings naming the field (upstream silently drops them). The built-in plugins are listed
once, in ``kit.picker.plugins``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kit.config import describe
from kit.errors import ConfigError, UnknownChoiceError
from kit.picker.framework import Params


class Registry:
    """``type name → plugin class``; ``create`` builds an instance from a config entry."""

    def __init__(self, plugins: dict[str, type] | None = None):
        self._classes: dict[str, type] = dict(plugins or {})

    def register(self, plugin_type: str, cls: type) -> None:
        self._classes[plugin_type] = cls

    def types(self) -> list[str]:
        return sorted(self._classes)

    def plugin_class(self, plugin_type: str) -> type:
        if plugin_type not in self._classes:
            raise UnknownChoiceError("plugin type", plugin_type, self._classes)
        return self._classes[plugin_type]

    def create(self, plugin_type: str, name: str | None = None, raw: dict[str, Any] | None = None,
               path: str = "plugins", warnings: list[str] | None = None) -> Any:
        """An instance of ``plugin_type`` named ``name`` (default: the type); ``path`` (e.g. ``plugins[2]``)
        prefixes every message; unknown parameters are appended to ``warnings``."""
        try:
            cls = self.plugin_class(plugin_type)
        except UnknownChoiceError as err:
            raise ConfigError("EndpointPickerConfig", [f"{path}.type: {err}"]) from None
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError("EndpointPickerConfig", [f"{path}.parameters: must be a mapping"])
        model: type[Params] = cls.Params or Params
        known = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
        for key in raw:
            if key not in known and warnings is not None:
                warnings.append(f"{path}.parameters.{key}: unknown parameter of {plugin_type}, ignored "
                                f"(known: {', '.join(sorted(known)) or 'none'})")
        try:
            params = model.model_validate(raw)
        except ValidationError as err:
            raise ConfigError("EndpointPickerConfig",
                              [f"{path}.parameters.{line}" for line in describe(err)]) from None
        return cls(name or plugin_type, params)


_DEFAULT: Registry | None = None


def default() -> Registry:
    """The registry of the kit's built-in plugins."""
    global _DEFAULT
    if _DEFAULT is None:
        from kit.picker.plugins import BUILTINS

        _DEFAULT = Registry(BUILTINS)
    return _DEFAULT
