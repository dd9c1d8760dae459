"""Timers: how the timed stages wait, injectable so tests need no real waits.

Three stages wait for "something, or a timeout": the bulkhead queue
(``queue_timeout``), hedging (``hedging_delay``) and the per-attempt timeout
(``attempt_timeout``). Each takes a ``timer``. :class:`Timer` waits in real time;
:class:`ManualTimer` is a virtual timer whose time moves only when the test calls
:meth:`ManualTimer.advance`, so a test sees a timeout fire without waiting for it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

__all__ = ["ManualTimer", "Timer"]

T = TypeVar("T")


class Timer:
    """Real-time waits (the default of every timed stage)."""

    __slots__ = ()

    def monotonic(self) -> float:
        """The timer's time, in seconds (for deadlines measured by this timer)."""
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Block until ``event`` is set (True) or ``timeout`` seconds pass (False)."""
        return event.wait(timeout)

    async def first(
        self, futures: Iterable[asyncio.Future[Any]], timeout: float | None
    ) -> set[asyncio.Future[Any]]:
        """Wait until one of ``futures`` is done or ``timeout`` passes; return the done ones.

        Never cancels anything.
        """
        waited: set[asyncio.Future[Any]] = set(futures)
        done: set[asyncio.Future[Any]]
        done, _ = await asyncio.wait(waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return done

    async def wait_for(self, aw: Awaitable[T], timeout: float) -> T:
        """Await ``aw``; after ``timeout`` seconds cancel it and raise ``TimeoutError``."""
        return await asyncio.wait_for(_coro(aw), timeout)


async def _coro(aw: Awaitable[T]) -> T:
    return await aw


class _Sleeper:
    __slots__ = ("deadline", "expired", "fire")

    def __init__(self, deadline: float | None, fire: Any) -> None:
        self.deadline = deadline
        self.expired = False
        self.fire = fire


class ManualTimer(Timer):
    """A virtual timer for tests: waits end when their event comes or :meth:`advance`
    moves the time past their timeout; nothing ever waits for real time to pass.

    Calling the timer reads its time, so it also serves as a ``clock``. :attr:`waiting`
    counts the waits in progress (with or without a timeout), and :meth:`until_waiting`
    / :meth:`until_waiting_async` let a test synchronise on "the stage is now waiting".
    """

    __slots__ = ("_cond", "_now", "_sleepers")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._cond = threading.Condition()
        self._sleepers: list[_Sleeper] = []

    def __call__(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The virtual time, in seconds."""
        return self._now

    @property
    def waiting(self) -> int:
        """Waits in progress now."""
        with self._cond:
            return len(self._sleepers)

    def deadlines(self) -> list[float | None]:
        """The deadlines of the waits in progress (None: waiting with no timeout)."""
        with self._cond:
            return [s.deadline for s in self._sleepers]

    def advance(self, seconds: float) -> None:
        """Move the time on by ``seconds``; waits whose timeout has passed end."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._cond:
            self._now += seconds
            due = [s for s in self._sleepers if s.deadline is not None and s.deadline <= self._now]
            for sleeper in due:
                sleeper.expired = True
                self._sleepers.remove(sleeper)
        for sleeper in due:
            sleeper.fire()

    def until_waiting(self, count: int = 1, timeout: float = 60.0) -> None:
        """Block until at least ``count`` waits are in progress (another thread's)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._sleepers) >= count, timeout):
                raise AssertionError(f"fewer than {count} waits after {timeout}s")

    async def until_waiting_async(self, count: int = 1, rounds: int = 10_000) -> None:
        """Yield to the event loop until at least ``count`` waits are in progress."""
        for _ in range(rounds):
            if self.waiting >= count:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"fewer than {count} waits after {rounds} loop rounds")

    def _add(self, timeout: float | None, fire: Any) -> _Sleeper:
        with self._cond:
            deadline = None if timeout is None else self._now + max(0.0, timeout)
            sleeper = _Sleeper(deadline, fire)
            if deadline is not None and deadline <= self._now:
                sleeper.expired = True
            else:
                self._sleepers.append(sleeper)
                self._cond.notify_all()
            return sleeper

    def _remove(self, sleeper: _Sleeper) -> None:
        with self._cond:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        sleeper = self._add(timeout, event.set)
        try:
            if not sleeper.expired:
                event.wait()
        finally:
            self._remove(sleeper)
        return not sleeper.expired

    async def first(
        self, futures: Iterable[asyncio.Future[Any]], timeout: float | None
    ) -> set[asyncio.Future[Any]]:
        waited = set(futures)
        done = {f for f in waited if f.done()}
        if done:
            return done
        loop = asyncio.get_running_loop()
        alarm: asyncio.Future[None] = loop.create_future()
        sleeper = self._add(timeout, lambda: loop.call_soon_threadsafe(_resolve, alarm))
        try:
            if sleeper.expired:
                await asyncio.sleep(0)
            else:
                await asyncio.wait({*waited, alarm}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._remove(sleeper)
            alarm.cancel()
        return {f for f in waited if f.done()}

    async def wait_for(self, aw: Awaitable[T], timeout: float) -> T:
        task = asyncio.ensure_future(aw)
        try:
            done = await self.first({task}, timeout)
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        if done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise TimeoutError(f"timed out after {timeout}s")
        return task.result()  # it ended just as the time ran out


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
