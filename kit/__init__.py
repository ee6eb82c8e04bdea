"""kit: learn, deploy and study intelligent inference scheduling for vLLM.

The names a notebook uses; each imports only when first used, so ``import kit`` is free and server
processes (``kit sim``, ``kit gateway``) load nothing they do not run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → (module, attribute); attribute None means the module itself
_NAMES: dict[str, tuple[str, str | None]] = {
    "session": ("kit.notebook", "session"),
    "Session": ("kit.notebook", "Session"),
    "check_profiles": ("kit.notebook", "check_profiles"),
    "Selection": ("kit.ui", "Selection"),
    "load_environment": ("kit.manifests.environments", "load_environment"),
    "request": ("kit.experiments.client", "request"),
    "models": ("kit.experiments.client", "models"),
    "describe_result": ("kit.experiments.client", "describe_result"),
    "SharedPrefix": ("kit.experiments.workloads", "SharedPrefix"),
    "Skewed": ("kit.experiments.workloads", "Skewed"),
    "MultiTurn": ("kit.experiments.workloads", "MultiTurn"),
    "Load": ("kit.experiments.workloads", "Load"),
    "run_workload": ("kit.experiments.loadgen", "run_workload"),
    "run_profile": ("kit.experiments.compare", "run_profile"),
    "outside_traffic": ("kit.experiments.outside", "outside_traffic"),
    "scheduler_profile": ("kit.paths", "scheduler_profile"),
    "Comparison": ("kit.experiments.results", "Comparison"),
    "table": ("kit.experiments.results", "table"),
    "plots": ("kit.experiments.plots", None),
    "paths": ("kit.paths", None),
    "report": ("kit.experiments.report", None),
    "KitError": ("kit.errors", "KitError"),
    "ConfigError": ("kit.errors", "ConfigError"),
    "UnknownChoiceError": ("kit.errors", "UnknownChoiceError"),
    "MissingDependencyError": ("kit.errors", "MissingDependencyError"),
    "NotReadyError": ("kit.errors", "NotReadyError"),
    "ApplyError": ("kit.errors", "ApplyError"),
}

if TYPE_CHECKING:  # for editors and type checkers; at run time names load on first use
    from kit import paths
    from kit.errors import (
        ApplyError,
        ConfigError,
        KitError,
        MissingDependencyError,
        NotReadyError,
        UnknownChoiceError,
    )
    from kit.experiments import plots, report
    from kit.experiments.client import describe_result, models, request
    from kit.experiments.compare import run_profile
    from kit.experiments.loadgen import run_workload
    from kit.experiments.outside import outside_traffic
    from kit.experiments.results import Comparison, table
    from kit.experiments.workloads import Load, MultiTurn, SharedPrefix, Skewed
    from kit.manifests.environments import load_environment
    from kit.notebook import Session, check_profiles, session
    from kit.paths import scheduler_profile
    from kit.ui import Selection


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'kit' has no attribute {name!r}")
    module, attr = _NAMES[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])


__all__ = [  # the same names as _NAMES
    "ApplyError", "Comparison", "ConfigError", "KitError", "Load", "MissingDependencyError", "MultiTurn",
    "NotReadyError", "Selection", "Session", "SharedPrefix", "Skewed", "UnknownChoiceError", "check_profiles",
    "describe_result", "load_environment", "models", "outside_traffic", "paths", "plots", "report", "request",
    "run_profile", "run_workload", "scheduler_profile", "session", "table",
]
