"""Where the kit's data lives: environments, templates, the shipped scheduler profiles, the local state folder."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("KIT_HOME", Path(__file__).resolve().parents[1]))
ENVIRONMENTS = ROOT / "environments"
TEMPLATES = ROOT / "templates"
SCHEDULER_CONFIGS = TEMPLATES / "scheduler"


def default_scheduler_config() -> Path:
    """The guide's default profile, used by the local gateway and the cluster EPP alike."""
    return SCHEDULER_CONFIGS / "default-plugins.yaml"


def scheduler_profiles() -> list[str]:
    """The shipped scheduler profiles (``templates/scheduler/*.yaml``) by name."""
    return sorted(f.stem for f in SCHEDULER_CONFIGS.glob("*.yaml"))


def scheduler_profile(name_or_path: str) -> str:
    """A shipped profile's file by name (``random``, ``default-plugins``...), else the path as given."""
    p = SCHEDULER_CONFIGS / f"{name_or_path}.yaml"
    return str(p) if p.exists() else name_or_path


def state_dir() -> Path:
    """Where the local target keeps its state file and logs (``$KIT_STATE_DIR`` or ``./.kit``)."""
    return Path(os.environ.get("KIT_STATE_DIR", ".kit")).resolve()
