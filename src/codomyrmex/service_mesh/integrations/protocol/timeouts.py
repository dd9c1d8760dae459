"""Timeouts: the client's own timeout turned into an attempt timeout and a call deadline.

:class:`Timeouts` holds the rule, :class:`CallState` one call's deadline on its way
through the stack, :func:`within` bounds one async attempt, :class:`AttemptTimer` many of
them with one event-loop timer. Standard library only.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import ServiceMeshError

if TYPE_CHECKING:
    from ...proxy import ServiceProxy
    from ...retry import RetryPolicy

__all__ = [
    "DEADLINE_FACTOR",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_DEADLINE",
    "AttemptTimer",
    "CallDeadlineExceeded",
    "CallState",
    "Timeouts",
    "check_timeouts",
    "within",
]

R = TypeVar("R")

DEFAULT_ATTEMPT_TIMEOUT = 10.0
"""Seconds one attempt may take when neither the client nor the policy sets a timeout."""
DEFAULT_DEADLINE = 30.0
"""Seconds a whole call (every attempt and wait) may take when nothing else sets it."""
DEADLINE_FACTOR = 3.0
"""The overall deadline is this many times the client's timeout, when the client has one."""


class CallDeadlineExceeded(ServiceMeshError, TimeoutError):
    """The call's overall deadline passed before another attempt could start."""

    retryable = False

    def __init__(self, service: str, deadline: float) -> None:
        super().__init__(f"{service}: the call's deadline of {deadline:g}s passed")
        self.service = service
        self.deadline = deadline


async def within(seconds: float, awaitable: Awaitable[R]) -> R:
    """Await ``awaitable`` for at most ``seconds``; running out raises ``TimeoutError``.

    ``asyncio.timeout`` where there is one (3.11+): unlike ``wait_for`` there, it makes
    no task per attempt.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # pragma: no cover - Python 3.10


_NATIVE_TIMEOUT = sys.version_info >= (3, 11)  # Task.uncancel(): cancellation told apart
_running_loop = asyncio.get_running_loop
_current_task = asyncio.current_task
_monotonic = time.monotonic


class AttemptTimer:
    """Bounds async attempts as :func:`within` does, with one event-loop timer for all.

    ``asyncio.timeout`` schedules and cancels a timer handle per attempt, and each
    cancelled handle stays in the loop's heap until it would have been due (the attempt
    limit, seconds away), slowing every timer operation of the loop. This keeps the due
    time of each running attempt in a dict and one handle due at the earliest of them;
    when it fires it cancels the attempts past their limit, which then raise
    ``TimeoutError`` (a cancellation from elsewhere stays a cancellation, as under
    ``asyncio.timeout``), and waits for the next. One timer serves one event loop at a
    time: an attempt on another loop while attempts of the first are running (or before
    Python 3.11, or outside a task) is bounded by :func:`within` instead.
    """

    __slots__ = ("_handle", "_loop", "_running", "_wake")

    def __init__(self) -> None:
        # running attempts' tasks: their due time (time.monotonic), None once expired
        self._running: dict[asyncio.Task[Any], float | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._wake = math.inf  # when the handle is due

    async def run(self, seconds: float, send: Callable[..., Awaitable[R]], *args: Any) -> R:
        """``await send(*args)`` for at most ``seconds``; running out raises ``TimeoutError``."""
        loop = _running_loop()
        task: Any = _current_task(loop)  # Any: cancelling/uncancel are 3.11+
        due = _monotonic() + seconds
        running = self._running
        if (
            task is None
            or (loop is not self._loop and not self._adopt(loop))
            or running.setdefault(task, due) is not due  # nested in one of ours: not twice
        ):
            return await within(seconds, send(*args))
        if due < self._wake:
            self._schedule(due)
        cancelling = task.cancelling()
        try:
            return await send(*args)
        except asyncio.CancelledError as exc:
            if running.pop(task, 0.0) is None and task.uncancel() <= cancelling:
                raise TimeoutError(f"attempt took over {seconds:g}s") from exc
            raise
        finally:
            if running.pop(task, 0.0) is None:  # expired, yet not left by cancellation
                task.uncancel()

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Serve ``loop`` from now on, unless attempts of another loop are running."""
        if not _NATIVE_TIMEOUT or self._running:
            return False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._wake = math.inf
        self._loop = loop
        return True

    def _schedule(self, due: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = self._loop
        assert loop is not None
        self._wake = due
        self._handle = loop.call_later(max(0.0, due - time.monotonic()), self._fire)

    def _fire(self) -> None:
        """Expire the attempts past their limit; wait for the earliest of the others."""
        self._handle = None
        self._wake = math.inf
        now = time.monotonic()
        soonest = math.inf
        running = self._running
        for task, due in list(running.items()):
            if due is None:
                continue
            if due <= now:
                running[task] = None
                task.cancel()
            elif due < soonest:
                soonest = due
        if soonest < math.inf:
            self._schedule(soonest)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """An attempt timeout and an overall call deadline, in seconds.

    Each field left None is derived, in this order of precedence:

    1. the value given here;
    2. the service's :class:`RetryPolicy` (``attempt_timeout``, ``max_elapsed``);
    3. the client's own timeout for the request, when it has one: the attempt
       gets that timeout and the call ``DEADLINE_FACTOR`` (3) times it, so a
       client timeout of 1 s allows three full attempts; a client deadline for the
       whole call (gRPC's ``timeout``) is the call's deadline, and each attempt
       gets a third of it;
    4. :data:`DEFAULT_ATTEMPT_TIMEOUT` (10 s) and :data:`DEFAULT_DEADLINE` (30 s).

    The attempt timeout never exceeds what is left of the deadline. Sync attempts
    cannot be interrupted: the limit is handed to the client as its timeout.
    """

    attempt: float | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("attempt", "deadline"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"timeouts.{name} must be a number of seconds, got {value!r}")
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"timeouts.{name} must be > 0 and finite, got {value!r}")

    def resolve(
        self, policy: RetryPolicy, client: float | None, client_is_deadline: bool = False
    ) -> tuple[float, float]:
        """(attempt timeout, deadline) for a call with the client's timeout ``client``.

        ``client_is_deadline``: the client's timeout bounds the whole call (gRPC's
        deadline), so it is the deadline, and each attempt gets a ``DEADLINE_FACTOR``
        (third) of it: one hung instance cannot use up the whole call.
        """
        attempt = self.attempt or policy.attempt_timeout
        deadline = self.deadline or policy.max_elapsed
        if client is not None and client > 0 and math.isfinite(client):
            if client_is_deadline:
                if attempt is None:
                    attempt = client / DEADLINE_FACTOR
                if deadline is None:
                    deadline = client
            else:
                if attempt is None:
                    attempt = client
                if deadline is None:
                    deadline = DEADLINE_FACTOR * client
        if attempt is None:
            attempt = DEFAULT_ATTEMPT_TIMEOUT
        if deadline is None:
            deadline = max(DEFAULT_DEADLINE, attempt)
        return attempt, deadline


