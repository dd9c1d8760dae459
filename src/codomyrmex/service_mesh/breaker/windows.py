"""Sliding windows of call outcomes, for failure-rate and slow-call-rate breakers.

Both windows record a call in O(1) (the time window amortised over elapsed
seconds) and keep running totals, so a rate is read without a scan. They are
not thread-safe on their own: the breaker updates them under its lock.
"""

from __future__ import annotations

import math

__all__ = ["CountWindow", "OutcomeWindow", "TimeWindow"]

_FAILED = 1
_SLOW = 2


class OutcomeWindow:
    """Running totals of the calls in a window: ``calls``, ``failures``, ``slow``."""

    __slots__ = ("calls", "failures", "slow")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Add one call that ended at ``now``."""
        raise NotImplementedError

    def expire(self, now: float) -> None:
        """Drop what has left the window by ``now`` (a no-op for count windows)."""

    def reset(self) -> None:
        """Forget every recorded call."""
        raise NotImplementedError

    def failure_rate(self) -> float:
        """Failures as a percentage of calls (0 with no calls)."""
        return 100.0 * self.failures / self.calls if self.calls else 0.0

    def slow_rate(self) -> float:
        """Slow calls as a percentage of calls (0 with no calls)."""
        return 100.0 * self.slow / self.calls if self.calls else 0.0


class CountWindow(OutcomeWindow):
    """The last ``size`` calls, in a ring buffer."""

    __slots__ = ("_codes", "_next", "size")

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._codes = bytearray(size)
        self._next = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        code = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        i = self._next
        if self.calls == self.size:
            old = self._codes[i]
            self.failures -= old & _FAILED
            self.slow -= (old & _SLOW) >> 1
        else:
            self.calls += 1
        self._codes[i] = code
        self.failures += code & _FAILED
        self.slow += (code & _SLOW) >> 1
        self._next = (i + 1) % self.size

    def reset(self) -> None:
        self.calls = self.failures = self.slow = 0
        self._next = 0


class TimeWindow(OutcomeWindow):
    """The calls of the last ``size`` seconds, in one-second buckets."""

    __slots__ = ("_calls", "_failures", "_last_second", "_slow", "size")

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._last_second = -math.inf

    def expire(self, now: float) -> None:
        second = math.floor(now)
        last = self._last_second
        if second <= last:
            return
        if second - last >= self.size:
            self.reset()
        else:
            for s in range(int(last) + 1, second + 1):
                i = s % self.size
                self.calls -= self._calls[i]
                self.failures -= self._failures[i]
                self.slow -= self._slow[i]
                self._calls[i] = self._failures[i] = self._slow[i] = 0
        self._last_second = second

    def record(self, now: float, failed: bool, slow: bool) -> None:
        self.expire(now)
        i = math.floor(now) % self.size
        self._calls[i] += 1
        self.calls += 1
        if failed:
            self._failures[i] += 1
            self.failures += 1
        if slow:
            self._slow[i] += 1
            self.slow += 1

    def reset(self) -> None:
        self.calls = self.failures = self.slow = 0
        for i in range(self.size):
            self._calls[i] = self._failures[i] = self._slow[i] = 0
