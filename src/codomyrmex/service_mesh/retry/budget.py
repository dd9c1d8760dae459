"""Retry budgets: a cap on retries shared by every call through one policy or proxy.

Without a budget, a dependency that fails everything receives ``max_retries + 1``
times the normal load exactly when it can least take it. A budget lets retries
through while they are a small part of the traffic and refuses them otherwise;
a refused retry ends the call with its last real failure.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from .._validate import check_callable, check_int, check_number

__all__ = ["PercentageRetryBudget", "RetryBudget", "TokenBucketRetryBudget"]


class RetryBudget:
    """What a retry loop tells a budget, and asks of it. Subclasses must be thread-safe."""

    __slots__ = ()

    def record_request(self) -> None:
        """A new call (its first attempt) started."""

    def record_outcome(self, success: bool) -> None:
        """An attempt ended in success or failure (a rejected result is a failure)."""

    def try_retry(self) -> bool:
        """Whether one more retry (or hedge) may start now.

        Asked after a failure was recorded, only when the policy would retry. A
        budget that counts retries counts this one when it answers True; one that
        charges failures (the token bucket) charges nothing here.
        """
        raise NotImplementedError


class TokenBucketRetryBudget(RetryBudget):
    """gRPC's retry throttling: failures cost a token, successes refund ``token_ratio``.

    Retries are allowed only while more than half of ``max_tokens`` remain. As in
    gRPC, ``0 < token_ratio <= 1`` and ``1 <= max_tokens <= 1000``.
    """

    __slots__ = ("_lock", "max_tokens", "token_ratio", "tokens")

    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        self.max_tokens = check_number("max_tokens", max_tokens, 1.0)
        if self.max_tokens > 1000.0:
            raise ValueError(f"max_tokens must be <= 1000, got {max_tokens!r}")
        self.token_ratio = check_number("token_ratio", token_ratio, 0.0)
        if not 0.0 < self.token_ratio <= 1.0:
            raise ValueError(f"token_ratio must be in (0, 1], got {token_ratio!r}")
        self.tokens = self.max_tokens
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenBucketRetryBudget(tokens={self.tokens:g}/{self.max_tokens:g})"

    def record_outcome(self, success: bool) -> None:
        with self._lock:
            if success:
                self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)
            else:
                self.tokens = max(0.0, self.tokens - 1.0)

    def try_retry(self) -> bool:
        """True while more than half the tokens remain; spends none (failures do)."""
        return self.tokens > self.max_tokens / 2


class PercentageRetryBudget(RetryBudget):
    """Finagle's and Envoy's budget: retries may be ``percent`` of the requests of the last
    ``window_seconds``, plus ``min_retries_per_second`` so that low traffic can still retry.
    """

    __slots__ = (
        *("_buckets", "_clock", "_last_second", "_lock", "_pending", "retries"),  # the window
        *("min_retries_per_second", "percent", "window_seconds"),  # the settings
    )

    def __init__(
        self,
        percent: float = 20.0,
        min_retries_per_second: float = 10.0,
        window_seconds: int = 10,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.percent = check_number("percent", percent, 0.0)
        self.min_retries_per_second = check_number(
            "min_retries_per_second", min_retries_per_second, 0.0
        )
        self.window_seconds = check_int("window_seconds", window_seconds, 1)
        self._clock = check_callable("clock", clock)
        self._lock = threading.Lock()
        # Per second of the window: [requests, retries].
        self._buckets = [[0, 0] for _ in range(self.window_seconds)]
        self._last_second = -math.inf
        self._pending = 0  # requests counted since the last _advance
        self.retries = 0

    def __repr__(self) -> str:
        return (
            f"PercentageRetryBudget(percent={self.percent:g}, requests={self.requests}, "
            f"retries={self.retries})"
        )

    def _advance(self) -> list[int]:
        """Expire whole seconds that left the window, file the requests counted since the
        last advance, and return the current second's bucket (lock held).

        Requests are counted without the clock (see :meth:`record_request`); here they
        are spread evenly over the seconds since the last advance, and the share older
        than the window is dropped: a uniform estimate, exact while traffic is steady.
        """
        second = math.floor(self._clock())
        size = self.window_seconds
        pending = self._pending
        if pending:
            self._pending -= pending  # a concurrent add lost here only makes it stricter
        last = self._last_second
        span = 1
        if second > last:
            if second - last >= size:
                for bucket in self._buckets:
                    bucket[0] = bucket[1] = 0
                self.retries = 0
            else:
                for s in range(int(last) + 1, second + 1):
                    bucket = self._buckets[s % size]
                    self.retries -= bucket[1]
                    bucket[0] = bucket[1] = 0
            if last != -math.inf and pending:
                gap = second - int(last)
                span = min(gap, size)
                pending = pending * span // gap  # the share that falls inside the window
            self._last_second = second
        current = self._buckets[second % size]
        if pending:
            share, rest = divmod(pending, span)
            for back in range(1, span):
                self._buckets[(second - back) % size][0] += share
            current[0] += share + rest
        return current

    def record_request(self) -> None:
        # No clock and no lock on the success path: the count is filed into the window
        # by the next _advance. Two threads adding at once can lose one count, which only
        # makes the budget stricter, never looser.
        self._pending += 1

    @property
    def requests(self) -> int:
        """Calls started in the window that ends now."""
        with self._lock:
            self._advance()
            return self._requests()

    def _requests(self) -> int:
        """Requests in the window (lock held, window advanced)."""
        return sum(bucket[0] for bucket in self._buckets)

    def try_retry(self) -> bool:
        with self._lock:
            bucket = self._advance()
            allowed = (
                self._requests() * self.percent / 100.0
                + self.min_retries_per_second * self.window_seconds
            )
            if self.retries + 1 > allowed:
                return False
            bucket[1] += 1
            self.retries += 1
            return True
