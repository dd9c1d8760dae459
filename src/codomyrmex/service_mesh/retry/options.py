"""Retry options: :class:`RetryPolicy`, validated and frozen, and its sync and async drivers.

The decisions (retry or not, how long to wait, when to give up) are the
policy's :class:`~.engine.RetryEngine`'s; the drivers here only run attempts and
sleep, and the service proxy drives the same engine.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from .._validate import check_callable, check_int, check_number, check_optional_number
from ..events import EventListener, add_listener, remove_listener
from ..timers import Timer
from .backoff import JITTER_MODES, RetryOn, retry_predicate
from .budget import RetryBudget
from .engine import IN_RETRY, Attempts, RetryEngine

__all__ = ["RetryPolicy"]

P = ParamSpec("P")
R = TypeVar("R")


class RetryPolicy:
    """Retry a failing call up to ``max_retries`` times with exponential backoff.

    The wait before retry ``n`` (``n = 0`` for the first retry) is
    ``min(max_delay, initial_delay * exponential_base ** n)``, drawn uniformly
    from ``[0, that]`` with the default full jitter (``jitter`` may also be
    ``"none"``/False, ``"equal"`` or ``"decorrelated"``). By default every
    ``Exception`` is retried except the mesh's own rejections (a
    :class:`ServiceMeshError` whose ``retryable`` is False: an open circuit, no
    instance, a full bulkhead), which are raised at once. A ``retry_on``
    predicate's answer is judged by its truthiness, or is a :class:`RetryAfter`.
    When attempts run out the last exception is re-raised as is (or, for a result
    rejected by ``retry_on_result``, the last result is returned).

    ``attempt_timeout`` bounds each attempt of an async call (timed by ``timer``);
    ``max_elapsed`` (> 0) bounds the whole call, counted from the first attempt:
    no attempt starts after it (sync calls in progress are never interrupted). A
    ``budget`` caps retries across all calls sharing the policy. Inside a call that is being
    retried (from its first failure on), a policy makes one attempt only, unless
    ``nested=True``: nested retries add up instead of multiplying.
    """

    __slots__ = (
        "_frozen",
        "_rng",
        "_simple",
        "async_sleep",
        "attempt_timeout",
        "budget",
        "clock",
        "engine",
        "exponential_base",
        "initial_delay",
        "jitter",
        "jitter_mode",
        "max_delay",
        "max_elapsed",
        "max_retries",
        "name",
        "nested",
        "retry_on",
        "retry_on_result",
        "sleep",
        "timer",
    )

    def __init__(
        self,
        max_retries: int = 3,
        initial_delay: float = 0.1,
        max_delay: float = 10.0,
        exponential_base: float = 2.0,
        jitter: bool | str = True,
        retry_on: RetryOn | None = None,
        *,
        retry_on_result: Callable[[Any], bool] | None = None,
        sleep: Callable[[float], object] = time.sleep,
        async_sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        attempt_timeout: float | None = None,
        max_elapsed: float | None = None,
        budget: RetryBudget | None = None,
        nested: bool = False,
        name: str = "",
        timer: Timer | None = None,
    ) -> None:
        self.max_retries = check_int("max_retries", max_retries, 0)
        self.initial_delay = check_number("initial_delay", initial_delay, 0.0)
        self.max_delay = check_number("max_delay", max_delay, 0.0)
        self.exponential_base = check_number("exponential_base", exponential_base, 1.0)
        if isinstance(jitter, bool):
            mode = "full" if jitter else "none"
        elif isinstance(jitter, str) and jitter in JITTER_MODES:
            mode = jitter
        else:
            raise ValueError(f"jitter must be a bool or one of {JITTER_MODES}, got {jitter!r}")
        self.jitter = jitter
        self.jitter_mode = mode
        self.retry_on = retry_on
        retryable = retry_predicate(retry_on)
        if retry_on_result is not None:
            check_callable("retry_on_result", retry_on_result)
        self.retry_on_result = retry_on_result
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
        if max_elapsed is not None and max_elapsed <= 0:
            raise ValueError(f"max_elapsed must be > 0, got {max_elapsed!r}")
        if timer is not None and not isinstance(timer, Timer):
            raise TypeError(f"timer must be a Timer, got {timer!r}")
        self.timer = timer if timer is not None else Timer()
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget, got {budget!r}")
        self.budget = budget
        if not isinstance(nested, bool):
            raise TypeError(f"nested must be a bool, got {nested!r}")
        self.nested = nested
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        self.name = name
        self.engine = RetryEngine(self, mode, self._rng, retryable)
        """Internal API: the policy's decisions, driven by the policy and the proxy."""
        self._simple = self.engine.simple
        self._frozen = True

    def replace(self, **changes: Any) -> RetryPolicy:
        """A new policy with this one's settings (its sleep, clock, rng, timer and budget
        objects included) except ``changes``, validated as the constructor validates."""
        settings: dict[str, Any] = {
            "max_retries": self.max_retries,
            "initial_delay": self.initial_delay,
            "max_delay": self.max_delay,
            "exponential_base": self.exponential_base,
            "jitter": self.jitter,
            "retry_on": self.retry_on,
            "retry_on_result": self.retry_on_result,
            "sleep": self.sleep,
            "async_sleep": self.async_sleep,
            "rng": self._rng,
            "clock": self.clock,
            "attempt_timeout": self.attempt_timeout,
            "max_elapsed": self.max_elapsed,
            "budget": self.budget,
            "nested": self.nested,
            "name": self.name,
            "timer": self.timer,
        }
        unknown = set(changes) - set(settings)
        if unknown:
            raise TypeError(f"replace() got unknown settings: {sorted(unknown)}")
        settings.update(changes)
        return RetryPolicy(**settings)

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"RetryPolicy is immutable; cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_retries={self.max_retries}, initial_delay={self.initial_delay}, "
            f"max_delay={self.max_delay}, exponential_base={self.exponential_base}, "
            f"jitter={self.jitter!r})"
        )

    def subscribe(self, listener: EventListener) -> None:
        """Deliver this policy's :class:`RetryScheduled` and :class:`RetryGaveUp` events."""
        self.engine.subscribers = add_listener(self.engine.subscribers, listener)

    def unsubscribe(self, listener: EventListener) -> None:
        """Stop delivering events to ``listener``."""
        self.engine.subscribers = remove_listener(self.engine.subscribers, listener)

    @property
    def _subscribers(self) -> tuple[EventListener, ...]:
        return self.engine.subscribers

    # -- delays -----------------------------------------------------------------

    def get_delay(self, attempt: int, previous: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = before the first retry).

        ``previous`` is the last wait, used by decorrelated jitter (by default the
        un-jittered wait of the attempt before).
        """
        check_int("attempt", attempt, 0)
        return self.engine.delay(attempt, previous)

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a failure this policy retries (attempts aside)."""
        return self.engine.verdict(exc) is not None

    # -- running calls: the drivers ---------------------------------------------

    def execute(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)``, retrying failures; return its first accepted result."""
        if not self._simple:
            return self._call(fn, args, kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            failure = exc
        return self._retry(failure, None, None, fn, args, kwargs)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` retried by this policy: the decorators' sync wrapper, kept flat for speed."""
        if not self._simple:
            call = self._call

            @functools.wraps(fn)
            def call_with_budget(*args: P.args, **kwargs: P.kwargs) -> R:
                return call(fn, args, kwargs)

            return call_with_budget
        retry = self._retry

        @functools.wraps(fn)
        def call_with_retry(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                first = exc
            return retry(first, None, None, fn, args, kwargs)

        return call_with_retry

    def _call(self, fn: Callable[..., R], args: Any, kwargs: Any) -> R:
        """:meth:`execute` with a budget, a deadline or a result predicate."""
        engine = self.engine
        started = engine.start()
        result = None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            failure: Exception | None = exc
        else:
            if not engine.rejects(result):
                engine.succeeded()
                return result
            failure = None
        return self._retry(failure, result, started, fn, args, kwargs)

    def _retry(
        self,
        failure: Exception | None,
        result: Any,
        started: float | None,
        fn: Callable[..., R],
        args: Any,
        kwargs: Any,
    ) -> R:
        """The retries after a first failed attempt; raises the last failure when done."""
        engine = self.engine
        token = IN_RETRY.set(True)  # the nested-retry guard, from the first failure on
        try:
            calls = Attempts(started, token.old_value is True)
            while True:
                delay = engine.after_failure(calls, failure, self.name, engine.subscribers)
                if delay is None:
                    return engine.final(failure, result)  # type: ignore[no-any-return]
                if delay > 0.0:
                    self.sleep(delay)
                    if engine.past_deadline(calls):
                        return engine.final(failure, result)  # type: ignore[no-any-return]
                calls.count += 1
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    failure = exc
                    continue
                if not engine.rejects(result):
                    if engine.budget is not None:
                        engine.budget.record_outcome(True)
                    return result  # type: ignore[no-any-return]
                failure = None
        finally:
            IN_RETRY.reset(token)

    async def execute_async(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)``, retrying failures: the async driver of the engine.

        Cancellation is never retried and propagates at once, also from the wait.
        ``attempt_timeout`` (and ``max_elapsed``) bound each attempt.
        """
        engine = self.engine
        calls: Attempts | None = None
        started = engine.start()
        result: Any = None
        try:
            while True:
                timeout = self.attempt_timeout
                try:
                    if started is not None:
                        timeout = engine.remaining(started, timeout)
                    if timeout is None:
                        result = await fn(*args, **kwargs)
                    else:
                        result = await self.timer.wait_for(fn(*args, **kwargs), timeout)
                except Exception as exc:
                    failure: Exception | None = exc
                else:
                    if not engine.rejects(result):
                        if engine.budget is not None:
                            engine.budget.record_outcome(True)
                        return result  # type: ignore[no-any-return]
                    failure = None
                if calls is None:
                    calls = Attempts(started)
                    calls.guard()
                wait = engine.after_failure(calls, failure, self.name, engine.subscribers)
                if wait is not None and wait > 0.0:
                    await self.async_sleep(wait)
                    if engine.past_deadline(calls):
                        wait = None
                if wait is None:
                    return engine.final(failure, result)  # type: ignore[no-any-return]
                calls.count += 1
        finally:
            if calls is not None:
                calls.close()
