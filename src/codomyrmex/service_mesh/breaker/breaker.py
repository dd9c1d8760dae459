"""Circuit breaker: stop calling a dependency that keeps failing, probe it again later.

Every way of calling through a breaker (:meth:`~CircuitBreaker.execute`,
:meth:`~CircuitBreaker.execute_async`, :meth:`~CircuitBreaker.wrap`,
:meth:`~CircuitBreaker.permit`) follows one protocol: *admit*
(``_closed_epoch or _acquire()``), *run* with no lock held, *record*
(``_record_error`` or ``_returned``) against the epoch the call was admitted
under. Every transition starts a new epoch, so a result that arrives after the
breaker has moved on is ignored instead of being mistaken for a probe result.

While calls need no probe slot (CLOSED, DISABLED, METRICS_ONLY) admission takes
no lock, and a call returning under ``_quiet_epoch`` (nothing counted, no window
to feed, no call to time) needs nothing more: one comparison. Everything past that
flat path (rejections, probes, timing, failures, stores) is the engine's, written once.

The state machine itself is :class:`.machine.BreakerMachine`. With a ``store``
(:mod:`.store`) the breaker shares its state with every process bound to the same
name: the store is consulted only on slow paths (failures, counted successes,
HALF_OPEN admission and release, operator actions), and the fleet's transitions
arrive through :meth:`~CircuitBreaker.adopt`.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NoReturn, ParamSpec, TypeVar, cast

from .._validate import check_callable, check_str
from ..errors import CircuitOpenError
from ..events import CallRejected, EventListener, Publisher, publish
from .config import CircuitBreakerConfig
from .listeners import StateListener, adapt_listener, announce, announce_crossing
from .machine import BreakerMachine
from .state import CLOSED, DISABLED, FORCED_OPEN, HALF_OPEN, METRICS_ONLY, OPEN

if TYPE_CHECKING:
    from .state import CircuitState, StateChanges
    from .store import BreakerLink, BreakerStore, SharedState

__all__ = ["CircuitBreaker", "Clock", "Permit", "StateListener"]

P = ParamSpec("P")
R = TypeVar("R")

Clock = Callable[[], float]
"""A zero-argument callable returning seconds from a monotonic origin."""

logger = logging.getLogger("codomyrmex.service_mesh")

_NO_RESULT = object()
"""The result of a call that has none to judge (a :class:`Permit`'s block)."""


class CircuitBreaker(BreakerMachine, Publisher):
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

    __slots__ = ("_classify", "_clock", "_link", "_listeners", "_lock", "_subscribers")

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
        super().__init__(name, config)
        self._clock = clock
        self._lock = threading.Lock()
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
            changes: StateChanges = []
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

    # -- running calls: admit, run, record ----------------------------------------

    def execute(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` through the breaker and return its result.

        Raises :class:`CircuitOpenError` without calling ``fn`` when the breaker
        rejects; otherwise re-raises whatever ``fn`` raised, after recording it.
        """
        epoch = self._closed_epoch
        if not epoch:
            if self._state is OPEN and not self._subscribers:  # the rejection, raised right here
                now = self._clock()
                if now < self._open_until:
                    raise CircuitOpenError(self.name, OPEN, self._open_until - now)
            epoch = self._acquire()
        start = self._clock() if self._timed else None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_error(epoch, exc, start)
            raise
        return result if epoch == self._quiet_epoch else self._returned(epoch, start, result)

    async def execute_async(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker, as :meth:`execute` runs it.

        Cancellation counts as neither success nor failure and frees a probe slot.
        """
        epoch = self._closed_epoch or self._acquire()
        start = self._clock() if self._timed else None
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._record_error(epoch, exc, start)
            raise
        return result if epoch == self._quiet_epoch else self._returned(epoch, start, result)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` behind this breaker: :meth:`execute` with ``fn`` bound, for the decorators.

        The steps are :meth:`execute`'s, inlined: forwarding ``*args, **kwargs`` to it
        would double the cost of a decorated call.
        """
        breaker = self
        clock = self._clock
        acquire = self._acquire
        record_error = self._record_error
        returned = self._returned

        @functools.wraps(fn)
        def call_through_breaker(*args: P.args, **kwargs: P.kwargs) -> R:
            epoch = breaker._closed_epoch
            if not epoch:
                if breaker._state is OPEN and not breaker._subscribers:  # as in execute
                    now = clock()
                    if now < breaker._open_until:
                        raise CircuitOpenError(breaker.name, OPEN, breaker._open_until - now)
                epoch = acquire()
            start = clock() if breaker._timed else None
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                record_error(epoch, exc, start)
                raise
            return result if epoch == breaker._quiet_epoch else returned(epoch, start, result)

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
        self._record(0, True)

    def record_failure(self) -> None:
        """Record a failure for a call the caller ran itself (no slot is involved)."""
        self._record(0, False)

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
        changes: StateChanges = []
        with self._lock:
            self._set_by_operator(new, self._clock(), changes)
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
            self._use(config)
            self._classify = None if config.default_classification else self._classify_error

    # -- listeners --------------------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(breaker, old, new)`` after every state transition.

        A listener taking two arguments is called as ``listener(old, new)``; one that
        takes neither form is refused with TypeError here. Listeners run outside the
        breaker's lock; one that raises is logged and never breaks the call that
        caused the transition.
        """
        check_callable("listener", listener)
        adapted = adapt_listener(listener)
        with self._lock:
            self._listeners = (*self._listeners, adapted)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x != listener)

    # -- the store seam (internal API for stores: see .store.StoredBreaker) ----------

    def adopt(self, shared: SharedState) -> StateChanges:
        """Take the fleet's state from a store; return the transitions to :meth:`announce`.

        Internal API for stores: call :meth:`announce` with the result outside any lock.
        """
        changes: StateChanges = []
        with self._lock:
            self._take(shared, self._clock(), changes)
        return changes

    def announce(self, changes: StateChanges) -> None:
        """Log and publish transitions returned by :meth:`adopt` (internal API for stores)."""
        self._notify(changes)

    @property
    def stored_state(self) -> CircuitState:
        """The state as last entered, without the lazy OPEN -> HALF_OPEN refresh that
        :attr:`state` makes (internal API for stores, which must not cause transitions).
        """
        return self._state

    # -- admission ------------------------------------------------------------------

    def _acquire(self) -> int:
        """Slow admission path: anything but a free state, taking a half-open slot if needed."""
        now = self._clock()
        if self._state is OPEN and now < self._open_until:  # the rejection, raised right here
            if self._subscribers:
                raise self._rejection(OPEN, self._open_until - now, "circuit_open")
            raise CircuitOpenError(self.name, OPEN, self._open_until - now)
        changes: StateChanges = []
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

    def _refuse(self, state: CircuitState, now: float) -> NoReturn:
        """Raise the rejection for a call refused in ``state``."""
        if state is OPEN:
            raise self._rejection(OPEN, max(0.0, self._open_until - now), "circuit_open")
        if state is HALF_OPEN:
            raise self._rejection(HALF_OPEN, 0.0, "half_open_full")
        raise self._rejection(state, math.inf, "forced_open")

    def _rejection(self, state: CircuitState, retry_after: float, reason: str) -> CircuitOpenError:
        """The error for a refused call (announced to subscribers)."""
        if self._subscribers:
            publish(self._subscribers, CallRejected(self.name, reason, by_breaker=True))
        return CircuitOpenError(self.name, state, retry_after)

    # -- outcomes -------------------------------------------------------------------

    def _record_error(self, epoch: int, exc: BaseException, start: float | None) -> None:
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

    def _returned(self, epoch: int, start: float | None, result: R) -> R:
        """An admitted call returned ``result`` (timed from ``start``): judge it, record it
        if that changes anything (a success that changes nothing takes no lock), return it.
        """
        failed = slow = False
        if start is not None:
            predicate = self.config.result_predicate
            if predicate is not None and result is not _NO_RESULT:
                try:
                    failed = bool(predicate(result))
                except Exception:
                    logger.exception("result_predicate of circuit %s raised", self.name)
            slow = self._is_slow(start)
        if failed or slow or epoch != self._closed_epoch or self._must_record:
            self._record(epoch, not failed, slow)
        return result

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
        """Record an outcome of a call admitted under ``epoch`` (stale epochs are ignored;
        ``epoch`` 0: a call the caller ran itself, which held no slot)."""
        link = self._link
        changes: StateChanges = []
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
                shared = (
                    link is not None and (state is CLOSED or state is HALF_OPEN) and link.online
                )
                self._apply(state, success, slow, now, changes, decide=not shared)
        if changes:
            self._notify(changes)
        if self._shadow_event is not None:
            self._announce_shadow()
        if link is None:
            return
        if not shared:
            if epoch:
                link.release(epoch)
            return
        if link.record(epoch, state, success, slow):
            return
        # The store could not take it: judge the outcome on the local counts.
        changes = []
        with self._lock:
            if self._state is state and (not epoch or epoch == self._epoch):
                self._judge(state, success, slow, self._clock(), changes)
        if changes:
            self._notify(changes)

    # -- announcing -----------------------------------------------------------------

    def _notify(self, changes: StateChanges) -> None:
        """Log and announce transitions. Runs outside the lock."""
        if changes:
            announce(self, self._listeners, self._subscribers, changes)

    def _announce_shadow(self) -> None:
        """Log and publish a METRICS_ONLY crossing noted under the lock."""
        with self._lock:
            event, self._shadow_event = self._shadow_event, None
        if event is not None:
            announce_crossing(self._subscribers, event)


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
        breaker, epoch = self._breaker, self._epoch
        if exc is not None:
            breaker._record_error(epoch, exc, self._start)
        elif epoch != breaker._quiet_epoch:
            breaker._returned(epoch, self._start, _NO_RESULT)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)
