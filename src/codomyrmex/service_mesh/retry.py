"""Retry policy: exponential backoff with jitter, for sync and async calls.

The decision "retry after this failure, and after how long?" lives in one
method, :meth:`RetryPolicy._after_failure`, shared by the policy's own loops and
the service proxy's; the loops around it only run attempts and wait.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, ParamSpec, TypeVar

from ._validate import check_callable, check_int, check_number, check_optional_number
from .budget import RetryBudget
from .errors import ServiceMeshError
from .events import (
    CallRejected,
    EventListener,
    RetryGaveUp,
    RetryScheduled,
    add_listener,
    publish,
    remove_listener,
)
from .timers import Timer

__all__ = [
    "JITTER_MODES",
    "RetryAfter",
    "RetryOn",
    "RetryPolicy",
    "disable_retries",
    "set_testing",
]

P = ParamSpec("P")
R = TypeVar("R")


class RetryAfter:
    """What a ``retry_on`` predicate returns to retry after ``seconds`` instead of the backoff.

    ``RetryAfter(0)`` retries at once (``Retry-After: 0``); the wait is capped by
    ``max_delay`` and a negative one means now. Any other return value is judged by
    its truthiness: true retries with the policy's backoff, false raises at once.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, got {seconds!r}")
        if math.isnan(seconds):
            raise ValueError(f"seconds must not be NaN, got {seconds!r}")
        self.seconds = float(seconds)

    def __repr__(self) -> str:
        return f"RetryAfter({self.seconds:g})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryAfter) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(self.seconds)


RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], object]
"""Exception types to retry, or a predicate ``exc -> truthy`` (or a :class:`RetryAfter`)."""

JITTER_MODES = ("none", "full", "equal", "decorrelated")

logger = logging.getLogger("codomyrmex.service_mesh")


# The nested-retry guard: True while a call is being retried (from its first
# failure on). A policy that fails inside such a call makes no retries of its own,
# so nested retries add up instead of multiplying. Marking only the retry phase
# keeps the success path free of the contextvar's cost.
_IN_RETRY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "codomyrmex_service_mesh_in_retry", default=False
)


class _Testing:
    """The process-wide testing switches (see :func:`set_testing`)."""

    active = False
    attempts: int | None = None


class _Switch:
    """Applies a testing setting at once; as a context manager, restores the old one on exit."""

    def __init__(self, active: bool, attempts: int | None) -> None:
        self._previous = (_Testing.active, _Testing.attempts)
        _Testing.active, _Testing.attempts = active, attempts

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        _Testing.active, _Testing.attempts = self._previous


def set_testing(testing: bool = True, *, attempts: int | None = 1) -> _Switch:
    """In tests: make every backoff wait zero and cap every call at ``attempts`` attempts.

    Takes effect at once; used as ``with set_testing(...):`` it is undone on exit.
    ``attempts=None`` keeps each policy's own number of attempts.
    """
    if not isinstance(testing, bool):
        raise TypeError(f"testing must be a bool, got {testing!r}")
    if attempts is not None:
        check_int("attempts", attempts, 1)
    return _Switch(testing, attempts if testing else None)


def disable_retries() -> _Switch:
    """Turn retries off everywhere: every call makes exactly one attempt."""
    return _Switch(True, 1)


