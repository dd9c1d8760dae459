"""What a circuit breaker is configured with: a frozen, validated :class:`CircuitBreakerConfig`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .._validate import check_callable, check_int, check_number

__all__ = ["DEFAULT_FAILURE_RATE", "CircuitBreakerConfig"]

DEFAULT_FAILURE_RATE = 50.0
"""The failure percentage of a windowed breaker configured for slow calls only."""


def _check_percentage(field: str, value: Any) -> None:
    if not 0.0 < check_number(field, value, 0.0) <= 100.0:
        raise ValueError(f"{field} must be in (0, 100], got {value!r}")


def _check_types(field: str, value: Any) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise TypeError(f"{field} must be a tuple of exception types, got {value!r}")


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
            _check_percentage("failure_rate_threshold", self.failure_rate_threshold)
        if self.sliding_window_type not in ("count", "time"):
            raise ValueError(
                f"sliding_window_type must be 'count' or 'time', got {self.sliding_window_type!r}"
            )
        check_int("sliding_window_size", self.sliding_window_size, 1)
        check_int("minimum_number_of_calls", self.minimum_number_of_calls, 1)
        if self.slow_call_duration_threshold is not None:
            check_number("slow_call_duration_threshold", self.slow_call_duration_threshold, 0.0)
        _check_percentage("slow_call_rate_threshold", self.slow_call_rate_threshold)
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

    @property
    def inspects_calls(self) -> bool:
        """Whether each call must be timed or its result looked at (slow calls, results)."""
        return self.slow_call_duration_threshold is not None or self.result_predicate is not None
