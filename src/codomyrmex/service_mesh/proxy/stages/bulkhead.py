"""Bulkhead: a cap on concurrent calls, with an optional bounded, timed wait queue.

One bulkhead may be shared by threads and event loops at once: slots are
counted under a lock, a freed slot is handed straight to the longest waiter,
and an async waiter is woken on its own loop, so nothing blocks an event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from ..._validate import check_int, check_optional_number
from ...errors import BulkheadFullError
from ...timers import Timer

__all__ = ["Bulkhead"]


class _Waiter:
    """A call queued for a slot: a thread waits on ``event``, a task on ``loop``'s ``future``."""

    __slots__ = ("event", "future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.granted = False
        self.loop = loop
        self.future: asyncio.Future[None] | None = None
        self.event: threading.Event | None = None
        if loop is None:
            self.event = threading.Event()
        else:
            self.future = loop.create_future()

    def grant(self) -> None:
        """The slot is this waiter's now: wake it (on its own loop if it is a task)."""
        self.granted = True
        if self.event is not None:
            self.event.set()
        else:
            assert self.loop is not None and self.future is not None
            self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Bulkhead:
    """At most ``max_concurrent`` calls at once; up to ``max_queue`` more wait for a slot
    (at most ``queue_timeout`` seconds, or forever with None); the rest are refused with
    :class:`BulkheadFullError`. ``timer`` times the wait (a :class:`~.timers.ManualTimer`
    in tests).
    """

    __slots__ = (
        "_in_flight",
        "_lock",
        "_waiters",
        "max_concurrent",
        "max_queue",
        "name",
        "queue_timeout",
        "timer",
    )

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        name: str = "",
        timer: Timer | None = None,
    ) -> None:
        if timer is not None and not isinstance(timer, Timer):
            raise TypeError(f"timer must be a Timer, got {timer!r}")
        self.timer = timer if timer is not None else Timer()
        self.max_concurrent = check_int("max_concurrent", max_concurrent, 1)
        self.max_queue = check_int("max_queue", max_queue, 0)
        self.queue_timeout = check_optional_number("queue_timeout", queue_timeout)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        self.name = name
        self._lock = threading.Lock()
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()

    def __repr__(self) -> str:
        return (
            f"Bulkhead(max_concurrent={self.max_concurrent}, max_queue={self.max_queue}, "
            f"in_flight={self._in_flight}, queued={len(self._waiters)})"
        )

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    def reconfigure(
        self, max_concurrent: int, *, max_queue: int = 0, queue_timeout: float | None = None
    ) -> None:
        """New limits; calls in flight and waiting keep their place (a larger limit
        admits waiters at once, a smaller one admits nobody until calls finish)."""
        check_int("max_concurrent", max_concurrent, 1)
        check_int("max_queue", max_queue, 0)
        check_optional_number("queue_timeout", queue_timeout)
        with self._lock:
            self.max_concurrent = max_concurrent
            self.max_queue = max_queue
            self.queue_timeout = queue_timeout
            while self._waiters and self._in_flight < max_concurrent:
                self._in_flight += 1
                self._waiters.popleft().grant()

    def _full(self, reason: str) -> BulkheadFullError:
        return BulkheadFullError(self.name, self.max_concurrent, reason)

    def _enter(self, loop: asyncio.AbstractEventLoop | None) -> _Waiter | None:
        """Take a free slot (None), or join the queue (the waiter, woken on ``loop`` when
        given); raise :class:`BulkheadFullError` when the queue is full too."""
        with self._lock:
            if self._in_flight < self.max_concurrent and not self._waiters:
                self._in_flight += 1
                return None
            if len(self._waiters) >= self.max_queue:
                raise self._full("full")
            waiter = _Waiter(loop)
            self._waiters.append(waiter)
            return waiter

    def acquire(self) -> None:
        """Take a slot, waiting in the queue if allowed; raise :class:`BulkheadFullError`."""
        waiter = self._enter(None)
        if waiter is None:
            return
        assert waiter.event is not None
        try:
            if self.timer.wait(waiter.event, self.queue_timeout):
                return
        except BaseException:  # interrupted while queued (KeyboardInterrupt, ...)
            self._abandon(waiter)
            raise
        self._expire(waiter)

    async def acquire_async(self) -> None:
        """:meth:`acquire` for event loops: waits without blocking the loop."""
        waiter = self._enter(asyncio.get_running_loop())
        if waiter is None:
            return
        assert waiter.future is not None
        try:
            done = await self.timer.first({waiter.future}, self.queue_timeout)
        except BaseException:  # cancelled while queued
            self._abandon(waiter)
            raise
        if not done:
            self._expire(waiter)

    def _abandon(self, waiter: _Waiter) -> None:
        """``waiter`` gives up (interrupted, cancelled): leave the queue, or pass on the
        slot that arrived as it gave up."""
        with self._lock:
            granted = waiter.granted
            if not granted:
                self._waiters.remove(waiter)
        if granted:
            self.release()

    def _expire(self, waiter: _Waiter) -> None:
        """``waiter``'s queue time ran out: keep a slot granted just then, else leave the
        queue and raise BulkheadFullError (``queue_timeout``)."""
        with self._lock:
            if waiter.granted:
                return
            self._waiters.remove(waiter)
        raise self._full("queue_timeout")

    def release(self) -> None:
        """Free a slot, handing it to the longest waiter if there is one."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().grant()
            elif self._in_flight > 0:
                self._in_flight -= 1

    def __enter__(self) -> Bulkhead:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    async def __aenter__(self) -> Bulkhead:
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
