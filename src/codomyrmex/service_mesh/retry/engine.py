"""The retry engine: one policy's decisions, and one call's state from its first failure on.

Sans-I/O: nothing here runs an attempt or sleeps. A driver (the policy's own sync
and async loops, the proxy's, the hedging stage's) runs an attempt, tells the
engine how it ended, and gets back a decision as a value: the wait before the next
attempt (0.0: at once), or None to end the call (:meth:`RetryEngine.final` says
how). A call that succeeds at its first attempt never makes an :class:`Attempts`.

Internal API: the names here are used across the ``retry`` and ``proxy``
packages; users configure retries through :class:`~.options.RetryPolicy`.
"""

from __future__ import annotations

import contextvars
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ..events import CallRejected, EventListener, RetryGaveUp, RetryScheduled, publish
from .backoff import RetryAfter, cap_attempt, verdict
from .budget import RetryBudget
from .testing import Switches

if TYPE_CHECKING:
    from .options import RetryPolicy

__all__ = ["IN_RETRY", "Attempts", "RetryEngine"]

logger = logging.getLogger("codomyrmex.service_mesh")

# The nested-retry guard: True while a call is being retried (from its first
# failure on). A policy that fails inside such a call makes no retries of its own,
# so nested retries add up instead of multiplying. Marking only the retry phase
# keeps the success path free of the contextvar's cost.
IN_RETRY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "codomyrmex_service_mesh_in_retry", default=False
)


class Attempts:
    """One call's retry state, made at its first failure (never shared between calls)."""

    __slots__ = ("count", "nested", "previous", "started", "token")

    def __init__(self, started: float | None, nested: bool = False) -> None:
        self.count = 1
        self.started = started
        self.previous = 0.0
        self.nested = nested
        self.token: contextvars.Token[bool] | None = None

    def guard(self) -> None:
        """Enter the nested-retry guard: retry policies inside this call make one attempt."""
        if self.token is None:
            self.token = IN_RETRY.set(True)
            self.nested = self.token.old_value is True

    def close(self) -> None:
        """Leave the nested-retry guard (the call has ended)."""
        if self.token is not None:
            IN_RETRY.reset(self.token)


