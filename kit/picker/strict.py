"""Plugin parameters decoded as llm-d-router v0.10.0 decodes them: unknown fields refused at any depth.

Since v0.9 the EPP gives every plugin factory a JSON decoder with ``DisallowUnknownFields``, so a parameter
the plugin does not know, at any depth (``tokenProcessorConfig.blockSizeToken``), stops the EPP at start.
Go's ``encoding/json`` matches a key to a field by its exact name first and then case-insensitively
(``BlockSizeTokens`` sets ``blockSizeTokens``). ``conform`` does both over a plugin's pydantic ``Params``
model: it returns the parameters with every key spelled as the model spells it, and one message per unknown
key with its full path. A field typed ``dict[str, Any]`` (a free-form map upstream too) is not walked.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel


def _names(model: type[BaseModel]) -> dict[str, str]:
    """The JSON names of ``model``'s fields (alias, else name) → field name."""
    return {(f.alias or name): name for name, f in model.model_fields.items()}


def _nested(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """Where a field's annotation holds a model: ("model" | "list" | "dict", the model), else None."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _nested(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if arg is not type(None) and (found := _nested(arg)) is not None:
                return found
        return None
    if origin in (list, tuple, set, frozenset):
        inner = _nested(get_args(annotation)[0]) if get_args(annotation) else None
        return ("list", inner[1]) if inner and inner[0] == "model" else None
    if origin is dict:
        args = get_args(annotation)
        inner = _nested(args[1]) if len(args) == 2 else None
        return ("dict", inner[1]) if inner and inner[0] == "model" else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    return None


def conform(model: type[BaseModel], raw: Any, path: str, owner: str) -> tuple[Any, list[str]]:
    """``raw`` (a plugin's parameters) with each key renamed to ``model``'s spelling, and the unknown keys of
    any depth, each as ``<path>.<key>: ...`` naming ``owner`` (the plugin type) and the keys known there."""
    if not isinstance(raw, dict):
        return raw, []
    names = _names(model)
    folded = {k.lower(): k for k in names}
    out: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        spelled = key if key in names else folded.get(str(key).lower())
        here = f"{path}.{key}"
        if spelled is None:
            known = ", ".join(sorted(names)) or "none"
            errors.append(f"{here}: unknown field of {owner}; llm-d-router v0.10.0 refuses it (the EPP does not "
                          f"start); known here: {known}")
            continue
        nested = _nested(model.model_fields[names[spelled]].annotation)
        if nested is not None and value is not None:
            kind, inner = nested
            if kind == "model":
                value, errs = conform(inner, value, here, owner)
                errors += errs
            elif kind == "list" and isinstance(value, list):
                items = []
                for i, item in enumerate(value):
                    item, errs = conform(inner, item, f"{here}[{i}]", owner)
                    items.append(item)
                    errors += errs
                value = items
            elif kind == "dict" and isinstance(value, dict):
                entries = {}
                for k, item in value.items():
                    entries[k], errs = conform(inner, item, f"{here}.{k}", owner)
                    errors += errs
                value = entries
        out[spelled] = value
    return out, errors
