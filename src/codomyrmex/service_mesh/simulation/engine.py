"""Run a scenario: a real ServiceProxy and LoadBalancer against simulated backends, in virtual time.

The proxy, breaker, retry policy and balancer are the library's own, each
given the virtual loop's clock; only the backends are simulated. Every request
is a task calling ``proxy.call_async``; a backend "serves" it by sleeping on
the virtual clock, so timeouts (``attempt_timeout``), in-flight connection
counts and latencies behave exactly as they would in a real process.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from dataclasses import dataclass

from .._validate import check_instance
from ..circuit_breaker import CircuitBreaker
from ..load_balancer import LoadBalancer, LoadBalancerStrategy, ServiceInstance
from ..proxy import ServiceProxy
from ..retry import RetryPolicy
from .clock import VirtualTimeLoop
from .model import Backend, Policy, Scenario

__all__ = ["BackendError", "Result", "percentile", "simulate"]


class BackendError(Exception):
    """A simulated backend answered with an error."""


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100) of an ascending list; nan when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered) / 100.0 - 1e-9))  # (99.9 * 1000 / 100 is 999.0...01)
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Result:
    """What one policy achieved on one scenario (latencies include failed requests)."""

    scenario: str
    policy: str
    seed: int
    requests: int
    succeeded: int
    mean: float
    p50: float
    p99: float
    p999: float
    worst: float
    picks: dict[str, int]
    wall_seconds: float

    @property
    def success_rate(self) -> float:
        """Succeeded requests as a fraction of the measured ones."""
        return self.succeeded / self.requests if self.requests else math.nan


class _Server:
    """One simulated backend's state during a run."""

    __slots__ = ("busy_until", "loop", "rng", "spec")

    def __init__(self, spec: Backend, loop: asyncio.AbstractEventLoop, rng: random.Random) -> None:
        self.spec = spec
        self.loop = loop
        self.rng = rng
        # FIFO with k servers: when each server is next free (a heap); unused for pure delays.
        self.busy_until = [0.0] * spec.servers if spec.servers is not None else []

    async def serve(self) -> None:
        now = self.loop.time()
        spec = self.spec
        duration = None
        error_rate = 0.0
        for fault in spec.faults:
            if fault.active(now):
                if fault.latency is not None:
                    duration = fault.latency.sample(self.rng)
                error_rate = max(error_rate, fault.error_rate)
        if duration is None:
            duration = spec.service_time.sample(self.rng)
        failed = error_rate > 0.0 and self.rng.random() < error_rate
        if self.busy_until:
            start = max(now, self.busy_until[0])
            heapq.heapreplace(self.busy_until, start + duration)
            duration += start - now
        if duration > 0.0:
            await asyncio.sleep(duration)
        if failed:
            raise BackendError(spec.id)


def simulate(scenario: Scenario, policy: Policy, seed: int = 0) -> Result:
    """Run ``scenario`` once under ``policy`` with ``seed``; deterministic for a given seed."""
    check_instance("scenario", scenario, Scenario)
    check_instance("policy", policy, Policy)
    began = time.perf_counter()
    loop = VirtualTimeLoop()
    try:
        latencies, ok, picks = loop.run_until_complete(_run(scenario, policy, seed, loop))
    finally:
        loop.close()
    ordered = sorted(latencies)
    return Result(
        scenario=scenario.name,
        policy=policy.name,
        seed=seed,
        requests=len(ordered),
        succeeded=ok,
        mean=math.fsum(ordered) / len(ordered) if ordered else math.nan,
        p50=percentile(ordered, 50.0),
        p99=percentile(ordered, 99.0),
        p999=percentile(ordered, 99.9),
        worst=ordered[-1] if ordered else math.nan,
        picks=picks,
        wall_seconds=time.perf_counter() - began,
    )


async def _run(
    scenario: Scenario, policy: Policy, seed: int, loop: VirtualTimeLoop
) -> tuple[list[float], int, dict[str, int]]:
    clock = loop.time
    balancer = LoadBalancer(
        LoadBalancerStrategy.parse(policy.strategy),
        name=scenario.name,
        rng=random.Random(f"{seed}:balancer"),
        clock=clock,
        outlier_detection=policy.outlier_detection,
        slow_start=policy.slow_start,
        ewma_decay=policy.ewma_decay,
    )
    servers: dict[str, _Server] = {}
    for k, spec in enumerate(scenario.backends):
        balancer.register(
            ServiceInstance(id=spec.id, host="simulated", port=1 + k % 65535, weight=spec.weight)
        )
        servers[spec.id] = _Server(spec, loop, random.Random(f"{seed}:backend:{spec.id}"))
    breaker = CircuitBreaker(scenario.name, clock=clock)
    breaker.disable()  # the published experiments measure load balancing alone
    retry = RetryPolicy(
        max_retries=scenario.retries,
        initial_delay=0.0,
        attempt_timeout=scenario.timeout,
        clock=clock,
        rng=random.Random(f"{seed}:retry"),
    )
    proxy = ServiceProxy(scenario.name, balancer, breaker, retry)
    picks = dict.fromkeys(servers, 0)

    async def handler(instance: ServiceInstance) -> None:
        picks[instance.id] += 1
        await servers[instance.id].serve()

    latencies: list[float] = []
    succeeded = 0
    warmup = scenario.warmup

    async def request() -> None:
        nonlocal succeeded
        arrived = clock()
        try:
            await proxy.call_async(handler)
        except Exception:
            ok = False
        else:
            ok = True
        if arrived >= warmup:
            latencies.append(clock() - arrived)
            succeeded += ok

    arrivals = random.Random(f"{seed}:arrivals")
    tasks: list[asyncio.Task[None]] = []
    while True:
        gap = arrivals.expovariate(scenario.rate)
        if clock() + gap >= scenario.duration:
            break
        await asyncio.sleep(gap)
        tasks.append(loop.create_task(request()))
    await asyncio.gather(*tasks)
    return latencies, succeeded, picks
