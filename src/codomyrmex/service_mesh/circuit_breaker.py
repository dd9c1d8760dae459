"""Circuit breaker: stop calling a dependency that keeps failing, probe it again later.

One state machine serves sync and async callers alike. A call is admitted
(``_admit``), run with no lock held, then its outcome is recorded (``_record``)
against the *epoch* it was admitted under: every transition starts a new epoch,
so a result that arrives after the breaker has moved on is ignored instead of
being mistaken for a probe result.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from types import TracebackType
from typing import ParamSpec, TypeVar

from ._validate import check_callable, check_int, check_number, check_str
from .errors import CircuitOpenError

__all__ = ["CircuitBreaker", "CircuitBreakerConfig", "CircuitState", "Clock", "StateListener"]

P = ParamSpec("P")
R = TypeVar("R")

Clock = Callable[[], float]
"""A zero-argument callable returning seconds from a monotonic origin."""

logger = logging.getLogger("codomyrmex.service_mesh")


class CircuitState(Enum):
    """Where a breaker is in its life cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

# The legal transitions, in one place. ``reset()`` may also return any state to CLOSED.
TRANSITIONS: dict[CircuitState, frozenset[CircuitState]] = {
    CLOSED: frozenset({OPEN}),
    OPEN: frozenset({HALF_OPEN}),
    HALF_OPEN: frozenset({OPEN, CLOSED}),
}

StateListener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]
"""Called as ``listener(breaker, old_state, new_state)`` after each transition."""


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """When a breaker opens, how long it stays open, and how it probes for recovery."""

    failure_threshold: int = 5
    """Consecutive failures (while CLOSED) that open the circuit."""
    success_threshold: int = 2
    """Successful probes (while HALF_OPEN) that close the circuit."""
    timeout_seconds: float = 30.0
    """Seconds the circuit stays OPEN before it admits probes."""
    half_open_max_calls: int = 3
    """Probes allowed in flight at the same time while HALF_OPEN."""

    def __post_init__(self) -> None:
        check_int("failure_threshold", self.failure_threshold, 1)
        check_int("success_threshold", self.success_threshold, 1)
        check_number("timeout_seconds", self.timeout_seconds, 0.0)
        check_int("half_open_max_calls", self.half_open_max_calls, 1)


