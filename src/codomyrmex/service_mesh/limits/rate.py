"""A rate limiter: the generic cell rate algorithm (GCRA), a token bucket kept as one number.

``RateLimiter(rate, burst)`` admits on average ``rate`` units per second and up to
``burst`` at once. Its whole state is the *theoretical arrival time* (TAT): each
admitted unit pushes it ``1 / rate`` seconds on, and a call is admitted when the
TAT it would leave is at most ``burst / rate`` seconds ahead of now. That is
equivalent to a token bucket of ``burst`` tokens refilled at ``rate`` per second,
with no refill timer and O(1) work under one lock. The same algorithm runs in a
Lua script for the fleet-wide variant
(:mod:`codomyrmex.service_mesh.integrations.redis_ratelimit`).

Admission itself never waits, so one limiter serves threads and event loops.
``acquire(max_wait=...)`` may reserve a future slot and then sleep for it (the
injected ``sleep``, or ``async_sleep`` in :meth:`RateLimiter.acquire_async`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from .._validate import check_callable, check_instance, check_number
from ..errors import LimitExceededError

__all__ = ["RateLimit", "RateLimiter", "check_rate"]


def check_rate(rate: float, burst: float) -> tuple[float, float]:
    """``(rate, burst)`` as floats if ``rate > 0`` per second and ``burst >= 1``, else the
    error naming the field. Internal API: every rate limiter (local or shared) checks its
    arguments with it."""
    if check_number("rate", rate, 0.0) <= 0.0:
        raise ValueError(f"rate must be > 0, got {rate!r}")
    if check_number("burst", burst, 0.0) < 1.0:
        raise ValueError(f"burst must be >= 1, got {burst!r}")
    return float(rate), float(burst)


@runtime_checkable
class RateLimit(Protocol):
    """What a proxy's ``rate_limit`` stage needs: a non-consuming refusal with a wait."""

    name: str
    rate: float

    def try_acquire(self, cost: float = 1.0) -> float:
        """Take ``cost`` units and return 0.0, or take nothing and return the seconds
        until they would be admitted."""
        ...

    async def try_acquire_async(self, cost: float = 1.0) -> float:
        """The async twin of :meth:`try_acquire` (for limiters that do I/O)."""
        ...

    def describe(self) -> str:
        """A label for ``ServiceProxy.describe()``."""
        ...


class RateLimiter:
    """GCRA: ``rate`` units per second on average, ``burst`` at once (at least one call's cost).

    ``try_acquire(cost)`` takes ``cost`` units (0.0) or refuses without taking any,
    returning the seconds until it would succeed; ``acquire`` raises
    :class:`~codomyrmex.service_mesh.LimitExceededError` instead, or with ``max_wait``
    reserves a slot up to that far ahead and sleeps until it.
    """

    __slots__ = (
        "_interval",
        "_lock",
        "_tat",
        "_tolerance",
        "async_sleep",
        "burst",
        "clock",
        "name",
        "rate",
        "rejected",
        "sleep",
    )

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate, self.burst = check_rate(rate, burst)
        check_instance("name", name, str)
        self.name = name
        self.clock = check_callable("clock", clock)
        self.sleep = check_callable("sleep", sleep)
        self.async_sleep = check_callable("async_sleep", async_sleep)
        self._interval = 1.0 / self.rate
        self._tolerance = self.burst * self._interval
        self._lock = threading.Lock()
        self._tat = -float("inf")
        self.rejected = 0
        """Calls refused so far."""

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate}, burst={self.burst}, name={self.name!r})"

    def describe(self) -> str:
        return f"rate limit({self.rate:g}/s, burst={self.burst:g})"

    @property
    def available(self) -> float:
        """Units that could be taken at once now (the bucket's tokens)."""
        with self._lock:
            ahead = max(0.0, self._tat - self.clock())
        return max(0.0, (self._tolerance - ahead) / self._interval)

    def _reserve(self, cost: float, max_wait: float) -> float:
        """Take ``cost`` units admitted within ``max_wait`` seconds and return the wait
        (0.0 for now); or take nothing and return minus the wait it would need."""
        now = self.clock()
        with self._lock:
            tat = self._tat if self._tat > now else now
            new_tat = tat + cost * self._interval
            wait = new_tat - now - self._tolerance
            if wait <= max_wait:
                self._tat = new_tat
                return wait if wait > 0.0 else 0.0
            self.rejected += 1
        return -wait

    def _checked(self, cost: float) -> float:
        if check_number("cost", cost, 0.0) * self._interval > self._tolerance:
            raise ValueError(f"cost must be <= burst ({self.burst:g}), got {cost!r}")
        return float(cost)

    def try_acquire(self, cost: float = 1.0) -> float:
        """Take ``cost`` units and return 0.0, or take none and return the seconds to wait."""
        got = self._reserve(cost if cost == 1.0 else self._checked(cost), 0.0)
        return 0.0 if got >= 0.0 else -got

    async def try_acquire_async(self, cost: float = 1.0) -> float:
        """The same as :meth:`try_acquire` (nothing here waits)."""
        return self.try_acquire(cost)

    def _refused(self, wait: float) -> LimitExceededError:
        return LimitExceededError(self.name, "rate_limit", self.rate, wait)

    def acquire(self, cost: float = 1.0, *, max_wait: float = 0.0) -> None:
        """Take ``cost`` units, sleeping up to ``max_wait`` seconds for them; raise
        :class:`LimitExceededError` (with ``retry_after``) when they are further away."""
        got = self._reserve(self._checked(cost), check_number("max_wait", max_wait, 0.0))
        if got < 0.0:
            raise self._refused(-got)
        if got > 0.0:
            self.sleep(got)

    async def acquire_async(self, cost: float = 1.0, *, max_wait: float = 0.0) -> None:
        """The async twin of :meth:`acquire`: waits with ``async_sleep``."""
        got = self._reserve(self._checked(cost), check_number("max_wait", max_wait, 0.0))
        if got < 0.0:
            raise self._refused(-got)
        if got > 0.0:
            await self.async_sleep(got)
