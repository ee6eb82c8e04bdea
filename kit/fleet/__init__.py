"""Fleet-scale what-if: the kit's endpoint picker over many simulated model servers on one virtual clock.

``simulate(workload, load, Fleet(replicas=16, profile="default-plugins"))`` returns the same results as a
run through the local stack (``ProfileRun``: the ``kit bench`` summary, every request, metric samples, one
decision), computed in virtual time: no HTTP, no processes, the same engine, KV cache and picker code.
``sweep`` runs a grid of rates × replicas × profiles in parallel processes and ``capacity`` reads off the
highest rate that meets a TTFT objective. A precise prefix scorer reads the servers' KV-cache events
(``kit.fleet.events``); kit-only scenarios (picker replicas, outside traffic) and ``Trace`` (stale picks)
are in ``kit.fleet.scenario``. ``docs/explanation/fleet-simulator.md`` explains the model.
"""

from kit.fleet.compare import compare_profiles
from kit.fleet.loop import Fleet, simulate
from kit.fleet.scenario import Trace
from kit.fleet.sweep import sweep
from kit.sim.config import SimConfig

__all__ = ["Fleet", "SimConfig", "Trace", "compare_profiles", "simulate", "sweep"]
