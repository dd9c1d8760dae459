"""Circuit breaker: stop calling a dependency that keeps failing, probe it again later.

One state machine serves sync and async callers alike. A call is admitted
(``_closed_epoch or _acquire()``), run with no lock held, then its outcome is recorded (``_record``)
against the *epoch* it was admitted under: every transition starts a new epoch,
so a result that arrives after the breaker has moved on is ignored instead of
being mistaken for a probe result.

While calls need no probe slot (CLOSED, DISABLED, METRICS_ONLY) the admission
token ``_closed_epoch`` is the current epoch and admission takes no lock; a
success that changes nothing (no failures counted, no window to feed) takes
none either.

With a ``store`` (:mod:`.store`) the breaker shares its state with every
process bound to the same name. The store is consulted only on slow paths
(failures, counted successes, HALF_OPEN admission and release, operator
actions); the fleet's transitions arrive through ``_adopt``. Without a store
the code paths are those of a purely in-memory breaker.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, NoReturn, ParamSpec, TypeVar, cast

from ._validate import check_callable, check_int, check_number, check_str
from .errors import CircuitOpenError
from .events import (
    CallRejected,
    EventListener,
    Publisher,
    StateTransition,
    ThresholdCrossed,
    publish,
)
from .windows import CountWindow, OutcomeWindow, TimeWindow

if TYPE_CHECKING:
    from .store import BreakerLink, BreakerStore, SharedState

__all__ = [
    "TRANSITIONS",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitState",
    "Clock",
    "Permit",
    "StateListener",
]

P = ParamSpec("P")
R = TypeVar("R")

Clock = Callable[[], float]
"""A zero-argument callable returning seconds from a monotonic origin."""

logger = logging.getLogger("codomyrmex.service_mesh")


class CircuitState(Enum):
    """Where a breaker is in its life cycle.

    CLOSED, OPEN and HALF_OPEN are the automatic states; FORCED_OPEN (reject
    everything), DISABLED (admit everything, record nothing) and METRICS_ONLY
    (admit and record everything, never transition) are set by an operator.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"


CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED
METRICS_ONLY = CircuitState.METRICS_ONLY
_OPERATOR_STATES = frozenset({FORCED_OPEN, DISABLED, METRICS_ONLY})

# Every legal transition, in one place. The automatic ones are CLOSED -> OPEN,
# OPEN -> HALF_OPEN, HALF_OPEN -> OPEN | CLOSED; an operator may move any state to
# an operator state, and ``reset()`` may move any state to CLOSED. A breaker with a
# store also adopts whatever state its fleet is in (``_adopt``), which may skip states.
TRANSITIONS: dict[CircuitState, frozenset[CircuitState]] = {
    CLOSED: frozenset({OPEN}) | _OPERATOR_STATES,
    OPEN: frozenset({HALF_OPEN, CLOSED}) | _OPERATOR_STATES,
    HALF_OPEN: frozenset({OPEN, CLOSED}) | _OPERATOR_STATES,
    FORCED_OPEN: frozenset({CLOSED}) | _OPERATOR_STATES,
    DISABLED: frozenset({CLOSED}) | _OPERATOR_STATES,
    METRICS_ONLY: frozenset({CLOSED}) | _OPERATOR_STATES,
}

StateListener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]
"""Called as ``listener(breaker, old_state, new_state)`` after each transition
(a listener taking two arguments is called as ``listener(old_state, new_state)``)."""


