"""A vLLM-compatible model-server simulator: OpenAI API, vLLM metrics, continuous batching, prefix cache."""

from kit.sim.config import SimConfig
from kit.sim.engine import Engine
from kit.sim.server import SimServer, serve, start

__all__ = ["Engine", "SimConfig", "SimServer", "serve", "start"]
