"""Where the kit's data lives: environments, templates, and the local state folder."""

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


def state_dir() -> Path:
    """Where the local target keeps its state file and logs (``$KIT_STATE_DIR`` or ``./.kit``)."""
    return Path(os.environ.get("KIT_STATE_DIR", ".kit")).resolve()
