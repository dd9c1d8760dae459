"""The concurrency limiter: admits a call while fewer than ``limit`` are in flight.

Admission never waits, so the same limiter serves threads and event loops alike:
``acquire()`` either returns a :class:`Permit` at once or raises
:class:`~codomyrmex.service_mesh.LimitExceededError`. The permit reports how the
call ended -- ``success()``, ``dropped()`` (timed out, shed downstream) or
``ignore()`` (no evidence: cancelled, refused by the mesh) -- and the RTT sample
goes to the limit algorithm. Both ends are O(1) under one lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from .._validate import check_callable, check_instance
from ..errors import LimitExceededError, ServiceMeshError
from ..events import EventListener, LimitChanged, Publisher, publish
from .algorithms import Limit

__all__ = ["ConcurrencyLimiter", "Permit"]

_DROPPED_ON: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError)
_IGNORED_ON: tuple[type[BaseException], ...] = (ServiceMeshError,)


class Permit:
    """One admitted call's place in a :class:`ConcurrencyLimiter`; report its end once.

    As a context manager (``with limiter.acquire():``, also ``async with``), a clean
    exit is a success and an exception is classified by the limiter's ``dropped_on``
    and ``ignored_on``.
    """

    __slots__ = ("_done", "_limiter", "in_flight", "start")

    def __init__(self, limiter: ConcurrencyLimiter, start: float, in_flight: int) -> None:
        self._limiter = limiter
        self.start = start
        self.in_flight = in_flight
        self._done = False

    def success(self) -> None:
        """The call completed: its RTT is a sample."""
        self._limiter._finish(self, 1)

    def dropped(self) -> None:
        """The call timed out or was shed downstream: a sign of overload."""
        self._limiter._finish(self, 2)

    def ignore(self) -> None:
        """Free the place without a sample (the call says nothing about the backend)."""
        self._limiter._finish(self, 0)

    def finish(self, error: BaseException | None) -> None:
        """Report the end of the call by its outcome (None: success), classified."""
        self._limiter._finish(self, self._limiter._classify(error))

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        limiter = self._limiter
        limiter._finish(self, 1 if exc is None else limiter._classify(exc))

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.finish(exc)


class ConcurrencyLimiter(Publisher):
    """At most ``limit.limit`` calls in flight; ``limit`` adapts it from each call's RTT.

    ``dropped_on``: exceptions that count as drops (default: timeouts); ``ignored_on``:
    exceptions that free the place without a sample (default: the mesh's own
    refusals, :class:`ServiceMeshError`); any other exception ends the call as a
    success sample, since the backend answered. Anything not an ``Exception``
    (cancellation, ``KeyboardInterrupt``) is ignored. ``clock`` times the calls.

    Events (:meth:`subscribe`): :class:`LimitChanged`.
    """

    __slots__ = (
        "_in_flight",
        "_limit",
        "_lock",
        "_subscribers",
        "algorithm",
        "clock",
        "dropped_on",
        "ignored_on",
        "name",
        "rejected",
    )

    def __init__(
        self,
        limit: Limit,
        *,
        name: str = "",
        dropped_on: tuple[type[BaseException], ...] = _DROPPED_ON,
        ignored_on: tuple[type[BaseException], ...] = _IGNORED_ON,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_instance("limit", limit, Limit, "a Limit (AIMDLimit, VegasLimit, ...)")
        check_instance("name", name, str)
        for field, value in (("dropped_on", dropped_on), ("ignored_on", ignored_on)):
            if not isinstance(value, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in value
            ):
                raise TypeError(f"{field} must be a tuple of exception types, got {value!r}")
        self.algorithm = limit
        self.name = name
        self.dropped_on = dropped_on
        self.ignored_on = ignored_on
        self.clock = check_callable("clock", clock)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._limit = limit.limit
        self._subscribers: tuple[EventListener, ...] = ()
        self.rejected = 0
        """Calls refused so far."""

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self._limit

    def describe(self) -> str:
        """A label for ``ServiceProxy.describe()``."""
        return f"concurrency limit({self.algorithm.describe()}, limit={self._limit})"

    def __repr__(self) -> str:
        state = f"name={self.name!r}, in_flight={self._in_flight}"
        return f"ConcurrencyLimiter({self.algorithm!r}, {state})"

    def try_acquire(self) -> Permit | None:
        """A place for one call, or None when ``limit`` calls are already in flight."""
        lock = self._lock
        lock.acquire()
        in_flight = self._in_flight
        if in_flight >= self._limit:
            self.rejected += 1
            lock.release()
            return None
        self._in_flight = in_flight = in_flight + 1
        lock.release()
        return Permit(self, self.clock(), in_flight)

    def acquire(self) -> Permit:
        """A place for one call; raise :class:`LimitExceededError` when there is none."""
        permit = self.try_acquire()
        if permit is None:
            raise LimitExceededError(self.name, "concurrency_limit", self._limit)
        return permit

    @property
    def in_flight(self) -> int:
        """Calls holding a place now."""
        return self._in_flight

    def _classify(self, error: BaseException | None) -> int:
        if error is None:
            return 1
        if not isinstance(error, Exception) or isinstance(error, self.ignored_on):
            return 0
        if isinstance(error, self.dropped_on):
            return 2
        return 1

    def _finish(self, permit: Permit, outcome: int) -> None:
        """Free ``permit``'s place; outcome 0 ignore, 1 success, 2 dropped."""
        end = self.clock() if outcome else 0.0
        lock = self._lock
        lock.acquire()
        try:
            if permit._done:
                return
            permit._done = True
            self._in_flight -= 1
            if not outcome:
                return
            start = permit.start
            new = self.algorithm.on_sample(start, end - start, permit.in_flight, outcome == 2)
            old = self._limit
            if new == old:
                return
            self._limit = new
            subscribers = self._subscribers
            in_flight = self._in_flight
        finally:
            lock.release()
        if subscribers:
            publish(subscribers, LimitChanged(self.name, old, new, in_flight))
