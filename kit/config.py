"""Strict settings models and readable validation errors for everything the kit loads."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from kit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for the kit's own settings: unknown fields are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def describe(err: ValidationError) -> list[str]:
    """One line per problem, each starting with the dotted field path."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {msg}")
    return lines


def parse(model: type[M], data: object, source: str) -> M:
    """Validate ``data`` into ``model``; raise ConfigError naming ``source`` and each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, describe(err)) from None
