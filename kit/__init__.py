"""kit: learn, deploy and study intelligent inference scheduling for vLLM."""

from kit.errors import ConfigError, KitError, MissingDependencyError, UnknownChoiceError

__version__ = "0.1.0"
__all__ = ["ConfigError", "KitError", "MissingDependencyError", "UnknownChoiceError"]
