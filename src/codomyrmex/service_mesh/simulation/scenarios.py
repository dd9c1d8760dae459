"""The published results the simulator reproduces, as ready-made scenarios."""

from __future__ import annotations

import math

from ..load_balancer import LoadBalancerStrategy
from .model import Backend, Constant, Exponential, Fault, Scenario

__all__ = ["linkerd_stuck_backend", "power_of_two_choices", "supermarket_time_in_system"]

S = LoadBalancerStrategy


def linkerd_stuck_backend(duration: float = 60.0, rate: float = 1000.0) -> Scenario:
    """Linkerd/Finagle's "Beyond Round Robin" experiment.

    11 backends at ``rate`` requests/s; each answers in an exponentially
    distributed 10 ms, except one that is stuck at 2 s for the middle half of
    the run; every request has a 1 s timeout and no retry. Published shape:
    about 95% success with round robin, 99% least-loaded, 99.9% Peak EWMA.
    """
    healthy = Exponential(0.010)
    stuck = Fault(start=duration / 4, end=3 * duration / 4, latency=Constant(2.0))
    backends = tuple(
        Backend(f"backend-{k:02d}", healthy, faults=(stuck,) if k == 0 else ()) for k in range(11)
    )
    return Scenario(
        name="linkerd",
        title=(
            f"11 backends, {rate:,.0f} req/s, one stuck at 2 s for half of {duration:g} s, "
            "1 s timeout"
        ),
        reference="published: ~95% success round robin, ~99% least-loaded, ~99.9% peak EWMA",
        backends=backends,
        rate=rate,
        duration=duration,
        timeout=1.0,
        strategies=(S.ROUND_ROBIN, S.LEAST_CONNECTIONS, S.POWER_OF_TWO, S.PEAK_EWMA),
    )


def supermarket_time_in_system(load: float, choices: int) -> float:
    """Mean time in system (in service times) of the supermarket model as servers -> infinity.

    Mitzenmacher: ``sum over i >= 1 of load ** ((d**i - d) / (d - 1))`` for ``d``
    choices; ``1 / (1 - load)`` (M/M/1) for one.
    """
    if choices == 1:
        return 1.0 / (1.0 - load)
    total = 0.0
    for i in range(1, 64):
        exponent = (choices**i - choices) / (choices - 1)
        term = load**exponent
        total += term
        if term < 1e-12:
            break
    return total


def power_of_two_choices(servers: int = 10, requests: int = 200_000, load: float = 0.9) -> Scenario:
    """Mitzenmacher's supermarket model: ``servers`` FIFO queues, exponential service.

    Poisson arrivals at ``load`` per server; time in system in units of the mean
    service time. As servers -> infinity two choices give 2.61 at load 0.9 and
    one random choice gives 10; a finite pool converges to that as 1/servers.
    """
    rate = load * servers
    backends = tuple(
        Backend(f"server-{k:03d}", Exponential(1.0), servers=1) for k in range(servers)
    )
    two = supermarket_time_in_system(load, 2)
    one = supermarket_time_in_system(load, 1)
    return Scenario(
        name=f"p2c-{servers}",
        title=f"{servers} FIFO servers, exponential service, load {load:g}",
        reference=(
            f"closed form (servers -> inf): two choices {two:.2f}, one random choice "
            f"{one:.2f} service times"
        ),
        backends=backends,
        rate=rate,
        duration=math.ceil(requests / rate),
        warmup=0.1 * math.ceil(requests / rate),
        unit="service times",
        strategies=(S.RANDOM, S.POWER_OF_TWO, S.LEAST_CONNECTIONS),
        expected=(("two choices, servers -> inf", two), ("one random choice", one)),
    )
