"""What a simulation is made of: service-time distributions, faults, backends, scenarios, policies.

All are frozen, validated dataclasses. Times are in seconds of virtual time
(or any unit you like: a scenario's ``unit`` names it in reports).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from .._validate import check_int, check_number, check_str
from ..load_balancer import LoadBalancerStrategy, SlowStartConfig
from ..outlier import OutlierDetectionConfig

__all__ = [
    "Backend",
    "Constant",
    "Distribution",
    "Exponential",
    "Fault",
    "LogNormal",
    "Policy",
    "Scenario",
    "Uniform",
]


class Distribution(Protocol):
    """A random duration: ``sample(rng)`` draws one, ``mean`` is its expectation."""

    @property
    def mean(self) -> float: ...

    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True, slots=True)
class Constant:
    """Always ``value``."""

    value: float

    def __post_init__(self) -> None:
        check_number("value", self.value, 0.0)

    @property
    def mean(self) -> float:
        return self.value

    def sample(self, rng: random.Random) -> float:
        return self.value


@dataclass(frozen=True, slots=True)
class Exponential:
    """Exponentially distributed with the given mean (memoryless service, as in M/M/1)."""

    mean: float

    def __post_init__(self) -> None:
        if check_number("mean", self.mean, 0.0) <= 0.0:
            raise ValueError(f"mean must be > 0, got {self.mean!r}")

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.mean)


@dataclass(frozen=True, slots=True)
class Uniform:
    """Uniform between ``low`` and ``high``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        check_number("low", self.low, 0.0)
        if check_number("high", self.high, 0.0) < self.low:
            raise ValueError(f"high must be >= low, got {self.high!r} < {self.low!r}")

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2.0

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """Log-normal with the given median and shape ``sigma`` (a long right tail)."""

    median: float
    sigma: float

    def __post_init__(self) -> None:
        if check_number("median", self.median, 0.0) <= 0.0:
            raise ValueError(f"median must be > 0, got {self.median!r}")
        check_number("sigma", self.sigma, 0.0)

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2.0)

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.median), self.sigma)


@dataclass(frozen=True, slots=True)
class Fault:
    """From ``start`` until ``end``, requests reaching a backend take ``latency`` instead of
    their usual service time, and/or fail with probability ``error_rate`` (after that time)."""

    start: float
    end: float
    latency: Distribution | None = None
    error_rate: float = 0.0

    def __post_init__(self) -> None:
        check_number("start", self.start, 0.0)
        if check_number("end", self.end, 0.0) < self.start:
            raise ValueError(f"end must be >= start, got {self.end!r} < {self.start!r}")
        rate = check_number("error_rate", self.error_rate, 0.0)
        if rate > 1.0:
            raise ValueError(f"error_rate must be a probability (0 to 1), got {self.error_rate!r}")
        if self.latency is None and rate == 0.0:
            raise ValueError("a fault needs a latency or an error_rate")

    def active(self, now: float) -> bool:
        """Whether the fault applies to a request arriving at ``now``."""
        return self.start <= now < self.end


@dataclass(frozen=True, slots=True)
class Backend:
    """A simulated instance: its service time, how many requests it serves at once, its faults.

    ``servers=None`` serves every request at once (a pure delay); ``servers=k`` is
    a FIFO queue in front of ``k`` servers, so requests wait when all are busy.
    """

    id: str
    service_time: Distribution
    servers: int | None = None
    faults: tuple[Fault, ...] = ()
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_str("id", self.id)
        if not callable(getattr(self.service_time, "sample", None)):
            raise TypeError(f"service_time must be a Distribution, got {self.service_time!r}")
        if self.servers is not None:
            check_int("servers", self.servers, 1)
        if not isinstance(self.faults, tuple) or not all(isinstance(f, Fault) for f in self.faults):
            raise TypeError(f"faults must be a tuple of Fault, got {self.faults!r}")
        check_number("weight", self.weight, 0.0)


@dataclass(frozen=True, slots=True)
class Policy:
    """A load-balancing setup under test: a strategy (a member or its value) and its options."""

    strategy: LoadBalancerStrategy | str
    name: str = ""
    outlier_detection: OutlierDetectionConfig | None = None
    slow_start: SlowStartConfig | None = None
    ewma_decay: float = 10.0

    def __post_init__(self) -> None:
        strategy = LoadBalancerStrategy.parse(self.strategy)
        object.__setattr__(self, "strategy", strategy)
        if not self.name:
            label = strategy.value
            if self.outlier_detection is not None:
                label += "+outlier"
            object.__setattr__(self, "name", label)
        if self.outlier_detection is not None and not isinstance(
            self.outlier_detection, OutlierDetectionConfig
        ):
            raise TypeError(
                "outlier_detection must be an OutlierDetectionConfig, "
                f"got {self.outlier_detection!r}"
            )
        check_number("ewma_decay", self.ewma_decay, 0.0)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Poisson arrivals at ``rate`` per unit of time for ``duration`` against ``backends``.

    Each request is a ``ServiceProxy.call_async`` with ``retries`` retries and,
    if set, a ``timeout`` per attempt. Requests arriving before ``warmup`` run
    but are not measured. ``reference`` names the published result reproduced.
    """

    name: str
    backends: tuple[Backend, ...]
    rate: float
    duration: float
    timeout: float | None = None
    retries: int = 0
    warmup: float = 0.0
    title: str = ""
    reference: str = ""
    unit: str = "s"
    strategies: tuple[LoadBalancerStrategy, ...] = field(default=())
    """The strategies compared by default."""
    expected: tuple[tuple[str, float], ...] = field(default=())
    """Closed-form mean times to compare with, as ``(label, value)``."""

    def __post_init__(self) -> None:
        check_str("name", self.name)
        if not self.backends or not all(isinstance(b, Backend) for b in self.backends):
            raise TypeError(f"backends must be a non-empty tuple of Backend, got {self.backends!r}")
        if len({b.id for b in self.backends}) != len(self.backends):
            raise ValueError("backend ids must be unique")
        if check_number("rate", self.rate, 0.0) <= 0.0:
            raise ValueError(f"rate must be > 0, got {self.rate!r}")
        if check_number("duration", self.duration, 0.0) <= 0.0:
            raise ValueError(f"duration must be > 0, got {self.duration!r}")
        if self.timeout is not None and check_number("timeout", self.timeout, 0.0) <= 0.0:
            raise ValueError(f"timeout must be > 0, got {self.timeout!r}")
        check_int("retries", self.retries, 0)
        if check_number("warmup", self.warmup, 0.0) >= self.duration:
            raise ValueError(f"warmup must be shorter than duration, got {self.warmup!r}")
