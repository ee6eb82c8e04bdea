"""Where the kit's data lives: environments, templates, the shipped scheduler profiles, the per-user state folder."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent  # the repository, for a clone or an editable install


def _data_root() -> Path:
    """``$KIT_HOME`` if set; else the repository when the package runs from a checkout (its top-level
    ``environments/`` and ``templates/`` are the data); else the copy a wheel carries in ``kit/_data``."""
    if os.environ.get("KIT_HOME"):
        return Path(os.environ["KIT_HOME"]).expanduser().resolve()
    if (_CHECKOUT / "environments").is_dir() and (_CHECKOUT / "templates").is_dir():
        return _CHECKOUT
    return _PACKAGE / "_data"


ROOT = _data_root()
FROM_CHECKOUT = ROOT == _CHECKOUT
ENVIRONMENTS = ROOT / "environments"
TEMPLATES = ROOT / "templates"
SCHEDULER_CONFIGS = TEMPLATES / "scheduler"
NOTEBOOKS = ROOT / "notebooks"
# Folders a wheel carries in kit/_data (setup.py copies them at build time).
SHIPPED_DATA = ("environments", "templates", "notebooks")


def default_scheduler_config() -> Path:
    """The guide's default profile, used by the local gateway and the cluster EPP alike."""
    return SCHEDULER_CONFIGS / "default-plugins.yaml"


# The profiles the walkthrough compares, from blind to the guide's default.
COMPARED_PROFILES = ("random", "load-only", "prefix-only", "default-plugins")


def scheduler_profiles() -> list[str]:
    """The shipped scheduler profiles (``templates/scheduler/*.yaml``) by name."""
    return sorted(f.stem for f in SCHEDULER_CONFIGS.glob("*.yaml"))


def scheduler_profile(name_or_path: str) -> str:
    """A shipped profile's file by name (``random``, ``default-plugins``...), else the path as given."""
    p = SCHEDULER_CONFIGS / f"{name_or_path}.yaml"
    return str(p) if p.exists() else name_or_path


def output_dir() -> Path:
    """Where notebooks write what they measure (results files): ``$KIT_OUT``, else ``out/`` in the repository
    (git-ignored) or, for an installed wheel, in the current folder; never beside the notebooks. ``make demo``
    points it at its own output folder."""
    default = ROOT / "out" if FROM_CHECKOUT else Path.cwd() / "out"
    return Path(os.environ.get("KIT_OUT") or default).expanduser().resolve()


def output_file(name: str) -> Path:
    """A notebook's results file: ``name`` as given when it is a path with a folder, else in ``output_dir()``."""
    p = Path(name)
    return p if p.is_absolute() or p.parent != Path(".") else output_dir() / p


def state_dir() -> Path:
    """Where the local target keeps its state files, locks and logs: one per-user folder, whatever the current
    directory, so the command line and a notebook kernel see the same stacks.

    ``$KIT_STATE_DIR`` if set, else ``$XDG_STATE_HOME/kit`` (an absolute ``$XDG_STATE_HOME`` only, as the XDG
    base-directory spec says), else ``~/.local/state/kit``.
    """
    if os.environ.get("KIT_STATE_DIR"):
        return Path(os.environ["KIT_STATE_DIR"]).expanduser().resolve()
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "kit"