class RetryEngine:
    """The decisions of one :class:`~.options.RetryPolicy`, shared by every driver."""

    __slots__ = (
        *("base", "cap_attempt", "initial", "maximum", "mode", "rng"),  # the backoff
        *("budget", "clock", "max_elapsed", "max_retries", "nested", "refund"),
        *("retry_on_result", "retryable", "simple", "subscribers"),
    )

    def __init__(
        self,
        policy: RetryPolicy,
        mode: str,
        rng: random.Random,
        retryable: Callable[[BaseException], object],
    ) -> None:
        self.mode = mode
        self.rng = rng
        self.retryable = retryable
        self.initial = policy.initial_delay
        self.maximum = policy.max_delay
        self.base = policy.exponential_base
        self.cap_attempt = cap_attempt(self.initial, self.maximum, self.base)
        self.max_retries = policy.max_retries
        self.retry_on_result = retry_on_result = policy.retry_on_result
        self.clock = policy.clock
        self.max_elapsed = max_elapsed = policy.max_elapsed
        self.budget = budget = policy.budget
        self.nested = policy.nested
        self.subscribers: tuple[EventListener, ...] = ()
        # No budget, deadline or result predicate: the success path needs nothing else.
        self.simple = budget is None and max_elapsed is None and retry_on_result is None
        # Whether the budget wants to hear of successes (a token bucket refunds; a
        # percentage budget counts only requests and retries).
        self.refund = budget is not None and (
            type(budget).record_outcome is not RetryBudget.record_outcome
        )

    # -- a call begins and ends ---------------------------------------------------------

    def start(self) -> float | None:
        """Begin a call: count it against the budget; return its start for the deadline."""
        if self.budget is not None:
            self.budget.record_request()
        return None if self.max_elapsed is None else self.clock()

    def succeeded(self) -> None:
        """A call ended with an accepted result: the budget hears of it."""
        if self.budget is not None:
            self.budget.record_outcome(True)

    @staticmethod
    def final(failure: BaseException | None, result: Any) -> Any:
        """How a call that stops retrying ends: its last failure raised, or its last result."""
        if failure is None:
            return result
        raise failure

    # -- judging one attempt --------------------------------------------------------------

    def rejects(self, result: object) -> bool:
        """Whether ``retry_on_result`` asks for another attempt after ``result``."""
        predicate = self.retry_on_result
        if predicate is None:
            return False
        try:
            return bool(predicate(result))
        except Exception:
            logger.exception("retry_on_result predicate raised; keeping the result")
            return False

    def verdict(self, exc: BaseException) -> RetryAfter | Literal[True] | None:
        """``retry_on``'s answer for ``exc``: True (back off), a RetryAfter, or None (stop)."""
        return verdict(self.retryable, exc)

    def max_attempts(self, attempts: int) -> int:
        """``attempts`` (a hedged call's) under the testing switches and the nested guard."""
        if Switches.attempts is not None:
            attempts = min(attempts, Switches.attempts)
        if not self.nested and IN_RETRY.get():
            attempts = 1
        return attempts

    def delay(self, attempt: int, previous: float | None) -> float:
        """The wait before retry ``attempt`` (0 = the first); ``previous`` is the last wait
        (decorrelated jitter; by default the un-jittered wait of the attempt before)."""
        delay = self.backoff(attempt)
        mode = self.mode
        if mode == "none" or delay <= 0.0:
            return delay
        if mode == "full":
            return self.rng.uniform(0.0, delay)
        if mode == "equal":
            return delay / 2 + self.rng.uniform(0.0, delay / 2)
        base = self.initial
        if previous is None:
            previous = self.backoff(attempt - 1) if attempt else base
        return min(self.maximum, self.rng.uniform(base, max(base, 3.0 * previous)))

    def backoff(self, attempt: int) -> float:
        """The un-jittered wait before retry ``attempt``."""
        if attempt >= self.cap_attempt:
            return self.maximum
        if self.initial <= 0.0 or self.base <= 1.0:
            return min(self.maximum, self.initial)
        try:
            return min(self.maximum, self.initial * self.base**attempt)
        except OverflowError:  # a subnormal initial delay: the power alone overflows
            return self.maximum

    # -- deadlines ------------------------------------------------------------------------

    def past_deadline(self, calls: Attempts) -> bool:
        """Whether the overall deadline has passed (checked after each wait)."""
        return (
            calls.started is not None
            and self.max_elapsed is not None
            and self.clock() - calls.started >= self.max_elapsed
        )

    def remaining(self, started: float, timeout: float | None) -> float:
        """The time an async attempt may take under the overall deadline."""
        assert self.max_elapsed is not None
        remaining = self.max_elapsed - (self.clock() - started)
        if remaining <= 0.0:
            raise TimeoutError(f"retry deadline of {self.max_elapsed}s passed")
        return remaining if timeout is None else min(timeout, remaining)

    # -- the decision after a failed attempt ----------------------------------------------

    def after_failure(
        self,
        calls: Attempts,
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
        delay = self.next_delay(failure, calls, failover)
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

    def next_delay(
        self, failure: BaseException | None, calls: Attempts, failover: bool = False
    ) -> float | None:
        """The wait before the next attempt, or None when this failure ends the call."""
        max_retries = self.max_retries
        if calls.nested and not self.nested:
            return None
        if Switches.attempts is not None:
            max_retries = min(max_retries, Switches.attempts - 1)
        if calls.count > max_retries:
            return None
        if failure is None:
            delay = self.delay(calls.count - 1, calls.previous or None)
        else:
            answer = verdict(self.retryable, failure)
            if answer is None:
                return None
            if answer is True:
                delay = self.delay(calls.count - 1, calls.previous or None)
            else:  # a RetryAfter; 0 means at once (Retry-After: 0)
                delay = min(self.maximum, max(0.0, answer.seconds))
        if Switches.active or failover:
            delay = 0.0
        started = calls.started
        if (
            started is not None
            and self.max_elapsed is not None
            and self.clock() + delay - started >= self.max_elapsed
        ):
            return None
        return delay
