"""Which upstream release the picker follows, and which release a scheduler config says it needs.

* ``v0.7``: the EPP the guide deploys, ``llm-d-inference-scheduler`` v0.7.0 built on GIE v1.4.0 (the kit's
  behaviour since the start; ``kit.picker.config``).
* ``v0.10``: today's ``llm-d-router`` v0.10.0 (tag ``v0.10.0``, commit ``ebab6879``): its plugin set, parameter
  names and defaults, deprecations and strictness (``kit.picker.router_config``).

A scheduler profile that needs a release says so in its leading comment lines, with a line such as
``# release: v0.10``: the line is a YAML comment, so the file stays exactly what the upstream EPP reads (the
cluster target puts it in the EPP's ConfigMap unchanged). Loading picks the declared release when none is
asked for, and refuses a file whose declared release differs from the one asked for.
"""

from __future__ import annotations

import re

from kit.errors import ConfigError

RELEASES = {
    "v0.7": "llm-d-inference-scheduler v0.7.0 on GIE v1.4.0 (the guide's EPP)",
    "v0.10": "llm-d-router v0.10.0 (today's optimized-baseline guide)",
}
DEFAULT = "v0.7"
_MARK = re.compile(r"#\s*release:\s*(\S+)")


def check(release: str) -> str:
    """``release`` if the picker knows it, else a ConfigError naming the valid choices."""
    if release not in RELEASES:
        raise ConfigError("release", [f"unknown release {release!r}; valid choices: {', '.join(RELEASES)}"])
    return release


def declared(text: str) -> str | None:
    """The release a scheduler config's leading comment lines declare (``# release: v0.10``), or None."""
    for line in text.lstrip("\ufeff").splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            return None  # the header ended without a declaration
        m = _MARK.match(stripped)
        if m:
            return m.group(1)
    return None


def resolve(asked: str | None, text: str, source: str) -> str:
    """The release to load ``text`` with: the one asked for, else the one the file declares, else ``v0.7``.
    A file that declares a release the picker does not know, or another release than the one asked for, is
    refused with the reason."""
    mark = declared(text)
    if mark is not None and mark not in RELEASES:
        raise ConfigError(source, [f"the file declares '# release: {mark}', which the picker does not know; "
                                   f"valid choices: {', '.join(RELEASES)}"])
    if asked is None:
        return mark or DEFAULT
    check(asked)
    if mark is not None and mark != asked:
        raise ConfigError(source, [f"this scheduler config needs release {mark} ({RELEASES[mark]}), as its "
                                   f"'# release: {mark}' line says, but release {asked} ({RELEASES[asked]}) was "
                                   f"asked for; choose release {mark} (e.g. kit gateway --release {mark}, or an "
                                   "environment that deploys it)"])
    return asked
