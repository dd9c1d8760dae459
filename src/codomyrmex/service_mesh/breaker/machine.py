"""The breaker's state machine: counts outcomes, makes transitions, takes the fleet's state.

:class:`BreakerMachine` holds a breaker's state and counts, and changes them in
methods that the caller runs under its lock: no locking, logging, listeners or
store calls happen here, and time arrives as ``now``. Each transition is checked
against :data:`.state.TRANSITIONS`, starts a new *epoch* and is appended to the
caller's ``changes`` list, which :class:`.breaker.CircuitBreaker` announces once it
has let go of the lock.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from ..events import ThresholdCrossed
from .config import CircuitBreakerConfig
from .state import CLOSED, DISABLED, FORCED_OPEN, HALF_OPEN, METRICS_ONLY, OPEN, TRANSITIONS
from .windows import CountWindow, OutcomeWindow, TimeWindow

if TYPE_CHECKING:
    from .state import CircuitState, StateChanges
    from .store import SharedState

__all__ = ["BreakerMachine"]


def _window_for(config: CircuitBreakerConfig) -> OutcomeWindow | None:
    """A new, empty window of the kind ``config`` asks for (None in consecutive mode)."""
    if not config.windowed:
        return None
    size = config.sliding_window_size
    return CountWindow(size) if config.sliding_window_type == "count" else TimeWindow(size)


class BreakerMachine:
    """A breaker's state and counts, and the transitions between states. Caller holds the lock.

    While calls need no probe slot (CLOSED, DISABLED, METRICS_ONLY) ``_closed_epoch`` is
    the current epoch, the token a call is admitted with without any lock; otherwise it
    is 0. ``_must_record`` says whether a success on that lock-free path must still be
    recorded (failures are counted, a window is fed, or METRICS_ONLY watches), and
    ``_timed`` whether calls are timed or their results judged. ``_quiet_epoch`` is
    ``_closed_epoch`` when neither is so, else 0: a call admitted under it that returns
    needs nothing more, which the fast path tells with one comparison.
    """

    __slots__ = (
        "_closed_epoch",
        "_epoch",
        "_failures",
        "_in_flight",
        "_last_failure_at",
        "_last_failure_wall",
        "_must_record",
        "_open_until",
        "_opened_at",
        "_probe_ended",
        "_probe_failures",
        "_probe_slow",
        "_probe_successes",
        "_quiet_epoch",
        "_reopen_count",
        "_shadow",
        "_shadow_event",
        "_state",
        "_timed",
        "_window",
        "config",
        "name",
    )

    def __init__(self, name: str, config: CircuitBreakerConfig) -> None:
        self._new_epoch_counts()
        self.name = name
        self.config = config
        self._state = CLOSED
        self._epoch = self._closed_epoch = 1
        self._failures = self._reopen_count = 0
        self._shadow_event: ThresholdCrossed | None = None  # to announce, outside the lock
        self._opened_at = self._open_until = 0.0
        self._last_failure_at: float | None = None
        # (clock reading, wall-clock seconds) of the last failure, stamped when it happens.
        self._last_failure_wall: tuple[float, float] | None = None
        self._window = _window_for(config)
        self._timed = config.inspects_calls
        self._set_must_record(self._window is not None)

    # -- outcomes ---------------------------------------------------------------

    def _apply(
        self,
        state: CircuitState,
        success: bool,
        slow: bool,
        now: float,
        changes: StateChanges,
        decide: bool = True,
    ) -> None:
        """Apply one outcome observed in ``state``.

        ``decide=False`` counts the outcome but leaves transitions to the fleet (:meth:`_judge`).
        """
        if not success and state is not DISABLED:
            self._last_failure_at = now
            self._last_failure_wall = (now, time.time())
        if state is DISABLED or state is OPEN or state is FORCED_OPEN:
            return  # a failure reported while OPEN neither counts nor extends the open period
        if state is HALF_OPEN:
            if not decide:
                return
            if self.config.half_open_judged_by_rate:
                self._judge_probes(not success, slow, now, changes)
            elif success and not slow:
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
        elif success:
            self._failures = 0
            self._set_must_record(False)  # METRICS_ONLY too: a success after one changes nothing
        else:
            self._failures += 1
            self._set_must_record(True)
        if state is METRICS_ONLY:
            self._watch_shadow()
        elif decide and self._tripped():
            self._enter(OPEN, now, changes)

    def _judge(
        self, state: CircuitState, success: bool, slow: bool, now: float, changes: StateChanges
    ) -> None:
        """Make the decision ``_apply(..., decide=False)`` left to a store that then failed."""
        if state is HALF_OPEN:
            self._apply(state, success, slow, now, changes)
        elif self._tripped():
            self._enter(OPEN, now, changes)

    def _tripped(self) -> bool:
        """Whether the counts (CLOSED) call for opening the circuit."""
        config = self.config
        window = self._window
        if window is None:
            return self._failures >= config.failure_threshold
        return window.calls >= config.minimum_calls and self._rates_tripped(
            window.failure_rate(), window.slow_rate()
        )

    def _rates_tripped(self, failure_rate: float, slow_rate: float) -> bool:
        """Whether these failure and slow-call percentages open the circuit."""
        config = self.config
        return failure_rate >= config.window_failure_rate or (
            config.slow_call_duration_threshold is not None
            and slow_rate >= config.slow_call_rate_threshold
        )

    def _judge_probes(self, failed: bool, slow: bool, now: float, changes: StateChanges) -> None:
        """HALF_OPEN judged by rate: count a probe; once all have ended, decide."""
        self._probe_ended += 1
        self._probe_failures += failed
        self._probe_slow += slow
        ended = self._probe_ended
        if ended < self.config.half_open_max_calls:
            return
        failure_rate = 100.0 * self._probe_failures / ended
        if self._rates_tripped(failure_rate, 100.0 * self._probe_slow / ended):
            self._reopen_count += 1
            self._enter(OPEN, now, changes)
        else:
            self._enter(CLOSED, now, changes)

    def _watch_shadow(self) -> None:
        """METRICS_ONLY: note a crossing of the opening threshold, to announce after the lock."""
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
                    self.name, "slow_call_rate", window.slow_rate(), config.slow_call_rate_threshold
                )
        if crossing is None:
            self._shadow = False
        elif not self._shadow:
            self._shadow = True
            self._shadow_event = crossing

    # -- transitions --------------------------------------------------------------

    def _refresh(self, now: float, changes: StateChanges) -> None:
        """Make the lazy OPEN -> HALF_OPEN transition if its time has come."""
        if self._state is OPEN and now >= self._open_until:
            self._enter(HALF_OPEN, now, changes)

    def _enter(
        self, new: CircuitState, now: float, changes: StateChanges, adopted: bool = False
    ) -> None:
        """Move to ``new``, starting a new epoch (``adopted``: the fleet's state, any jump)."""
        old = self._state
        if new is not old and new not in TRANSITIONS[old] and not adopted:
            raise AssertionError(f"illegal circuit transition {old.value} -> {new.value}")
        self._closed_epoch = 0
        self._epoch += 1
        self._new_epoch_counts()
        if new is OPEN:
            self._opened_at = now
            self._open_until = now + self._open_seconds()
        elif new is CLOSED:
            self._failures = 0
            self._reopen_count = 0
            if self._window is not None:
                self._window.reset()
        self._state = new
        if new is CLOSED or new is DISABLED or new is METRICS_ONLY:
            self._closed_epoch = self._epoch
        self._set_must_record(self._wants_record())
        if old is not new:
            changes.append((old, new))

    def _new_epoch_counts(self) -> None:
        """Zero what is counted per epoch: probes in flight and ended, and the shadow flag."""
        self._in_flight = self._probe_successes = 0
        self._probe_ended = self._probe_failures = self._probe_slow = 0
        self._shadow = False  # METRICS_ONLY: past the opening threshold now

    def _set_by_operator(self, new: CircuitState, now: float, changes: StateChanges) -> None:
        """An operator's move to ``new``: the counts start from nothing."""
        self._enter(new, now, changes)
        self._failures = 0
        self._reopen_count = 0
        if self._window is not None:
            self._window.reset()
        self._set_must_record(self._wants_record())

    def _take(self, shared: SharedState, now: float, changes: StateChanges) -> None:
        """Take the fleet's state from a store."""
        new = shared.state
        self._reopen_count = shared.reopens
        if new is not self._state:
            self._enter(new, now, changes, adopted=True)
        if new is OPEN:
            self._open_until = now + shared.retry_after
        if self._window is None and (new is CLOSED or shared.failures):
            # the fleet's count (kept while OPEN, as a breaker that opened itself keeps its own)
            self._failures = shared.failures
            self._set_must_record(self._wants_record())
        age = shared.last_failure_age
        if age is not None:
            at = now - age
            if self._last_failure_at is None or at > self._last_failure_at:
                self._last_failure_at = at

    def _use(self, config: CircuitBreakerConfig) -> None:
        """Switch to ``config``, keeping the window while its type and size stay the same."""
        old = self.config
        if (
            old.windowed != config.windowed
            or old.sliding_window_type != config.sliding_window_type
            or old.sliding_window_size != config.sliding_window_size
        ):
            self._window = _window_for(config)
        self.config = config
        self._timed = config.inspects_calls
        self._set_must_record(self._wants_record())

    def _open_seconds(self) -> float:
        """How long the next OPEN period lasts (grown by re-opens, capped)."""
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

    def _set_must_record(self, must: bool) -> None:
        self._must_record = must
        self._quiet_epoch = 0 if must or self._timed else self._closed_epoch

    def _wants_record(self) -> bool:
        state = self._state
        if state is DISABLED:
            return False
        return self._window is not None or self._failures > 0 or state is METRICS_ONLY