def check_timeouts(timeouts: Timeouts | None) -> Timeouts:
    """The ``timeouts`` argument of an integration, validated (None: derive everything)."""
    if timeouts is None:
        return _DERIVED
    if not isinstance(timeouts, Timeouts):
        raise TypeError(f"timeouts must be a Timeouts, got {timeouts!r}")
    return timeouts


_DERIVED = Timeouts()


class CallState:
    """One call's way through the stack: its deadline, and the last failing response.

    ``client_timeout`` is the client's own timeout as given to :meth:`ClientCore.start`
    (None: none), for integrations that cap it per attempt.
    """

    __slots__ = (
        "attempt", "client_timeout", "clock", "deadline", "deadline_at", "failed", "proxy",
        "request",
    )  # fmt: skip

    def __init__(
        self,
        proxy: ServiceProxy,
        request: Any,
        attempt: float,
        deadline: float,
        clock: Callable[[], float],
        client_timeout: float | None = None,
    ) -> None:
        self.proxy = proxy
        self.client_timeout = client_timeout
        self.request = request
        self.attempt = attempt
        self.deadline = deadline
        self.clock = clock
        self.deadline_at = clock() + deadline
        # The last response that failed its attempt (fully read, so its connection is free).
        self.failed: Any = None

    def limit(self) -> float:
        """Seconds the next attempt may take; raises :class:`CallDeadlineExceeded` when none."""
        remaining = self.deadline_at - self.clock()
        if remaining <= 0.0:
            raise CallDeadlineExceeded(self.proxy.service_name, self.deadline)
        attempt = self.attempt
        return attempt if attempt < remaining else remaining

    def fail(self, response: Any, failure: BaseException) -> BaseException:
        """Record ``response`` as the last failing one; return ``failure`` to raise."""
        self.failed = response
        return failure
