"""Every error the kit raises on purpose. ``str(err)`` is the sentence the user reads."""

from __future__ import annotations

from collections.abc import Iterable


class KitError(Exception):
    """Base of the kit's errors; the CLI prints it and exits 1."""


class ConfigError(KitError):
    """A settings file, flag or parameter is invalid; names the source and each bad field."""

    def __init__(self, source: str, problems: Iterable[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


class UnknownChoiceError(KitError):
    """A name is not one of the valid choices, which the message lists."""

    def __init__(self, what: str, value: str, choices: Iterable[str]):
        self.choices = sorted(choices)
        super().__init__(f"unknown {what} {value!r}; valid choices: {', '.join(self.choices)}")


class MissingDependencyError(KitError):
    """An optional package is needed; the message gives the install command."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"this needs {package}: pip install 'kit[{extra}]'")
