"""The plugin reference, read from a release's registry: every implemented plugin type, its kind, the
upstream release it follows (with upstream's stability and deprecation, or "kit only"), what it does, and its
parameters with their defaults.

Everything here comes from the registry and the plugin classes themselves (the class docstring, the ``Params``
model's fields with their aliases, defaults and descriptions), so ``kit plugins [--release R]`` and the
generated ``docs/reference/plugins*.md`` cannot drift from the code.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kit.picker.registry import Registry, default
from kit.picker.release import DEFAULT, RELEASES

# What a plugin does, by the method that makes it one (upstream's plugin kinds), in display order.
KINDS = (("filter", "filter"), ("score", "scorer"), ("pick", "picker"), ("profiles_to_run", "profile handler"),
         ("prepare_request_data", "data producer"), ("produce", "data producer"), ("admit", "admission"),
         ("saturation", "saturation detector"), ("produces", "data source"), ("consumes", "data extractor"),
         ("parse", "request parser"))


@dataclass
class Parameter:
    name: str  # as a config spells it, dotted for nested sections (``tokenProcessorConfig.blockSize``)
    type: str
    default: str
    description: str = ""


@dataclass
class PluginEntry:
    type: str
    kinds: list[str]
    upstream: str
    summary: str
    aliases: list[str] = field(default_factory=list)  # other type names that load the same class
    parameters: list[Parameter] = field(default_factory=list)


# v0.7's types with no upstream counterpart (a cluster EPP refuses them); v0.10's registry marks its own.
KIT_ONLY_V07 = frozenset({"round-robin-picker", "least-recent-max-score-picker"})


def catalog(release: str = DEFAULT) -> list[PluginEntry]:
    """Every plugin type ``release``'s registry implements, one entry per class (extra type names as aliases)."""
    registry = default(release)
    by_class: dict[type, list[str]] = {}
    for name in registry.types():
        by_class.setdefault(registry.plugin_class(name), []).append(name)
    entries = []
    for cls, names in by_class.items():
        primary = cls.type if cls.type in names else names[0]
        entries.append(PluginEntry(
            type=primary, kinds=kinds(cls), upstream=follows(registry, release, primary), summary=summary(cls),
            aliases=[n for n in names if n != primary], parameters=parameters(getattr(cls, "Params", None))))
    return sorted(entries, key=lambda e: (e.kinds[0] if e.kinds else "~", e.type))


def follows(registry: Registry, release: str, plugin_type: str) -> str:
    """The upstream release ``plugin_type`` follows, with upstream's stability and deprecation; "kit only" for the
    kit's own types."""
    info = registry.info.get(plugin_type)
    if plugin_type in KIT_ONLY_V07 or (info is not None and info.kit_only):
        return "kit only (no upstream type)"
    out = RELEASES[release].split(" (")[0]
    if info is not None and info.stability != "Beta":
        out += f", {info.stability}"
    if info is not None and info.deprecated:
        since, removed, instead = info.deprecated
        out += f", deprecated in {since}, goes in {removed}" + (f" (use {instead})" if instead else "")
    return out


def kinds(cls: type) -> list[str]:
    found: list[str] = []
    for method, kind in KINDS:
        if callable(getattr(cls, method, None)) and kind not in found:
            found.append(kind)
    return found


def summary(cls: type) -> str:
    """The class docstring's first paragraph, else its module's (one line, whitespace collapsed)."""
    doc = cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def parameters(model: type[BaseModel] | None, prefix: str = "") -> list[Parameter]:
    if model is None:
        return []
    out = []
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        nested = _model_of(info.annotation)
        if nested is not None and nested.model_fields:
            out.append(Parameter(key, "section", "", info.description or ""))
            out.extend(parameters(nested, key + "."))
            continue
        if info.default_factory is not None:
            value: Any = info.default_factory()  # type: ignore[call-arg]
        else:
            value = None if info.default is PydanticUndefined else info.default
        default_text = "required" if info.is_required() else _show(value)
        out.append(Parameter(key, _type_name(info.annotation), default_text, info.description or ""))
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``Model``, ``Model | None``), if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _show(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True)
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        return repr(value)


def text(entries: list[PluginEntry]) -> str:
    """The terminal listing ``kit plugins`` prints."""
    lines = []
    for e in entries:
        alias = f" (also: {', '.join(e.aliases)})" if e.aliases else ""
        lines.append(f"{e.type}{alias}  [{', '.join(e.kinds) or 'plugin'}]  {e.upstream}")
        lines.append(f"    {e.summary}")
        for p in e.parameters:
            lines.append(f"    {p.name}: {p.type} = {p.default}" + (f"  — {p.description}" if p.description else ""))
    return "\n".join(lines)


def page_name(release: str) -> str:
    """The reference page of ``release``'s plugins: ``plugins.md`` for the default release."""
    return "plugins.md" if release == DEFAULT else f"plugins-{release}.md"


def markdown(entries: list[PluginEntry], release: str = DEFAULT) -> str:
    """The reference page of ``release``'s plugins (``docs/reference/plugins*.md``)."""
    others = ", ".join(f"[{r}]({page_name(r)})" for r in RELEASES if r != release)
    out = [f"# Scheduler plugins, release {release}", "",
           f"Every plugin type the kit's endpoint picker implements for release {release}: {RELEASES[release]},",
           "with the upstream release it follows and its parameters (names as an `EndpointPickerConfig` spells",
           f"them; defaults are what applies when a config leaves a parameter out). Other releases: {others}.",
           f"Generated from the plugin registry by `kit plugins --release {release} --markdown`; do not edit.",
           "", "| type | kind | follows |", "|---|---|---|"]
    out += [f"| [`{e.type}`](#{e.type}) | {', '.join(e.kinds) or 'plugin'} | {e.upstream} |" for e in entries]
    for e in entries:
        out += ["", f"## {e.type}", ""]
        if e.aliases:
            out += [f"Also loads as: {', '.join(f'`{a}`' for a in e.aliases)}.", ""]
        kind = ", ".join(e.kinds) or "plugin"
        out += [f"*{kind}*; follows {e.upstream or 'no upstream release'}.", "", e.summary, ""]
        if e.parameters:
            out += ["| parameter | type | default | description |", "|---|---|---|---|"]
            out += [f"| `{p.name}` | {_cell(p.type)} | {_cell(p.default)} | {_cell(p.description)} |"
                    for p in e.parameters]
        else:
            out.append("No parameters.")
    return "\n".join(out) + "\n"


def _cell(value: str) -> str:
    return value.replace("|", "\\|") if value else ""