class CircuitBreaker:
    """A thread-safe and async-safe circuit breaker.

    CLOSED counts consecutive failures; ``failure_threshold`` of them open the
    circuit. OPEN rejects with :class:`CircuitOpenError` until ``timeout_seconds``
    have passed, then the breaker is HALF_OPEN and admits at most
    ``half_open_max_calls`` concurrent probes: ``success_threshold`` successes
    close it, any failure opens it again. Only :class:`Exception` counts as a
    failure; other ``BaseException``s pass through and count as nothing.
    """

    __slots__ = (
        "_clock",
        "_closed_epoch",
        "_epoch",
        "_failures",
        "_in_flight",
        "_last_failure_at",
        "_listeners",
        "_lock",
        "_open_until",
        "_opened_at",
        "_probe_successes",
        "_state",
        "config",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        on_state_change: StateListener | None = None,
    ) -> None:
        check_str("name", name)
        if config is None:
            config = CircuitBreakerConfig()
        elif not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        check_callable("clock", clock)
        self.name = name
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._epoch = 1
        # Equal to _epoch while CLOSED, 0 otherwise: the lock-free admission token.
        self._closed_epoch = 1
        self._failures = 0
        self._in_flight = 0
        self._probe_successes = 0
        self._opened_at = 0.0
        self._open_until = 0.0
        self._last_failure_at: float | None = None
        self._listeners: tuple[StateListener, ...] = ()
        if on_state_change is not None:
            self.add_listener(on_state_change)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state.value}, config={self.config!r})"

    # -- queries ---------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN breaker whose timeout has passed reads HALF_OPEN."""
        state = self._state
        if state is OPEN and self._clock() >= self._open_until:
            changes: list[tuple[CircuitState, CircuitState]] = []
            with self._lock:
                self._refresh(self._clock(), changes)
                state = self._state
            self._notify(changes)
        return state

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted so far (kept while OPEN, cleared on close)."""
        return self._failures

    @property
    def half_open_in_flight(self) -> int:
        """Probes currently running while HALF_OPEN."""
        return self._in_flight if self._state is HALF_OPEN else 0

    @property
    def last_failure_time(self) -> datetime | None:
        """Wall-clock time (UTC) of the last recorded failure, or None if none."""
        at = self._last_failure_at
        if at is None:
            return None
        return datetime.fromtimestamp(time.time() - (self._clock() - at), tz=timezone.utc)

    def retry_after(self) -> float:
        """Seconds until a probe can be admitted (0.0 unless OPEN)."""
        if self._state is OPEN:
            return max(0.0, self._open_until - self._clock())
        return 0.0

    def can_execute(self) -> bool:
        """Whether a call would be admitted now. A pure query: it takes no slot."""
        if self._closed_epoch:
            return True
        state = self.state
        if state is HALF_OPEN:
            return self._in_flight < self.config.half_open_max_calls
        return state is CLOSED

    # -- running calls ---------------------------------------------------------

    def execute(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` through the breaker and return its result.

        Raises :class:`CircuitOpenError` without calling ``fn`` when the breaker
        rejects; otherwise re-raises whatever ``fn`` raised, after recording it.
        """
        epoch = self._closed_epoch or self._acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_error(epoch, exc)
            raise
        if epoch != self._closed_epoch or self._failures:
            self._record(epoch, True)
        return result

    async def execute_async(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker: the async twin of :meth:`execute`.

        Cancellation counts as neither success nor failure and frees a probe slot.
        """
        epoch = self._closed_epoch or self._acquire()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._record_error(epoch, exc)
            raise
        if epoch != self._closed_epoch or self._failures:
            self._record(epoch, True)
        return result

    def permit(self) -> Permit:
        """A context manager (sync and async) that admits one call and records its outcome.

        ``with cb.permit(): ...`` raises :class:`CircuitOpenError` on entry when the
        breaker would reject; an ``Exception`` leaving the block is a failure, a
        normal exit a success, any other ``BaseException`` neither.
        """
        return Permit(self)

    def record_success(self) -> None:
        """Record a success for a call the caller ran itself (no slot is involved)."""
        self._record_manual(True)

    def record_failure(self) -> None:
        """Record a failure for a call the caller ran itself (no slot is involved)."""
        self._record_manual(False)

    def reset(self) -> None:
        """Return the breaker to CLOSED with no failures counted."""
        changes: list[tuple[CircuitState, CircuitState]] = []
        with self._lock:
            self._enter(CLOSED, self._clock(), changes, force=True)
            self._failures = 0
        self._notify(changes)

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(breaker, old, new)`` after every state transition.

        Listeners run outside the breaker's lock; one that raises is logged and
        never breaks the call that caused the transition.
        """
        check_callable("listener", listener)
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

    # -- the state machine -----------------------------------------------------

    def _admit(self) -> int:
        """Admit one call now or raise :class:`CircuitOpenError`; return its epoch."""
        return self._closed_epoch or self._acquire()

    def _acquire(self) -> int:
        """Slow admission path: anything but CLOSED, taking a half-open slot if needed."""
        now = self._clock()
        if self._state is OPEN and now < self._open_until:
            raise CircuitOpenError(self.name, OPEN, self._open_until - now)
        changes: list[tuple[CircuitState, CircuitState]] = []
        try:
            with self._lock:
                self._refresh(now, changes)
                state = self._state
                if state is OPEN:
                    raise CircuitOpenError(self.name, OPEN, max(0.0, self._open_until - now))
                if state is HALF_OPEN:
                    if self._in_flight >= self.config.half_open_max_calls:
                        raise CircuitOpenError(self.name, HALF_OPEN, 0.0)
                    self._in_flight += 1
                return self._epoch
        finally:
            if changes:
                self._notify(changes)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` behind this breaker: the decorators' sync wrapper, kept flat for speed."""
        acquire = self._acquire
        record = self._record
        record_error = self._record_error

        @functools.wraps(fn)
        def call_through_breaker(*args: P.args, **kwargs: P.kwargs) -> R:
            epoch = self._closed_epoch or acquire()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                record_error(epoch, exc)
                raise
            if epoch != self._closed_epoch or self._failures:
                record(epoch, True)
            return result

        return call_through_breaker

    def _record_error(self, epoch: int, exc: BaseException) -> None:
        """An admitted call raised: an ``Exception`` is a failure, anything else frees its slot."""
        if isinstance(exc, Exception):
            self._record(epoch, False)
        elif epoch != self._closed_epoch:
            self._release(epoch)

    def _release(self, epoch: int) -> None:
        """Free the slot of a call that ended with neither success nor failure."""
        with self._lock:
            if epoch == self._epoch and self._state is HALF_OPEN:
                self._in_flight -= 1

    def _record(self, epoch: int, success: bool) -> None:
        """Record the outcome of a call admitted under ``epoch`` (stale epochs are ignored)."""
        changes: list[tuple[CircuitState, CircuitState]] = []
        with self._lock:
            if epoch != self._epoch:
                return
            state = self._state
            if state is HALF_OPEN:
                self._in_flight -= 1
            self._apply(state, success, self._clock(), changes)
        if changes:
            self._notify(changes)

    def _record_manual(self, success: bool) -> None:
        changes: list[tuple[CircuitState, CircuitState]] = []
        with self._lock:
            now = self._clock()
            self._refresh(now, changes)
            self._apply(self._state, success, now, changes)
        if changes:
            self._notify(changes)

    def _apply(
        self,
        state: CircuitState,
        success: bool,
        now: float,
        changes: list[tuple[CircuitState, CircuitState]],
    ) -> None:
        """Apply one outcome to ``state``. Caller holds the lock."""
        if success:
            if state is CLOSED:
                self._failures = 0
            elif state is HALF_OPEN:
                self._probe_successes += 1
                if self._probe_successes >= self.config.success_threshold:
                    self._enter(CLOSED, now, changes)
            return
        self._last_failure_at = now
        if state is CLOSED:
            self._failures += 1
            if self._failures >= self.config.failure_threshold:
                self._enter(OPEN, now, changes)
        elif state is HALF_OPEN:
            self._failures += 1
            self._enter(OPEN, now, changes)
        # A failure reported while OPEN does not extend the open period.

    def _refresh(self, now: float, changes: list[tuple[CircuitState, CircuitState]]) -> None:
        """Make the lazy OPEN -> HALF_OPEN transition if its time has come. Lock held."""
        if self._state is OPEN and now >= self._open_until:
            self._enter(HALF_OPEN, now, changes)

    def _enter(
        self,
        new: CircuitState,
        now: float,
        changes: list[tuple[CircuitState, CircuitState]],
        *,
        force: bool = False,
    ) -> None:
        """Move to ``new``, starting a new epoch. Lock held."""
        old = self._state
        if not force and new not in TRANSITIONS[old]:
            raise AssertionError(f"illegal circuit transition {old.value} -> {new.value}")
        self._closed_epoch = 0
        self._epoch += 1
        self._in_flight = 0
        self._probe_successes = 0
        if new is OPEN:
            self._opened_at = now
            self._open_until = now + self.config.timeout_seconds
        elif new is CLOSED:
            self._failures = 0
        self._state = new
        if new is CLOSED:
            self._closed_epoch = self._epoch
        if old is not new:
            changes.append((old, new))

    def _notify(self, changes: list[tuple[CircuitState, CircuitState]]) -> None:
        """Log and announce transitions. Runs outside the lock."""
        for old, new in changes:
            level = logging.WARNING if new is OPEN else logging.INFO
            if logger.isEnabledFor(level):
                logger.log(
                    level,
                    "circuit %s: %s -> %s",
                    self.name,
                    old.value,
                    new.value,
                    extra={"breaker": self.name, "old_state": old.value, "new_state": new.value},
                )
            for listener in self._listeners:
                try:
                    listener(self, old, new)
                except Exception:
                    logger.exception("state listener of circuit %s raised", self.name)


class Permit:
    """One admitted call, as a context manager; see :meth:`CircuitBreaker.permit`."""

    __slots__ = ("_breaker", "_epoch")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._epoch = 0

    def __enter__(self) -> CircuitBreaker:
        self._epoch = self._breaker._admit()
        return self._breaker

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        breaker, epoch = self._breaker, self._epoch
        if exc is not None:
            breaker._record_error(epoch, exc)
        elif epoch != breaker._closed_epoch or breaker._failures:
            breaker._record(epoch, True)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