class _Attempts:
    """One call's retry state (created at its first failure, never shared)."""

    __slots__ = ("count", "nested", "previous", "started")

    def __init__(self, started: float | None, nested: bool) -> None:
        self.count = 1
        self.started = started
        self.previous = 0.0
        self.nested = nested


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
        "_cap_attempt",
        "_frozen",
        "_refund",
        "_retryable",
        "_rng",
        "_simple",
        "_subscribers",
        "async_sleep",
        "attempt_timeout",
        "budget",
        "clock",
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
        self._retryable = _retry_predicate(retry_on)
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
        self._subscribers: tuple[EventListener, ...] = ()
        self._cap_attempt = _cap_attempt(self.initial_delay, self.max_delay, self.exponential_base)
        # No budget, deadline or result predicate: the success path needs nothing else.
        self._simple = budget is None and max_elapsed is None and retry_on_result is None
        # Whether the budget wants to hear of successes (a token bucket refunds; a
        # percentage budget counts only requests and retries).
        self._refund = budget is not None and (
            type(budget).record_outcome is not RetryBudget.record_outcome
        )
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
        object.__setattr__(self, "_subscribers", add_listener(self._subscribers, listener))

    def unsubscribe(self, listener: EventListener) -> None:
        """Stop delivering events to ``listener``."""
        object.__setattr__(self, "_subscribers", remove_listener(self._subscribers, listener))

    # -- delays -----------------------------------------------------------------

    def get_delay(self, attempt: int, previous: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = before the first retry).

        ``previous`` is the last wait, used by decorrelated jitter (by default the
        un-jittered wait of the attempt before).
        """
        check_int("attempt", attempt, 0)
        return self._delay(attempt, previous)

    def _delay(self, attempt: int, previous: float | None) -> float:
        """:meth:`get_delay` without the argument check (the retry loops' own calls)."""
        delay = self._backoff(attempt)
        mode = self.jitter_mode
        if mode == "none" or delay <= 0.0:
            return delay
        if mode == "full":
            return self._rng.uniform(0.0, delay)
        if mode == "equal":
            return delay / 2 + self._rng.uniform(0.0, delay / 2)
        base = self.initial_delay
        if previous is None:
            previous = self._backoff(attempt - 1) if attempt else base
        return min(self.max_delay, self._rng.uniform(base, max(base, 3.0 * previous)))

    def _backoff(self, attempt: int) -> float:
        if attempt >= self._cap_attempt:
            return self.max_delay
        if self.initial_delay <= 0.0 or self.exponential_base <= 1.0:
            return min(self.max_delay, self.initial_delay)
        try:
            return min(self.max_delay, self.initial_delay * self.exponential_base**attempt)
        except OverflowError:  # a subnormal initial delay: the power alone overflows
            return self.max_delay

    def _past_deadline(self, calls: _Attempts) -> bool:
        """Whether the overall deadline has passed (checked after each wait)."""
        return (
            calls.started is not None
            and self.max_elapsed is not None
            and self.clock() - calls.started >= self.max_elapsed
        )

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a failure this policy retries (attempts aside)."""
        return self._verdict(exc) is not None

    def _verdict(self, exc: BaseException) -> RetryAfter | Literal[True] | None:
        """``retry_on``'s answer for ``exc``: True (back off), a RetryAfter, or None (stop).

        A predicate that raises is logged and ends the call with ``exc`` itself.
        """
        try:
            verdict = self._retryable(exc)
        except Exception:
            logger.exception("retry_on predicate raised; not retrying")
            return None
        if isinstance(verdict, RetryAfter):
            return verdict
        try:
            return True if verdict else None
        except Exception:  # a value whose truth cannot be told
            logger.exception("retry_on predicate returned %r; not retrying", type(verdict))
            return None

    def _max_attempts(self, attempts: int) -> int:
        """``attempts`` (a hedged call's) under the testing switches and the nested guard."""
        if _Testing.attempts is not None:
            attempts = min(attempts, _Testing.attempts)
        if not self.nested and _IN_RETRY.get():
            attempts = 1
        return attempts

    def _after_failure(
        self,
        calls: _Attempts,
        failure: BaseException | None,
        source: str,
        subscribers: tuple[EventListener, ...],
        instance: str | None = None,
        failover: bool = False,
    ) -> float | None:
        """Attempt ``calls.count`` failed (``failure`` None: its result was rejected).

        ``failover``: the next attempt goes to an instance not tried yet, so it starts
        at once (no backoff; the deadline is judged with no wait).

        Return the wait before the next attempt, or None to give up. Publishes
        :class:`RetryScheduled` / :class:`RetryGaveUp` (and :class:`CallRejected`
        when the budget refuses a retry) and logs, naming the failed ``instance``
        when a proxy made the attempt.
        """
        budget = self.budget
        if budget is not None:
            budget.record_outcome(False)
        delay = self._next_delay(failure, calls, failover)
        if delay is not None and budget is not None and not budget.try_retry():
            delay = None
            if subscribers:
                publish(subscribers, CallRejected(source, "retry_budget"))
        if delay is None:
            if subscribers:
                publish(subscribers, RetryGaveUp(source, calls.count, failure))
            if logger.isEnabledFor(logging.INFO) and calls.count > 1:
                logger.info(
                    "%s: giving up after %d attempts: %r",
                    source or "retry",
                    calls.count,
                    failure,
                    extra={"service": source, "instance": instance, "attempt": calls.count},
                )
            return None
        calls.previous = delay
        if subscribers:
            publish(subscribers, RetryScheduled(source, calls.count, delay, failure))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s: retry %d in %.3fs after %r",
                source or "retry",
                calls.count,
                delay,
                failure,
                extra={
                    "service": source,
                    "instance": instance,
                    "attempt": calls.count,
                    "delay": delay,
                },
            )
        return delay

    def _next_delay(
        self, failure: BaseException | None, calls: _Attempts, failover: bool = False
    ) -> float | None:
        """The wait before the next attempt, or None when this failure ends the call."""
        max_retries = self.max_retries
        if calls.nested and not self.nested:
            return None
        if _Testing.attempts is not None:
            max_retries = min(max_retries, _Testing.attempts - 1)
        if calls.count > max_retries:
            return None
        if failure is None:
            delay = self._delay(calls.count - 1, calls.previous or None)
        else:
            verdict = self._verdict(failure)
            if verdict is None:
                return None
            if verdict is True:
                delay = self._delay(calls.count - 1, calls.previous or None)
            else:  # a RetryAfter; 0 means at once (Retry-After: 0)
                delay = min(self.max_delay, max(0.0, verdict.seconds))
        if _Testing.active or failover:
            delay = 0.0
        started = calls.started
        if (
            started is not None
            and self.max_elapsed is not None
            and self.clock() + delay - started >= self.max_elapsed
        ):
            return None
        return delay

    @staticmethod
    def _final(failure: BaseException | None, result: Any) -> Any:
        """How a call that stops retrying ends: its last failure raised, or its last result."""
        if failure is None:
            return result
        raise failure

    def _rejects(self, result: object) -> bool:
        """Whether ``retry_on_result`` asks for another attempt after ``result``."""
        predicate = self.retry_on_result
        if predicate is None:
            return False
        try:
            return bool(predicate(result))
        except Exception:
            logger.exception("retry_on_result predicate raised; keeping the result")
            return False

    def _remaining(self, started: float, timeout: float | None) -> float:
        """The time an async attempt may take under the overall deadline."""
        assert self.max_elapsed is not None
        remaining = self.max_elapsed - (self.clock() - started)
        if remaining <= 0.0:
            raise TimeoutError(f"retry deadline of {self.max_elapsed}s passed")
        return remaining if timeout is None else min(timeout, remaining)

    def _start(self) -> float | None:
        """Begin a call: count it against the budget; return its start for the deadline."""
        if self.budget is not None:
            self.budget.record_request()
        return None if self.max_elapsed is None else self.clock()

    # -- running calls ----------------------------------------------------------

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
        policy = self

        @functools.wraps(fn)
        def call_with_retry(*args: P.args, **kwargs: P.kwargs) -> R:
            if not policy._simple:
                return policy._call(fn, args, kwargs)
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                failure = exc
            return policy._retry(failure, None, None, fn, args, kwargs)

        return call_with_retry

    def _call(self, fn: Callable[..., R], args: Any, kwargs: Any) -> R:
        """:meth:`execute` with a budget, a deadline or a result predicate."""
        started = self._start()
        result = None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            failure: Exception | None = exc
        else:
            if self.retry_on_result is None or not self._rejects(result):
                if self.budget is not None:
                    self.budget.record_outcome(True)
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
        token = _IN_RETRY.set(True)
        try:
            calls = _Attempts(started, token.old_value is True)
            while True:
                delay = self._after_failure(calls, failure, self.name, self._subscribers)
                if delay is None:
                    return self._final(failure, result)  # type: ignore[no-any-return]
                if delay > 0.0:
                    self.sleep(delay)
                    if self._past_deadline(calls):
                        return self._final(failure, result)  # type: ignore[no-any-return]
                calls.count += 1
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    failure = exc
                    continue
                if not self._rejects(result):
                    if self.budget is not None:
                        self.budget.record_outcome(True)
                    return result  # type: ignore[no-any-return]
                failure = None
        finally:
            _IN_RETRY.reset(token)

    async def execute_async(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)``, retrying failures: the async twin of :meth:`execute`.

        Cancellation is never retried and propagates at once, also from the wait.
        """
        token: contextvars.Token[bool] | None = None
        try:
            started = self._start()
            calls: _Attempts | None = None
            result: Any = None
            while True:
                try:
                    timeout = self.attempt_timeout
                    if started is not None:
                        timeout = self._remaining(started, timeout)
                    if timeout is None:
                        result = await fn(*args, **kwargs)
                    else:
                        result = await self.timer.wait_for(fn(*args, **kwargs), timeout)
                except Exception as exc:
                    failure: Exception | None = exc
                else:
                    if not self._rejects(result):
                        if self.budget is not None:
                            self.budget.record_outcome(True)
                        return result  # type: ignore[no-any-return]
                    failure = None
                if calls is None:
                    token = _IN_RETRY.set(True)
                    calls = _Attempts(started, token.old_value is True)
                delay = self._after_failure(calls, failure, self.name, self._subscribers)
                if delay is None:
                    return self._final(failure, result)  # type: ignore[no-any-return]
                if delay > 0.0:
                    await self.async_sleep(delay)
                    if self._past_deadline(calls):
                        return self._final(failure, result)  # type: ignore[no-any-return]
                calls.count += 1
        finally:
            if token is not None:
                _IN_RETRY.reset(token)


async def _aw(aw: Awaitable[R]) -> R:
    """Wrap any awaitable in a coroutine (``wait_for`` wants a coroutine or future)."""
    return await aw


def _retry_predicate(retry_on: RetryOn | None) -> Callable[[BaseException], object]:
    """Turn ``retry_on`` into a predicate, validating it."""
    if retry_on is None:
        return _default_retryable
    if isinstance(retry_on, type):
        if not issubclass(retry_on, BaseException):
            raise TypeError(f"retry_on must be exception types or a predicate, got {retry_on!r}")
        types: tuple[type[BaseException], ...] = (retry_on,)
    elif isinstance(retry_on, tuple):
        if not retry_on or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError(f"retry_on must hold exception types, got {retry_on!r}")
        types = retry_on
    elif callable(retry_on):
        return retry_on
    else:
        raise TypeError(f"retry_on must be exception types or a predicate, got {retry_on!r}")

    def is_retryable(exc: BaseException) -> bool:
        return isinstance(exc, types)

    return is_retryable


def _default_retryable(exc: BaseException) -> bool | RetryAfter:
    """Every ``Exception`` but the mesh's rejections; a failure's ``retry_after`` is honoured.

    A rejection is a :class:`ServiceMeshError` that is not ``retryable`` (an open
    circuit, no healthy instance, a full bulkhead, an exceeded limit).
    """
    if not isinstance(exc, Exception) or (isinstance(exc, ServiceMeshError) and not exc.retryable):
        return False
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
        return RetryAfter(retry_after)
    return True


def _cap_attempt(initial: float, cap: float, base: float) -> float:
    """The first attempt number whose backoff reaches ``cap`` (inf if it never does)."""
    if initial >= cap:
        return 0
    if initial <= 0.0 or base <= 1.0:
        return math.inf
    return max(0, math.ceil((math.log(cap) - math.log(initial)) / math.log(base)))
