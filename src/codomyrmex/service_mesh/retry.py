"""Retry policy: exponential backoff with full jitter, for sync and async calls.

The decision "retry this failure, and after how long?" lives in one method,
``_next_delay``; the sync and async loops around it only run attempts and wait.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar, cast

from ._validate import check_callable, check_int, check_number, check_optional_number
from .errors import CircuitOpenError, NoHealthyInstanceError

__all__ = ["RetryOn", "RetryPolicy"]

P = ParamSpec("P")
R = TypeVar("R")

RetryOn = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool | float]
)
"""Exception types to retry, or a predicate ``exc -> bool`` (or a delay in seconds to wait)."""

_MESH_REJECTIONS = (CircuitOpenError, NoHealthyInstanceError)


class RetryPolicy:
    """Retry a failing call up to ``max_retries`` times with exponential backoff.

    The wait before retry ``n`` (``n = 0`` for the first retry) is
    ``min(max_delay, initial_delay * exponential_base ** n)``, drawn uniformly
    from ``[0, that]`` when ``jitter`` is on (full jitter). By default every
    ``Exception`` is retried except the mesh's own rejections, which are raised
    at once. When attempts run out the last exception is re-raised as is.

    ``attempt_timeout`` bounds each attempt of an async call; ``max_elapsed``
    bounds the whole call, counted from the first attempt: no attempt starts
    after it (sync calls in progress are never interrupted).
    """

    __slots__ = (
        "_cap_attempt",
        "_retryable",
        "_rng",
        "async_sleep",
        "attempt_timeout",
        "clock",
        "exponential_base",
        "initial_delay",
        "jitter",
        "max_delay",
        "max_elapsed",
        "max_retries",
        "retry_on",
        "sleep",
    )

    def __init__(
        self,
        max_retries: int = 3,
        initial_delay: float = 0.1,
        max_delay: float = 10.0,
        exponential_base: float = 2.0,
        jitter: bool = True,
        retry_on: RetryOn | None = None,
        *,
        sleep: Callable[[float], object] = time.sleep,
        async_sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        attempt_timeout: float | None = None,
        max_elapsed: float | None = None,
    ) -> None:
        self.max_retries = check_int("max_retries", max_retries, 0)
        self.initial_delay = check_number("initial_delay", initial_delay, 0.0)
        self.max_delay = check_number("max_delay", max_delay, 0.0)
        self.exponential_base = check_number("exponential_base", exponential_base, 1.0)
        if not isinstance(jitter, bool):
            raise TypeError(f"jitter must be a bool, got {jitter!r}")
        self.jitter = jitter
        self.retry_on = retry_on
        self._retryable = _retry_predicate(retry_on)
        self.sleep = check_callable("sleep", sleep)
        self.async_sleep = check_callable("async_sleep", async_sleep)
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        self._rng = rng if rng is not None else random.Random()
        self.clock = check_callable("clock", clock)
        if attempt_timeout is not None:
            check_number("attempt_timeout", attempt_timeout, 0.0)
            if attempt_timeout <= 0:
                raise ValueError(f"attempt_timeout must be > 0, got {attempt_timeout!r}")
        self.attempt_timeout = attempt_timeout
        self.max_elapsed = check_optional_number("max_elapsed", max_elapsed)
        self._cap_attempt = _cap_attempt(self.initial_delay, self.max_delay, self.exponential_base)

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_retries={self.max_retries}, initial_delay={self.initial_delay}, "
            f"max_delay={self.max_delay}, exponential_base={self.exponential_base}, "
            f"jitter={self.jitter})"
        )

    # -- delays -----------------------------------------------------------------

    def get_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = before the first retry)."""
        check_int("attempt", attempt, 0)
        if attempt >= self._cap_attempt:
            delay = self.max_delay
        else:
            delay = min(self.max_delay, self.initial_delay * self.exponential_base**attempt)
        if self.jitter and delay > 0.0:
            return self._rng.uniform(0.0, delay)
        return delay

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a failure this policy retries (attempts aside)."""
        return bool(self._retryable(exc))

    def _next_delay(self, exc: BaseException, attempt: int, started: float | None) -> float | None:
        """The wait before retry ``attempt`` after ``exc``, or None to give up.

        A ``retry_on`` verdict that is a number (not a bool) overrides the
        backoff delay, e.g. a server's ``Retry-After``; it is capped by ``max_delay``.
        """
        if attempt >= self.max_retries:
            return None
        verdict = self._retryable(exc)
        if verdict is True:
            delay = self.get_delay(attempt)
        elif not verdict or isinstance(verdict, bool):
            return None
        else:
            delay = min(self.max_delay, max(0.0, float(verdict)))
        if (
            started is not None
            and self.max_elapsed is not None
            and self.clock() + delay - started >= self.max_elapsed
        ):
            return None
        return delay

    def _remaining(self, started: float, timeout: float | None) -> float:
        """The time an async attempt may take under the overall deadline."""
        assert self.max_elapsed is not None
        remaining = self.max_elapsed - (self.clock() - started)
        if remaining <= 0.0:
            raise TimeoutError(f"retry deadline of {self.max_elapsed}s passed")
        return remaining if timeout is None else min(timeout, remaining)

    # -- running calls ----------------------------------------------------------

    def execute(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)``, retrying failures; return its first result."""
        started = None if self.max_elapsed is None else self.clock()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            failure = exc
        return self._retry(failure, started, fn, *args, **kwargs)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` retried by this policy: the decorators' sync wrapper, kept flat for speed."""
        retry = self._retry
        clock = self.clock

        @functools.wraps(fn)
        def call_with_retry(*args: P.args, **kwargs: P.kwargs) -> R:
            started = None if self.max_elapsed is None else clock()
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                return retry(exc, started, fn, *args, **kwargs)

        return call_with_retry

    def _retry(
        self,
        failure: Exception,
        started: float | None,
        fn: Callable[P, R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """The retries after a first failed attempt; raises the last failure when done."""
        attempt = 0
        while True:
            delay = self._next_delay(failure, attempt, started)
            if delay is None:
                raise failure
            if delay > 0.0:
                self.sleep(delay)
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                failure = exc

    async def execute_async(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)``, retrying failures: the async twin of :meth:`execute`.

        Cancellation is never retried and propagates at once, also from the wait.
        """
        started = None if self.max_elapsed is None else self.clock()
        attempt = 0
        while True:
            timeout = self.attempt_timeout
            try:
                if started is not None:
                    timeout = self._remaining(started, timeout)
                if timeout is None:
                    return await fn(*args, **kwargs)
                return await asyncio.wait_for(_aw(fn(*args, **kwargs)), timeout)
            except Exception as exc:
                failure = exc
            delay = self._next_delay(failure, attempt, started)
            if delay is None:
                raise failure
            if delay > 0.0:
                await self.async_sleep(delay)
            attempt += 1


def _retry_predicate(retry_on: RetryOn | None) -> Callable[[BaseException], bool | float]:
    """Turn ``retry_on`` into a predicate, validating it."""
    if retry_on is None:
        return _default_retryable
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        types: tuple[type[BaseException], ...] = (retry_on,)
    elif isinstance(retry_on, tuple):
        if not retry_on or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError(f"retry_on must hold exception types, got {retry_on!r}")
        types = retry_on
    elif callable(retry_on):
        return cast(Callable[[BaseException], bool | float], retry_on)
    else:
        raise TypeError(f"retry_on must be exception types or a predicate, got {retry_on!r}")

    def is_retryable(exc: BaseException) -> bool:
        return isinstance(exc, types)

    return is_retryable


def _default_retryable(exc: BaseException) -> bool | float:
    """Every ``Exception`` but the mesh's rejections; a failure's ``retry_after`` is honoured."""
    if not isinstance(exc, Exception) or isinstance(exc, _MESH_REJECTIONS):
        return False
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
        return float(retry_after)
    return True


def _cap_attempt(initial: float, cap: float, base: float) -> float:
    """The first attempt number whose backoff reaches ``cap`` (inf if it never does)."""
    if initial >= cap:
        return 0
    if initial <= 0.0 or base <= 1.0:
        return math.inf
    return max(0, math.ceil(math.log(cap / initial, base)))


async def _aw(aw: Awaitable[R]) -> R:
    """Wrap any awaitable in a coroutine (``wait_for`` wants a coroutine or future)."""
    return await aw
