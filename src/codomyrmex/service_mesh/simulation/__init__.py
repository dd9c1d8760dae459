"""A discrete-event simulator for load-balancing policies, on virtual time.

A real :class:`~codomyrmex.service_mesh.ServiceProxy` and
:class:`~codomyrmex.service_mesh.LoadBalancer` run on an asyncio event loop
whose clock is virtual (waits cost nothing), against simulated backends with
service-time distributions and faults. ``simulate(scenario, policy, seed)``
returns success rate and latency percentiles; ``main(argv)`` is the command
(``python -m codomyrmex.service_mesh.simulation --help``).

Build your own scenario::

    from codomyrmex.service_mesh.simulation import (
        Backend, Exponential, Fault, Constant, Policy, Scenario, simulate,
    )
    slow = Fault(start=10, end=20, latency=Constant(0.5))
    scenario = Scenario(
        name="mine",
        backends=tuple(Backend(f"b{k}", Exponential(0.02), faults=(slow,) if k == 0 else ())
                       for k in range(5)),
        rate=500, duration=30, timeout=0.25,
    )
    print(simulate(scenario, Policy("peak_ewma")).p99)
"""

from . import model
from .cli import build_parser, main
from .clock import VirtualTimeLoop, run_virtual
from .engine import BackendError, Result, percentile, simulate
from .model import *  # noqa: F403  (the model's __all__ is part of this one)
from .report import format_table, plot
from .scenarios import linkerd_stuck_backend, power_of_two_choices, supermarket_time_in_system

__all__ = [
    "BackendError",
    "Result",
    "VirtualTimeLoop",
    "build_parser",
    "format_table",
    "linkerd_stuck_backend",
    "main",
    "percentile",
    "plot",
    "power_of_two_choices",
    "run_virtual",
    "simulate",
    "supermarket_time_in_system",
]
__all__ += model.__all__
