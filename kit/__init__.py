"""kit: learn, deploy and study intelligent inference scheduling for vLLM.

The verbs notebooks call; each works on the local stack and on a cluster.
"""

import importlib
from typing import Any

from kit.client import describe_result, models, request
from kit.environments import load_environment
from kit.errors import ApplyError, ConfigError, KitError, MissingDependencyError, NotReadyError, UnknownChoiceError
from kit.session import Session, check_profiles, plan, session, status_rows
from kit.workloads import Load, SharedPrefix, run_workload

__version__ = "0.1.0"

_LAZY = {"plots": "kit.plots", "report": "kit.report", "compare_profiles": "kit.experiments",
         "Comparison": "kit.experiments"}


def __getattr__(name: str) -> Any:
    """Import plotting, reporting and experiments only when used (servers never need them)."""
    if name in _LAZY:
        mod = importlib.import_module(_LAZY[name])
        return mod if mod.__name__.endswith(name) else getattr(mod, name)
    raise AttributeError(f"module 'kit' has no attribute {name!r}")

__all__ = [
    "ApplyError", "Comparison", "ConfigError", "KitError", "Load", "MissingDependencyError", "NotReadyError",
    "Session", "SharedPrefix", "UnknownChoiceError", "check_profiles", "compare_profiles", "describe_result",
    "load_environment", "models", "plan", "plots", "report", "request", "run_workload", "session", "status_rows",
]
