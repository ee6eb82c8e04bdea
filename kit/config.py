"""Strict settings models and readable validation errors for everything the kit loads."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from kit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for the kit's own settings: unknown fields are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def dotted(loc: tuple) -> str:
    """``("profiles", 0, "name")`` → ``profiles[0].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(err: ValidationError) -> list[str]:
    """One line per problem, each starting with the dotted field path."""
    lines = []
    for e in err.errors():
        path = dotted(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {msg}" if path else msg)  # model-level messages name their fields
    return lines


def parse(model: type[M], data: object, source: str) -> M:
    """Validate ``data`` into ``model``; raise ConfigError naming ``source`` and each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, describe(err)) from None
