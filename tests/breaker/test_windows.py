"""Sliding windows of call outcomes: totals against a brute-force recount, and O(1) cost.

A window keeps running totals; these tests recount the same calls from a plain
list after every step, so a total that drifts by one anywhere shows up.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import codomyrmex.service_mesh.breaker.windows as windows_module
from codomyrmex.service_mesh.breaker.windows import CountWindow, OutcomeWindow, TimeWindow

Call = tuple[float, bool, bool]  # (ended at, failed, slow)

outcomes = st.tuples(st.booleans(), st.booleans())


def totals(window: OutcomeWindow) -> tuple[int, int, int]:
    return window.calls, window.failures, window.slow


def recount(calls: list[Call]) -> tuple[int, int, int]:
    return len(calls), sum(c[1] for c in calls), sum(c[2] for c in calls)


# -- count window ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 8), steps=st.lists(outcomes, max_size=40))
def test_count_window_holds_exactly_the_last_size_calls(
    size: int, steps: list[tuple[bool, bool]]
) -> None:
    window = CountWindow(size)
    seen: list[Call] = []
    for i, (failed, slow) in enumerate(steps):
        window.record(float(i), failed, slow)
        seen.append((float(i), failed, slow))
        assert totals(window) == recount(seen[-size:])


def test_count_window_forgets_the_oldest_call_first() -> None:
    window = CountWindow(3)
    window.record(0.0, True, True)
    window.record(1.0, False, False)
    window.record(2.0, False, False)
    assert totals(window) == (3, 1, 1)
    window.record(3.0, False, False)  # pushes out the failed, slow call
    assert totals(window) == (3, 0, 0)


def test_count_window_ignores_time() -> None:
    window = CountWindow(2)
    window.record(0.0, True, False)
    window.expire(1e9)
    assert totals(window) == (1, 1, 0)


def test_count_window_reset_forgets_everything_and_refills_from_empty() -> None:
    window = CountWindow(3)
    for _ in range(5):
        window.record(0.0, True, True)
    window.reset()
    assert totals(window) == (0, 0, 0)
    window.record(0.0, False, True)
    assert totals(window) == (1, 0, 1)
    assert window.slow_rate() == 100.0


# -- time window -----------------------------------------------------------------------


def in_time_window(calls: list[Call], now: float, size: int) -> list[Call]:
    """The calls of the last ``size`` whole seconds up to ``now`` (the current second included)."""
    current = math.floor(now)
    return [c for c in calls if current - size < math.floor(c[0]) <= current]


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 6),
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.7, 10.0]), outcomes), max_size=40
    ),
)
def test_time_window_holds_exactly_the_calls_of_the_last_size_seconds(
    size: int, steps: list[tuple[float, tuple[bool, bool]]]
) -> None:
    window = TimeWindow(size)
    seen: list[Call] = []
    now = 1000.0
    for advance, (failed, slow) in steps:
        now += advance
        window.expire(now)
        assert totals(window) == recount(in_time_window(seen, now, size))
        window.record(now, failed, slow)
        seen.append((now, failed, slow))
        assert totals(window) == recount(in_time_window(seen, now, size))


def test_time_window_drops_a_second_once_it_leaves_the_window() -> None:
    window = TimeWindow(10)
    window.record(100.2, True, False)
    window.record(105.9, False, True)
    window.expire(109.99)
    assert totals(window) == (2, 1, 1)
    window.expire(110.0)  # second 100 has left [101, 110]
    assert totals(window) == (1, 0, 1)
    window.expire(114.99)
    assert totals(window) == (1, 0, 1)
    window.expire(115.0)  # and second 105 has left [106, 115]
    assert totals(window) == (0, 0, 0)


def test_time_window_after_a_long_silence_is_empty_and_records_again() -> None:
    window = TimeWindow(5)
    for t in range(20):
        window.record(float(t), True, True)
    window.record(1e6, False, False)
    assert totals(window) == (1, 0, 0)


def test_time_window_expire_is_idempotent_within_one_second() -> None:
    window = TimeWindow(3)
    window.record(7.1, True, False)
    for t in (7.2, 7.5, 7.99, 7.99):
        window.expire(t)
        assert totals(window) == (1, 1, 0)


def test_time_window_reset() -> None:
    window = TimeWindow(4)
    window.record(1.0, True, True)
    window.record(2.0, True, False)
    window.reset()
    assert totals(window) == (0, 0, 0)
    window.record(2.5, False, False)
    window.expire(3.0)
    assert totals(window) == (1, 0, 0)


# -- rates -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: CountWindow(4), lambda: TimeWindow(4)])
def test_rates_are_percentages_and_zero_when_empty(make: Callable[[], OutcomeWindow]) -> None:
    window = make()
    assert window.failure_rate() == 0.0
    assert window.slow_rate() == 0.0
    window.record(1.0, True, False)
    window.record(1.0, False, True)
    window.record(1.0, True, True)
    window.record(1.0, False, False)
    assert window.failure_rate() == 50.0
    assert window.slow_rate() == 50.0


# -- cost ------------------------------------------------------------------------------


def _lines_per_record(window: OutcomeWindow, seconds_per_call: float, n: int = 2_000) -> float:
    """Lines of windows.py executed per recorded call, time advancing by ``seconds_per_call``.

    Counting executed lines (a trace function) instead of timing makes the cost
    check deterministic: it does not depend on how busy the machine is.
    """
    rng = random.Random(7)
    flags = [(rng.random() < 0.5, rng.random() < 0.2) for _ in range(n)]
    source = windows_module.__file__
    lines = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        if frame.f_code.co_filename != source:
            return None
        if event == "line":
            lines += 1
        return tracer

    now = 0.0
    record = window.record
    record(now, False, False)  # the first call resets every bucket once: not a per-call cost
    sys.settrace(tracer)
    try:
        for failed, slow in flags:
            now += seconds_per_call
            record(now, failed, slow)
    finally:
        sys.settrace(None)
    return lines / n


@pytest.mark.parametrize(
    ("make", "seconds_per_call"),
    [(CountWindow, 0.0), (TimeWindow, 0.001), (TimeWindow, 1.0)],
    ids=["count", "time-many-calls-per-second", "time-one-call-per-second"],
)
def test_recording_cost_does_not_grow_with_the_window_size(
    make: Callable[[int], OutcomeWindow], seconds_per_call: float
) -> None:
    small = _lines_per_record(make(10), seconds_per_call)
    large = _lines_per_record(make(100_000), seconds_per_call)
    # O(size) per call would execute thousands of times more lines in the large window.
    assert large <= small * 1.01 + 0.5