class _OldNew:
    """A two-argument listener ``(old, new)``, called with the breaker left out.

    Compares equal to the function it wraps, so ``remove_listener`` finds it.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[CircuitState, CircuitState], object]) -> None:
        self.fn = fn

    def __call__(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        self.fn(old, new)

    def __eq__(self, other: object) -> bool:
        return other is self or other == self.fn

    def __hash__(self) -> int:
        return hash(self.fn)


def _adapt_listener(listener: Callable[..., object]) -> StateListener:
    """``listener`` as a three-argument listener; TypeError if it takes neither form."""
    try:
        signature = inspect.signature(listener)
    except (TypeError, ValueError):  # no signature to read (some builtins): trust it
        return cast(StateListener, listener)
    for form in (3, 2):
        try:
            signature.bind(*([None] * form))
        except TypeError:
            continue
        return cast(StateListener, listener) if form == 3 else _OldNew(listener)
    raise TypeError(
        f"listener must take (breaker, old, new) or (old, new), got {listener!r}{signature}"
    )


_Changes = list[tuple[CircuitState, CircuitState]]

DEFAULT_FAILURE_RATE = 50.0
"""The failure percentage of a windowed breaker configured for slow calls only."""


def _check_types(field: str, value: Any) -> tuple[type[BaseException], ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise TypeError(f"{field} must be a tuple of exception types, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """When a breaker opens, how long it stays open, and how it probes for recovery.

    By default the breaker counts consecutive failures. Setting
    ``failure_rate_threshold`` or ``slow_call_duration_threshold`` switches it to
    rates over a sliding window (the last ``sliding_window_size`` calls, or
    seconds with ``sliding_window_type="time"``), judged once the window holds
    ``minimum_number_of_calls``; ``failure_threshold`` is then unused. Failures
    still open a windowed breaker when only slow calls were configured: at
    ``failure_rate_threshold``, 50% unless set (resilience4j's default).
    """

    failure_threshold: int = 5
    """Consecutive failures (while CLOSED) that open the circuit."""
    success_threshold: int = 2
    """Successful probes (while HALF_OPEN) that close the circuit."""
    timeout_seconds: float = 30.0
    """Seconds the circuit stays OPEN before it admits probes."""
    half_open_max_calls: int = 3
    """Probes allowed in flight at the same time while HALF_OPEN."""
    failure_rate_threshold: float | None = None
    """Percentage of failed calls in the window that opens the circuit (window mode;
    50 when only ``slow_call_duration_threshold`` is set)."""
    sliding_window_type: Literal["count", "time"] = "count"
    """``"count"``: the last N calls; ``"time"``: the calls of the last N seconds."""
    sliding_window_size: int = 100
    """N, in calls or seconds."""
    minimum_number_of_calls: int = 10
    """Calls the window must hold before any rate is judged."""
    slow_call_duration_threshold: float | None = None
    """A call lasting longer than this many seconds is slow, whatever its outcome (window
    mode); one lasting exactly this long is not."""
    slow_call_rate_threshold: float = 100.0
    """Percentage of slow calls in the window that opens the circuit."""
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    """Exceptions that count as failures; other exceptions count as successes."""
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    """Exceptions that count as nothing (checked before ``record_exceptions``)."""
    failure_predicate: Callable[[BaseException], bool] | None = None
    """If set, decides for recorded exception types whether one is a failure."""
    result_predicate: Callable[[Any], bool] | None = None
    """If set, a return value for which it is true counts as a failure (e.g. a 503)."""
    open_backoff_multiplier: float = 1.0
    """Each re-open from HALF_OPEN multiplies the OPEN wait by this (reset on close)."""
    max_open_seconds: float | None = None
    """Cap on the grown OPEN wait; at least ``timeout_seconds``."""
    half_open_judged_by_rate: bool = False
    """Judge HALF_OPEN as resilience4j does: admit ``half_open_max_calls`` probes in all,
    and once every one has ended, close if their failure rate is below the window's
    failure rate (``failure_rate_threshold``, 50% unless set) and their slow-call rate
    below ``slow_call_rate_threshold``, else re-open (``success_threshold`` unused).
    The default judges each probe: one failure re-opens. Not supported with a store."""

    def __post_init__(self) -> None:
        check_int("failure_threshold", self.failure_threshold, 1)
        check_int("success_threshold", self.success_threshold, 1)
        check_number("timeout_seconds", self.timeout_seconds, 0.0)
        check_int("half_open_max_calls", self.half_open_max_calls, 1)
        if self.failure_rate_threshold is not None:
            rate = check_number("failure_rate_threshold", self.failure_rate_threshold, 0.0)
            if not 0.0 < rate <= 100.0:
                raise ValueError(
                    "failure_rate_threshold must be in (0, 100], "
                    f"got {self.failure_rate_threshold!r}"
                )
        if self.sliding_window_type not in ("count", "time"):
            raise ValueError(
                f"sliding_window_type must be 'count' or 'time', got {self.sliding_window_type!r}"
            )
        check_int("sliding_window_size", self.sliding_window_size, 1)
        check_int("minimum_number_of_calls", self.minimum_number_of_calls, 1)
        if self.slow_call_duration_threshold is not None:
            check_number("slow_call_duration_threshold", self.slow_call_duration_threshold, 0.0)
        slow_rate = check_number("slow_call_rate_threshold", self.slow_call_rate_threshold, 0.0)
        if not 0.0 < slow_rate <= 100.0:
            raise ValueError(
                "slow_call_rate_threshold must be in (0, 100], "
                f"got {self.slow_call_rate_threshold!r}"
            )
        _check_types("record_exceptions", self.record_exceptions)
        _check_types("ignore_exceptions", self.ignore_exceptions)
        if self.failure_predicate is not None:
            check_callable("failure_predicate", self.failure_predicate)
        if self.result_predicate is not None:
            check_callable("result_predicate", self.result_predicate)
        check_number("open_backoff_multiplier", self.open_backoff_multiplier, 1.0)
        if not isinstance(self.half_open_judged_by_rate, bool):
            raise TypeError(
                f"half_open_judged_by_rate must be a bool, got {self.half_open_judged_by_rate!r}"
            )
        if self.max_open_seconds is not None:
            check_number("max_open_seconds", self.max_open_seconds, 0.0)
            if self.max_open_seconds < self.timeout_seconds:
                raise ValueError(
                    f"max_open_seconds must be >= timeout_seconds ({self.timeout_seconds!r}), "
                    f"got {self.max_open_seconds!r}"
                )

    @property
    def windowed(self) -> bool:
        """Whether the breaker judges rates over a sliding window."""
        return (
            self.failure_rate_threshold is not None or self.slow_call_duration_threshold is not None
        )

    @property
    def window_failure_rate(self) -> float:
        """The failure percentage that opens a windowed breaker (50 unless set)."""
        rate = self.failure_rate_threshold
        return DEFAULT_FAILURE_RATE if rate is None else rate

    @property
    def minimum_calls(self) -> int:
        """``minimum_number_of_calls``, capped by a count window's size (it holds no more)."""
        if self.sliding_window_type == "count":
            return min(self.minimum_number_of_calls, self.sliding_window_size)
        return self.minimum_number_of_calls

    @property
    def default_classification(self) -> bool:
        """Whether every ``Exception`` is a failure and nothing else is looked at."""
        return (
            self.record_exceptions == (Exception,)
            and not self.ignore_exceptions
            and self.failure_predicate is None
        )


class CircuitBreaker(Publisher):
    """A thread-safe and async-safe circuit breaker.

    CLOSED counts consecutive failures; ``failure_threshold`` of them open the
    circuit (or, in window mode, a failure or slow-call rate does). OPEN rejects
    with :class:`CircuitOpenError` until ``timeout_seconds`` have passed, then
    the breaker is HALF_OPEN and admits at most ``half_open_max_calls``
    concurrent probes: ``success_threshold`` successes close it, any failure
    opens it again. Only :class:`Exception` counts as a failure; other
    ``BaseException``\\ s pass through, count as nothing and free their slot.

    Events (:meth:`subscribe`): :class:`StateTransition` and :class:`CallRejected`.
    """

    __slots__ = (
        "_classify",
        "_clock",
        "_closed_epoch",
        "_epoch",
        "_failures",
        "_in_flight",
        "_last_failure_at",
        "_last_failure_wall",
        "_link",
        "_listeners",
        "_lock",
        "_must_record",
        "_open_until",
        "_opened_at",
        "_probe_ended",
        "_probe_failures",
        "_probe_slow",
        "_probe_successes",
        "_reopen_count",
        "_shadow",
        "_shadow_event",
        "_state",
        "_subscribers",
        "_timed",
        "_window",
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
        store: BreakerStore | None = None,
    ) -> None:
        check_str("name", name)
        if config is None:
            config = CircuitBreakerConfig()
        elif not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        check_callable("clock", clock)
        if store is not None and not callable(getattr(store, "bind", None)):
            raise TypeError(f"store must be a BreakerStore (with a bind method), got {store!r}")
        self.name = name
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._epoch = 1
        # Nonzero (the current epoch) while calls are admitted without a slot.
        self._closed_epoch = 1
        self._failures = 0
        self._in_flight = 0
        self._probe_successes = 0
        self._probe_ended = self._probe_failures = self._probe_slow = 0
        self._reopen_count = 0
        self._shadow = False  # METRICS_ONLY: past the opening threshold now
        self._shadow_event: ThresholdCrossed | None = None  # to announce, outside the lock
        self._opened_at = 0.0
        self._open_until = 0.0
        self._last_failure_at: float | None = None
        # (clock reading, wall-clock seconds) of the last failure, stamped when it happens.
        self._last_failure_wall: tuple[float, float] | None = None
        self._window: OutcomeWindow | None = None
        if config.windowed:
            size = config.sliding_window_size
            self._window = (
                CountWindow(size) if config.sliding_window_type == "count" else (TimeWindow(size))
            )
        # Whether a success on the fast path must still be recorded.
        self._must_record = self._window is not None
        # Whether calls must be timed or their results inspected.
        self._timed = config.slow_call_duration_threshold is not None or (
            config.result_predicate is not None
        )
        self._classify = None if config.default_classification else self._classify_error
        self._listeners: tuple[StateListener, ...] = ()
        self._subscribers: tuple[EventListener, ...] = ()
        if on_state_change is not None:
            self.add_listener(on_state_change)
        # Set last: binding may make the breaker adopt the fleet's current state.
        self._link: BreakerLink | None = None
        if store is not None and config.half_open_judged_by_rate:
            raise ValueError("half_open_judged_by_rate is not supported with a store")
        if store is not None:
            self._link = store.bind(self)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state.value}, config={self.config!r})"

    # -- queries ---------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN breaker whose timeout has passed reads HALF_OPEN."""
        state = self._state
        if state is OPEN and self._clock() >= self._open_until:
            changes: _Changes = []
            with self._lock:
                self._refresh(self._clock(), changes)
                state = self._state
            self._notify(changes)
        return state

    @property
    def failure_count(self) -> int:
        """Failures counted so far: consecutive ones, or those in the window in window mode."""
        window = self._window
        if window is None:
            return self._failures
        with self._lock:
            window.expire(self._clock())
            return window.failures

    @property
    def metrics(self) -> dict[str, float]:
        """Window totals and rates (zeros in consecutive mode)."""
        window = self._window
        if window is None:
            return {
                "calls": 0,
                "failures": self._failures,
                "slow_calls": 0,
                "failure_rate": 0.0,
                "slow_call_rate": 0.0,
            }
        with self._lock:
            window.expire(self._clock())
            return {
                "calls": window.calls,
                "failures": window.failures,
                "slow_calls": window.slow,
                "failure_rate": window.failure_rate(),
                "slow_call_rate": window.slow_rate(),
            }

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
        stamp = self._last_failure_wall
        if stamp is None or stamp[0] != at:
            # Set elsewhere (adopted from a store): stamped now, once, not on every read.
            stamp = self._last_failure_wall = (at, time.time() - (self._clock() - at))
        return datetime.fromtimestamp(stamp[1], tz=timezone.utc)

    def retry_after(self) -> float:
        """Seconds until a probe can be admitted (0.0 unless OPEN; inf when FORCED_OPEN)."""
        state = self._state
        if state is OPEN:
            return max(0.0, self._open_until - self._clock())
        return math.inf if state is FORCED_OPEN else 0.0

    def can_execute(self) -> bool:
        """Whether a call would be admitted now. A pure query: it takes no slot."""
        if self._closed_epoch:
            return True
        state = self.state
        if state is HALF_OPEN:
            return self._in_flight + self._probe_ended < self.config.half_open_max_calls
        return False

    # -- running calls ---------------------------------------------------------

    def execute(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` through the breaker and return its result.

        Raises :class:`CircuitOpenError` without calling ``fn`` when the breaker
        rejects; otherwise re-raises whatever ``fn`` raised, after recording it.
        """
        if self._timed:
            return self._execute_timed(fn, *args, **kwargs)
        epoch = self._closed_epoch
        if not epoch:
            if self._state is OPEN and not self._subscribers:  # the rejection, raised right here
                now = self._clock()
                if now < self._open_until:
                    raise CircuitOpenError(self.name, OPEN, self._open_until - now)
            epoch = self._acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_error(epoch, exc)
            raise
        if epoch != self._closed_epoch or self._must_record:
            self._record(epoch, True)
        return result

    async def execute_async(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker: the async twin of :meth:`execute`.

        Cancellation counts as neither success nor failure and frees a probe slot.
        """
        epoch = self._closed_epoch or self._acquire()
        start = self._clock() if self._timed else None
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._record_error(epoch, exc, start)
            raise
        if start is not None:
            self._record_result(epoch, result, start)
        elif epoch != self._closed_epoch or self._must_record:
            self._record(epoch, True)
        return result

    def _execute_timed(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`execute` for breakers that time calls or inspect results."""
        epoch = self._closed_epoch or self._acquire()
        start = self._clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_error(epoch, exc, start)
            raise
        self._record_result(epoch, result, start)
        return result

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` behind this breaker: the decorators' sync wrapper, kept flat for speed."""
        if self._timed:
            execute_timed = self._execute_timed

            @functools.wraps(fn)
            def call_timed(*args: P.args, **kwargs: P.kwargs) -> R:
                return execute_timed(fn, *args, **kwargs)

            return call_timed
        acquire = self._acquire
        record = self._record
        record_error = self._record_error

        @functools.wraps(fn)
        def call_through_breaker(*args: P.args, **kwargs: P.kwargs) -> R:
            epoch = self._closed_epoch
            if not epoch:
                if self._state is OPEN and not self._subscribers:  # as in execute
                    now = self._clock()
                    if now < self._open_until:
                        raise CircuitOpenError(self.name, OPEN, self._open_until - now)
                epoch = acquire()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                record_error(epoch, exc)
                raise
            if epoch != self._closed_epoch or self._must_record:
                record(epoch, True)
            return result

        return call_through_breaker

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

    # -- operator controls ------------------------------------------------------

    def reset(self) -> None:
        """Return the breaker to CLOSED with nothing counted (also leaves operator states)."""
        self._operate(CLOSED)

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (FORCED_OPEN)."""
        self._operate(FORCED_OPEN)

    def disable(self) -> None:
        """Admit every call and record nothing until :meth:`reset` (DISABLED)."""
        self._operate(DISABLED)

    def metrics_only(self) -> None:
        """Admit and record every call, never transition, until :meth:`reset` (METRICS_ONLY)."""
        self._operate(METRICS_ONLY)

    def _operate(self, new: CircuitState) -> None:
        changes: _Changes = []
        with self._lock:
            self._enter(new, self._clock(), changes)
            self._failures = 0
            self._reopen_count = 0
            if self._window is not None:
                self._window.reset()
            self._must_record = self._wants_record()
        self._notify(changes)
        if self._link is not None:
            self._link.operate(new)

    def reconfigure(self, config: CircuitBreakerConfig) -> None:
        """Use ``config`` from now on, keeping the state, its counts and any open period.

        The sliding window keeps its outcomes while its type and size stay the
        same; a new window type or size (or a switch to or from window mode)
        starts an empty window. An OPEN period already running ends as scheduled.
        """
        if not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        with self._lock:
            old = self.config
            same_window = (
                old.windowed == config.windowed
                and old.sliding_window_type == config.sliding_window_type
                and old.sliding_window_size == config.sliding_window_size
            )
            if not same_window:
                size = config.sliding_window_size
                self._window = (
                    None
                    if not config.windowed
                    else CountWindow(size)
                    if config.sliding_window_type == "count"
                    else TimeWindow(size)
                )
            self.config = config
            self._timed = config.slow_call_duration_threshold is not None or (
                config.result_predicate is not None
            )
            self._classify = None if config.default_classification else self._classify_error
            self._must_record = self._wants_record()

    # -- listeners --------------------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(breaker, old, new)`` after every state transition.

        A listener taking two arguments is called as ``listener(old, new)``; one that
        takes neither form is refused with TypeError here. Listeners run outside the
        breaker's lock; one that raises is logged and never breaks the call that
        caused the transition.
        """
        check_callable("listener", listener)
        adapted = _adapt_listener(listener)
        with self._lock:
            self._listeners = (*self._listeners, adapted)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x != listener)

    # -- the state machine -----------------------------------------------------

    def _acquire(self) -> int:
        """Slow admission path: anything but a free state, taking a half-open slot if needed."""
        now = self._clock()
        if self._state is OPEN and now < self._open_until:
            if self._subscribers:
                raise self._rejection(OPEN, self._open_until - now, "circuit_open")
            raise CircuitOpenError(self.name, OPEN, self._open_until - now)
        changes: _Changes = []
        probe = 0
        try:
            with self._lock:
                self._refresh(now, changes)
                state = self._state
                if state is HALF_OPEN:
                    # _probe_ended stays 0 unless HALF_OPEN is judged by rate
                    if self._in_flight + self._probe_ended < self.config.half_open_max_calls:
                        self._in_flight += 1
                        if self._link is None:
                            return self._epoch
                        probe = self._epoch
                elif self._closed_epoch:
                    return self._epoch
        finally:
            if changes:
                self._notify(changes)
        if probe:
            return self._acquire_shared(probe)
        return self._refuse(state, now)

    def _refuse(self, state: CircuitState, now: float) -> NoReturn:
        """Raise the rejection for a call refused in ``state``."""
        if state is OPEN:
            raise self._rejection(OPEN, max(0.0, self._open_until - now), "circuit_open")
        if state is HALF_OPEN:
            raise self._rejection(HALF_OPEN, 0.0, "half_open_full")
        raise self._rejection(state, math.inf, "forced_open")

    def _acquire_shared(self, epoch: int) -> int:
        """Ask the fleet for a probe slot, the local one (for ``epoch``) already taken."""
        link = cast("BreakerLink", self._link)
        granted = link.acquire_probe(epoch)
        if granted is None or granted:
            return epoch
        with self._lock:
            if epoch == self._epoch and self._state is HALF_OPEN:
                self._in_flight -= 1
            state = self._state
            closed_epoch = self._closed_epoch
        if closed_epoch:
            return closed_epoch
        return self._refuse(state, self._clock())

    def _rejection(self, state: CircuitState, retry_after: float, reason: str) -> CircuitOpenError:
        """The error for a refused call (announced to subscribers)."""
        if self._subscribers:
            publish(self._subscribers, CallRejected(self.name, reason, by_breaker=True))
        return CircuitOpenError(self.name, state, retry_after)

    def _classify_error(self, exc: BaseException) -> bool | None:
        """True: a failure; False: a success; None: ignored."""
        config = self.config
        if config.ignore_exceptions and isinstance(exc, config.ignore_exceptions):
            return None
        if not isinstance(exc, config.record_exceptions):
            return False
        if config.failure_predicate is not None:
            try:
                return bool(config.failure_predicate(exc))
            except Exception:
                logger.exception("failure_predicate of circuit %s raised", self.name)
        return True

    def _record_error(self, epoch: int, exc: BaseException, start: float | None = None) -> None:
        """An admitted call raised: classify it and record it, or free its slot."""
        if not isinstance(exc, Exception):
            self._release(epoch)
            return
        verdict = True if self._classify is None else self._classify(exc)
        if verdict is None:
            self._release(epoch)
            return
        slow = start is not None and self._is_slow(start)
        self._record(epoch, not verdict, slow)

    def _record_result(self, epoch: int, result: object, start: float) -> None:
        """A timed call returned ``result``: judge it and record it."""
        failed = False
        predicate = self.config.result_predicate
        if predicate is not None:
            try:
                failed = bool(predicate(result))
            except Exception:
                logger.exception("result_predicate of circuit %s raised", self.name)
        self._record_success_or(epoch, failed, self._is_slow(start))

    def _record_success_or(self, epoch: int, failed: bool, slow: bool) -> None:
        """Record a timed call's outcome, skipping the lock when it would change nothing."""
        if failed or slow or epoch != self._closed_epoch or self._must_record:
            self._record(epoch, not failed, slow)

    def _is_slow(self, start: float) -> bool:
        threshold = self.config.slow_call_duration_threshold
        return threshold is not None and self._clock() - start > threshold

    def _release(self, epoch: int) -> None:
        """Free the slot of a call that ended with neither success nor failure."""
        if epoch == self._closed_epoch:
            return
        with self._lock:
            if epoch == self._epoch and self._state is HALF_OPEN:
                self._in_flight -= 1
        if self._link is not None:
            self._link.release(epoch)

    def _record(self, epoch: int, success: bool, slow: bool = False) -> None:
        """Record the outcome of a call admitted under ``epoch`` (stale epochs are ignored)."""
        if self._link is not None:
            self._record_shared(epoch, success, slow)
            return
        changes: _Changes = []
        with self._lock:
            if epoch != self._epoch:
                return
            state = self._state
            if state is HALF_OPEN:
                self._in_flight -= 1
            self._apply(state, success, slow, self._clock(), changes)
        if changes:
            self._notify(changes)
        if self._shadow_event is not None:
            self._announce_shadow()

    def _record_manual(self, success: bool) -> None:
        if self._link is not None:
            self._record_shared(0, success, False)
            return
        changes: _Changes = []
        with self._lock:
            now = self._clock()
            self._refresh(now, changes)
            self._apply(self._state, success, False, now, changes)
        if changes:
            self._notify(changes)
        if self._shadow_event is not None:
            self._announce_shadow()

    def _apply(
        self,
        state: CircuitState,
        success: bool,
        slow: bool,
        now: float,
        changes: _Changes,
        decide: bool = True,
    ) -> None:
        """Apply one outcome to ``state``. Caller holds the lock.

        ``decide=False`` counts the outcome but leaves transitions to the fleet.
        """
        if state is DISABLED or state is OPEN or state is FORCED_OPEN:
            # A failure reported while OPEN neither counts nor extends the open period.
            if not success and state is not DISABLED:
                self._last_failure_at = now
                self._last_failure_wall = (now, time.time())
            return
        if not success:
            self._last_failure_at = now
            self._last_failure_wall = (now, time.time())
        if state is HALF_OPEN:
            if not decide:
                return
            if self.config.half_open_judged_by_rate:
                self._judge_probes(not success, slow, now, changes)
                return
            if success and not slow:
                self._probe_successes += 1
                if self._probe_successes >= self.config.success_threshold:
                    self._enter(CLOSED, now, changes)
            else:
                self._reopen_count += 1
                self._enter(OPEN, now, changes)
            return
        window = self._window
        if window is not None:
            window.record(now, not success, slow)
            if (
                decide
                and state is CLOSED
                and window.calls >= self.config.minimum_calls
                and self._window_tripped(window)
            ):
                self._enter(OPEN, now, changes)
            elif state is METRICS_ONLY:
                self._watch_shadow()
            return
        if success:
            self._failures = 0
            self._must_record = False
            if state is METRICS_ONLY:
                self._watch_shadow()
            return
        self._failures += 1
        self._must_record = True
        if decide and state is CLOSED and self._failures >= self.config.failure_threshold:
            self._enter(OPEN, now, changes)
        elif state is METRICS_ONLY:
            self._watch_shadow()

    def _judge_probes(self, failed: bool, slow: bool, now: float, changes: _Changes) -> None:
        """HALF_OPEN judged by rate: count a probe; once all have ended, decide. Lock held."""
        config = self.config
        self._probe_ended += 1
        self._probe_failures += failed
        self._probe_slow += slow
        ended = self._probe_ended
        if ended < config.half_open_max_calls:
            return
        failure_rate = 100.0 * self._probe_failures / ended
        slow_rate = 100.0 * self._probe_slow / ended
        if failure_rate >= config.window_failure_rate or (
            config.slow_call_duration_threshold is not None
            and slow_rate >= config.slow_call_rate_threshold
        ):
            self._reopen_count += 1
            self._enter(OPEN, now, changes)
        else:
            self._enter(CLOSED, now, changes)

    def _watch_shadow(self) -> None:
        """METRICS_ONLY: note a crossing of the opening threshold (announced later). Lock held."""
        config = self.config
        window = self._window
        crossing: ThresholdCrossed | None = None
        if window is None:
            if self._failures >= config.failure_threshold:
                crossing = ThresholdCrossed(
                    self.name, "failures", float(self._failures), float(config.failure_threshold)
                )
        elif window.calls >= config.minimum_calls:
            if window.failure_rate() >= config.window_failure_rate:
                crossing = ThresholdCrossed(
                    self.name, "failure_rate", window.failure_rate(), config.window_failure_rate
                )
            elif (
                config.slow_call_duration_threshold is not None
                and window.slow_rate() >= config.slow_call_rate_threshold
            ):
                crossing = ThresholdCrossed(
                    self.name,
                    "slow_call_rate",
                    window.slow_rate(),
                    config.slow_call_rate_threshold,
                )
        if crossing is None:
            self._shadow = False
        elif not self._shadow:
            self._shadow = True
            self._shadow_event = crossing

    def _announce_shadow(self) -> None:
        """Log and publish a METRICS_ONLY crossing noted under the lock."""
        with self._lock:
            event, self._shadow_event = self._shadow_event, None
        if event is None:
            return
        logger.warning(
            "circuit %s (metrics only) would open: %s %g >= %g",
            self.name,
            event.measure,
            event.value,
            event.threshold,
            extra={"breaker": self.name, "measure": event.measure},
        )
        if self._subscribers:
            publish(self._subscribers, event)

    def _window_tripped(self, window: OutcomeWindow) -> bool:
        """Whether the window's failure or slow-call rate opens the circuit. Lock held."""
        config = self.config
        return window.failure_rate() >= config.window_failure_rate or (
            config.slow_call_duration_threshold is not None
            and window.slow_rate() >= config.slow_call_rate_threshold
        )

    # -- sharing state through a store -------------------------------------------

    def _record_shared(self, epoch: int, success: bool, slow: bool) -> None:
        """:meth:`_record` with a store (``epoch`` 0: a manual record, no slot).

        Counts locally (the fallback state), then lets the fleet decide; if the
        store cannot take the outcome, the breaker decides on its own counts.
        """
        link = cast("BreakerLink", self._link)
        changes: _Changes = []
        with self._lock:
            now = self._clock()
            if epoch:
                current = epoch == self._epoch
            else:
                self._refresh(now, changes)
                current = True
            state = self._state
            shared = False
            if current:
                if epoch and state is HALF_OPEN:
                    self._in_flight -= 1
                shared = (state is CLOSED or state is HALF_OPEN) and link.online
                self._apply(state, success, slow, now, changes, decide=not shared)
        if changes:
            self._notify(changes)
        if self._shadow_event is not None:
            self._announce_shadow()
        if not shared:
            if epoch:
                link.release(epoch)
            return
        if link.record(epoch, state, success, slow):
            return
        changes = []
        with self._lock:
            if self._state is state and (not epoch or epoch == self._epoch):
                self._judge(state, success, slow, self._clock(), changes)
        if changes:
            self._notify(changes)

    def _judge(
        self, state: CircuitState, success: bool, slow: bool, now: float, changes: _Changes
    ) -> None:
        """Make the decision ``_apply(..., decide=False)`` left to a store. Lock held."""
        if state is HALF_OPEN:
            self._apply(state, success, slow, now, changes)
            return
        window = self._window
        if window is None:
            tripped = self._failures >= self.config.failure_threshold
        else:
            tripped = window.calls >= self.config.minimum_calls and (self._window_tripped(window))
        if tripped:
            self._enter(OPEN, now, changes)

    def _adopt(self, shared: SharedState) -> _Changes:
        """Take the fleet's state (called by a store's link); return transitions to announce."""
        changes: _Changes = []
        with self._lock:
            now = self._clock()
            new = shared.state
            self._reopen_count = shared.reopens
            if new is not self._state:
                self._enter(new, now, changes, adopted=True)
            if new is OPEN:
                self._open_until = now + shared.retry_after
            if self._window is None and (new is CLOSED or shared.failures):
                # the fleet's count (kept while OPEN, as a breaker that opened itself keeps its own)
                self._failures = shared.failures
                self._must_record = self._wants_record()
            age = shared.last_failure_age
            if age is not None:
                at = now - age
                if self._last_failure_at is None or at > self._last_failure_at:
                    self._last_failure_at = at
        return changes

    # -- the store seam (internal API for breaker stores, such as the Redis one) --------

    def adopt(self, shared: SharedState) -> _Changes:
        """Take the fleet's state from a store; return the transitions to :meth:`announce`.

        Internal API for stores: call :meth:`announce` with the result outside any lock.
        """
        return self._adopt(shared)

    def announce(self, changes: _Changes) -> None:
        """Log and publish transitions returned by :meth:`adopt` (internal API for stores)."""
        self._notify(changes)

    @property
    def stored_state(self) -> CircuitState:
        """The state as last entered, without the lazy OPEN -> HALF_OPEN refresh that
        :attr:`state` makes (internal API for stores, which must not cause transitions).
        """
        return self._state

    def _refresh(self, now: float, changes: _Changes) -> None:
        """Make the lazy OPEN -> HALF_OPEN transition if its time has come. Lock held."""
        if self._state is OPEN and now >= self._open_until:
            self._enter(HALF_OPEN, now, changes)

    def _open_seconds(self) -> float:
        config = self.config
        seconds = config.timeout_seconds
        if self._reopen_count and config.open_backoff_multiplier > 1.0:
            try:
                seconds *= config.open_backoff_multiplier**self._reopen_count
            except OverflowError:
                seconds = math.inf
        if config.max_open_seconds is not None:
            seconds = min(seconds, config.max_open_seconds)
        return seconds

    def _wants_record(self) -> bool:
        state = self._state
        if state is DISABLED:
            return False
        return self._window is not None or self._failures > 0 or state is METRICS_ONLY

    def _enter(
        self, new: CircuitState, now: float, changes: _Changes, adopted: bool = False
    ) -> None:
        """Move to ``new``, starting a new epoch. Lock held."""
        old = self._state
        if new is not old and new not in TRANSITIONS[old] and not adopted:
            raise AssertionError(f"illegal circuit transition {old.value} -> {new.value}")
        self._closed_epoch = 0
        self._epoch += 1
        self._in_flight = 0
        self._probe_successes = 0
        self._probe_ended = self._probe_failures = self._probe_slow = 0
        self._shadow = False
        if new is OPEN:
            self._opened_at = now
            self._open_until = now + self._open_seconds()
        elif new is CLOSED:
            self._failures = 0
            self._reopen_count = 0
            if self._window is not None:
                self._window.reset()
        self._state = new
        self._must_record = self._wants_record()
        if new is CLOSED or new is DISABLED or new is METRICS_ONLY:
            self._closed_epoch = self._epoch
        if old is not new:
            changes.append((old, new))

    def _notify(self, changes: _Changes) -> None:
        """Log and announce transitions. Runs outside the lock."""
        for old, new in changes:
            level = logging.WARNING if new is OPEN or new is FORCED_OPEN else logging.INFO
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
            if self._subscribers:
                publish(self._subscribers, StateTransition(self.name, old, new))


class Permit:
    """One admitted call, as a context manager; see :meth:`CircuitBreaker.permit`.

    A permit times its block when the breaker watches for slow calls; result
    predicates do not apply (there is no result).
    """

    __slots__ = ("_breaker", "_epoch", "_start")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._epoch = 0
        self._start: float | None = None

    def __enter__(self) -> CircuitBreaker:
        breaker = self._breaker
        self._epoch = breaker._closed_epoch or breaker._acquire()
        if breaker._timed:
            self._start = breaker._clock()
        return breaker

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        breaker, epoch, start = self._breaker, self._epoch, self._start
        if exc is not None:
            breaker._record_error(epoch, exc, start)
        elif start is not None:
            breaker._record_success_or(epoch, False, breaker._is_slow(start))
        elif epoch != breaker._closed_epoch or breaker._must_record:
            breaker._record(epoch, True)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)
