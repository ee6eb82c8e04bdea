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


class NotReadyError(KitError):
    """Something is missing or not ready; lists each item and why."""

    def __init__(self, problems: Iterable[str], headline: str = "not ready"):
        self.problems = list(problems)
        super().__init__(f"{headline}:\n" + "\n".join(f"  - {p}" for p in self.problems))


class ApplyError(KitError):
    """An apply failed part-way; says what was applied, what failed and what was not applied."""

    def __init__(self, applied: list[str], failed: str, not_applied: list[str], reason: str):
        self.applied, self.failed, self.not_applied = applied, failed, not_applied
        super().__init__(
            f"applying {failed} failed: {reason}\n"
            f"  applied ({len(applied)}): {', '.join(applied) or 'none'}\n"
            f"  not applied ({len(not_applied) + 1}): {', '.join([failed, *not_applied])}")
