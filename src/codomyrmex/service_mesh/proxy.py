"""Service proxy: the full resilience stack for calls to one service.

The stages, outermost first (``describe()`` prints them for a given proxy):

    fallback -> rate limit -> concurrency limit -> bulkhead
             -> circuit breaker (judges whole calls) -> retry or hedging
             -> pick instance (count connection, eject outliers)
             -> per-attempt timeout (async) -> handler

Faults of one instance are handled per instance: each attempt's outcome feeds
the load balancer's outlier detection, which ejects an instance that keeps
failing (on by default), and a failed attempt fails over at once to an instance
not yet tried in the call -- backoff is only for when every instance has been
tried. The service's circuit breaker sees each call once, after failover, so it
opens only when the service as a whole is failing, not when one instance is.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._validate import check_callable, check_int, check_number, check_str
from .budget import PercentageRetryBudget
from .bulkhead import Bulkhead
from .circuit_breaker import CircuitBreaker, CircuitState
from .errors import CircuitOpenError, NoHealthyInstanceError
from .events import (
    CallFailed,
    CallRejected,
    CallSucceeded,
    EventListener,
    Publisher,
    RetryGaveUp,
    publish,
)
from .hedging import RejectedResult, hedged, hedged_async
from .limits import ConcurrencyLimiter, RateLimit, admission
from .load_balancer import ABORTED, LoadBalancer, ServiceInstance
from .retry import _IN_RETRY, RetryPolicy, _Attempts
from .timers import Timer

__all__ = ["ServiceProxy"]

P = ParamSpec("P")
R = TypeVar("R")


_REFUSALS = {
    CircuitState.OPEN: "circuit_open",
    CircuitState.HALF_OPEN: "half_open_full",
    CircuitState.FORCED_OPEN: "forced_open",
}
"""The :class:`CallRejected` reason of a call the service's breaker refused, by its state."""

_STAGE_FIELDS = frozenset(
    {"circuit_breaker", "bulkhead", "hedging_delay", "fallback", "rate_limit", "concurrency_limit"}
)


class ServiceProxy(Publisher):
    """Calls to one service through load balancer -> circuit breaker -> retry.

    ``call(handler, *args, **kwargs)`` runs ``handler(instance, *args, **kwargs)``
    on a picked instance and returns its result. When the service's breaker is
    open the call is refused with :class:`CircuitOpenError`; with no healthy
    instance it raises :class:`NoHealthyInstanceError`.

    Defaults are the safe set-up: the breaker judges whole calls (after failover),
    the load balancer ejects outliers, and the retry policy (three retries, the
    first ones failing over to untried instances without waiting) spends a
    :class:`~codomyrmex.service_mesh.budget.PercentageRetryBudget`, so retries
    cannot multiply an outage.

    Optional stages: ``bulkhead`` caps concurrent calls; ``hedging_delay`` starts
    another attempt on another instance when one has not answered in time (up
    to ``max_hedged_attempts``; first success wins; hedged calls are not also
    retried, a failed attempt starts the next hedge at once); ``fallback(exc)``
    supplies the result when the stack gives up. Hedging follows the retry controls
    (see :mod:`.hedging`); ``timer`` times the hedging delay and, for sync hedges, the
    attempt timeout (by default the retry policy's timer). ``rate_limit`` and
    ``concurrency_limit`` (see :mod:`codomyrmex.service_mesh.limits`) refuse calls beyond
    a rate or an adaptive concurrency limit with :class:`LimitExceededError`.

    Events (:meth:`subscribe`): calls succeeded / failed / rejected, retries.
    """

    __slots__ = (
        "_event_clock",
        "_execute",
        "_execute_async",
        "_lock",
        "_run",
        "_staged",
        "_subscribers",
        "bulkhead",
        "circuit_breaker",
        "clock",
        "concurrency_limit",
        "fallback",
        "hedging_delay",
        "load_balancer",
        "max_hedged_attempts",
        "rate_limit",
        "retry_policy",
        "service_name",
        "timer",
    )

    def __init__(
        self,
        service_name: str,
        load_balancer: LoadBalancer | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        retry_policy: RetryPolicy | None = None,
        *,
        bulkhead: Bulkhead | None = None,
        hedging_delay: float | None = None,
        max_hedged_attempts: int = 2,
        fallback: Callable[[Exception], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: Timer | None = None,
        rate_limit: RateLimit | None = None,
        concurrency_limit: ConcurrencyLimiter | None = None,
    ) -> None:
        check_str("service_name", service_name)
        if timer is not None and not isinstance(timer, Timer):
            raise TypeError(f"timer must be a Timer, got {timer!r}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit (a RateLimiter), got {rate_limit!r}")
        if concurrency_limit is not None and not isinstance(concurrency_limit, ConcurrencyLimiter):
            raise TypeError(
                f"concurrency_limit must be a ConcurrencyLimiter, got {concurrency_limit!r}"
            )
        if load_balancer is None:
            load_balancer = LoadBalancer(name=service_name)
        elif not isinstance(load_balancer, LoadBalancer):
            raise TypeError(f"load_balancer must be a LoadBalancer, got {load_balancer!r}")
        if circuit_breaker is None:
            circuit_breaker = CircuitBreaker(service_name)
        elif not isinstance(circuit_breaker, CircuitBreaker):
            raise TypeError(f"circuit_breaker must be a CircuitBreaker, got {circuit_breaker!r}")
        if retry_policy is None:
            retry_policy = RetryPolicy(budget=PercentageRetryBudget())
        elif not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy, got {retry_policy!r}")
        if bulkhead is not None and not isinstance(bulkhead, Bulkhead):
            raise TypeError(f"bulkhead must be a Bulkhead, got {bulkhead!r}")
        if hedging_delay is not None:
            check_number("hedging_delay", hedging_delay, 0.0)
        check_int("max_hedged_attempts", max_hedged_attempts, 1)
        if fallback is not None:
            check_callable("fallback", fallback)
        check_callable("clock", clock)
        if not load_balancer.name:
            load_balancer.name = service_name
        self.service_name = service_name
        self.load_balancer = load_balancer
        self.circuit_breaker = circuit_breaker
        self.retry_policy = retry_policy
        self.bulkhead = bulkhead
        self.hedging_delay = hedging_delay
        self.max_hedged_attempts = max_hedged_attempts
        self.fallback = fallback
        self.clock = clock
        self.timer = timer
        self.rate_limit = rate_limit
        self.concurrency_limit = concurrency_limit
        self._refresh()
        self._subscribers: tuple[EventListener, ...] = ()
        self._event_clock: Callable[[], float] | None = None
        self._lock = threading.Lock()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "circuit_breaker" and not isinstance(value, CircuitBreaker):
            raise TypeError(f"circuit_breaker must be a CircuitBreaker, got {value!r}")
        object.__setattr__(self, name, value)
        if name in _STAGE_FIELDS and hasattr(self, "_staged"):
            self._refresh()  # a stage replaced after construction takes effect at once

    def _refresh(self) -> None:
        """Cache what the hot path reads from the configured stages."""
        self._execute = self.circuit_breaker.execute
        self._run = self._attempts  # bound once: the hot path makes no method object
        self._execute_async = self.circuit_breaker.execute_async
        self._staged = (
            self.bulkhead is not None or self.hedging_delay is not None or self.fallback is not None
        ) or (self.rate_limit is not None or self.concurrency_limit is not None)

    def __repr__(self) -> str:
        return (
            f"ServiceProxy({self.service_name!r}, load_balancer={self.load_balancer!r}, "
            f"circuit_breaker={self.circuit_breaker!r}, retry_policy={self.retry_policy!r})"
        )

    def describe(self) -> str:
        """The stages a call goes through, outermost first, as configured."""
        stages = []
        if self.fallback is not None:
            stages.append("fallback")
        if self.rate_limit is not None:
            stages.append(self.rate_limit.describe())
        if self.concurrency_limit is not None:
            stages.append(self.concurrency_limit.describe())
        if self.bulkhead is not None:
            stages.append(f"bulkhead(max_concurrent={self.bulkhead.max_concurrent})")
        stages.append(f"circuit breaker({self.circuit_breaker.name}, judges calls)")
        if self.hedging_delay is not None:
            stages.append(
                f"hedging(delay={self.hedging_delay}s, max_attempts={self.max_hedged_attempts})"
            )
        else:
            stages.append(f"retry(max_retries={self.retry_policy.max_retries})")
        balancer = self.load_balancer
        ejects = ", ejects outliers" if balancer.outlier_detector is not None else ""
        stages.append(f"pick instance({balancer.strategy.value}, counts connections{ejects})")
        if self.retry_policy.attempt_timeout is not None:
            stages.append(f"attempt timeout({self.retry_policy.attempt_timeout}s, async)")
        stages.append("handler")
        return " -> ".join(stages)

    def _subscribers_changed(self) -> None:
        self._event_clock = self.clock if self._subscribers else None

    def close(self) -> None:
        """Release what the proxy holds (nothing today: hedges run on their own threads)."""

    # -- sync -------------------------------------------------------------------

    def call(
        self,
        handler_fn: Callable[Concatenate[ServiceInstance, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run ``handler_fn(instance, *args, **kwargs)`` through the whole stack."""
        if self._staged:
            staged: R = self._call_staged(handler_fn, args, kwargs)
            return staged
        try:
            result: R = self._execute(self._run, handler_fn, args, kwargs)
        except CircuitOpenError as exc:
            if self._subscribers:
                self._refused(exc)
            raise
        return result

    def call_once(
        self,
        handler_fn: Callable[Concatenate[ServiceInstance, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Like :meth:`call`, but one attempt only: never retried nor hedged.

        For calls that must not be repeated (a POST): still behind the fallback,
        the bulkhead and the breaker, on a balanced instance with its connection counted.
        """
        if self._staged:
            staged: R = self._call_staged(handler_fn, args, kwargs, False)
            return staged
        result: R = self._guarded(self._attempts, handler_fn, args, kwargs, False)
        return result

    def _call_staged(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool = True
    ) -> Any:
        try:
            with self._admission():
                bulkhead = self.bulkhead
                if bulkhead is not None:
                    self._guard_bulkhead(bulkhead.acquire)
                try:
                    if self.hedging_delay is not None and retry:
                        held, bulkhead = bulkhead, None  # released when the last hedge ends
                        return self._guarded(self._hedged, handler_fn, args, kwargs, held)
                    return self._guarded(self._attempts, handler_fn, args, kwargs, retry)
                finally:
                    if bulkhead is not None:
                        bulkhead.release()
        except Exception as exc:
            if self.fallback is None:
                raise
            failure = exc
        return self.fallback(failure)

    def _attempts(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool = True
    ) -> Any:
        """Retry -> pick -> handler, one attempt after another (one if not ``retry``)."""
        balancer = self.load_balancer
        policy = self.retry_policy
        started = None
        if not policy._simple:  # inline of policy._start(): no frame on the hot path
            budget = policy.budget
            if budget is not None:
                budget.record_request()
            if policy.max_elapsed is not None:
                started = policy.clock()
        state: _Retrying | None = None  # made at the first failure: the success path needs none
        result: Any = None
        try:
            while True:
                instance = balancer.acquire(None if state is None else state.tried)
                if instance is None:
                    raise self._no_instance(None if state is None else state.last_real)
                timer = balancer.observe_clock or self._event_clock
                start = 0.0 if timer is None else timer()
                try:
                    result = handler_fn(instance, *args, **kwargs)
                except Exception as exc:
                    balancer.release(instance, start, exc)
                    failure: Exception | None = exc
                except BaseException:
                    balancer.release(instance, start, ABORTED)
                    raise
                else:
                    balancer.release(instance, start, None)
                    if policy.retry_on_result is None or not policy._rejects(result):
                        if self._subscribers or policy._refund:
                            self._succeeded(instance, start, None if state is None else state.calls)
                        return result
                    failure = None
                if state is None:
                    state = _Retrying(started)
                delay = self._next_wait(state, instance, start, failure, retry)
                if delay is None:
                    return policy._final(failure, result)
                if delay > 0.0:
                    policy.sleep(delay)
                    if policy._past_deadline(state.calls):
                        return policy._final(failure, result)
                state.calls.count += 1
        finally:
            if state is not None and state.token is not None:
                _IN_RETRY.reset(state.token)

    def _next_wait(
        self,
        state: _Retrying,
        instance: ServiceInstance,
        start: float,
        failure: Exception | None,
        retry: bool,
    ) -> float | None:
        """After a failed attempt (``failure`` None: a rejected result) on ``instance``: the
        wait before the next attempt, or None to end the call with its last outcome.

        Shared by the sync and async attempt loops. A breaker rejection from inside
        the handler (a breaker of the caller's own) ends the call at once, chained
        to the last real failure, unless it is ``retryable`` (one instance's breaker).
        Failing over to an instance not yet tried in this call does not wait: backoff
        is for when every instance has been tried.
        """
        if failure is not None:
            if self._subscribers:
                self._failed(instance, start, failure)
            if isinstance(failure, CircuitOpenError) and not failure.retryable:
                if self._subscribers:
                    publish(
                        self._subscribers,
                        RetryGaveUp(self.service_name, state.calls.count, failure),
                    )
                raise self._give_up(failure, state.last_real)
            state.last_real = failure
        if not retry:
            if self._subscribers:
                publish(self._subscribers, RetryGaveUp(self.service_name, 1, failure))
            budget = self.retry_policy.budget
            if budget is not None:  # as a retried call's failure would: success refunds
                budget.record_outcome(False)
            return None
        if state.token is None:
            state.token = _IN_RETRY.set(True)  # the nested-retry guard (see retry.py)
            state.calls.nested = state.token.old_value is True
        tried = state.tried
        tried.add(instance.id)
        failover = self.load_balancer.has_untried(tried)
        return self.retry_policy._after_failure(
            state.calls, failure, self.service_name, self._subscribers, instance.id, failover
        )

    def _one_attempt(
        self, handler_fn: Callable[..., Any], instance: ServiceInstance, args: Any, kwargs: Any
    ) -> Any:
        """One hedged attempt on an already acquired instance; releases its connection."""
        balancer = self.load_balancer
        timer = balancer.observe_clock or self._event_clock
        start = 0.0 if timer is None else timer()
        try:
            result = handler_fn(instance, *args, **kwargs)
        except BaseException as exc:
            self._hedge_failed(instance, start, exc)
            raise
        return self._hedge_done(instance, start, result)

    def _hedged(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, bulkhead: Bulkhead | None
    ) -> Any:
        """Hedging (sync): each attempt on a thread of its own; the first success wins.

        Attempts run in a copy of the caller's context (contextvars: routing keys,
        tracing) and are never queued behind other calls' attempts. See :mod:`.hedging`.
        """
        timer = self.timer if self.timer is not None else self.retry_policy.timer
        return hedged(self, timer, handler_fn, args, kwargs, bulkhead)

    # -- async ------------------------------------------------------------------

    async def call_async(
        self,
        handler_fn: Callable[Concatenate[ServiceInstance, P], Awaitable[R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Await ``handler_fn(instance, *args, **kwargs)`` through the whole stack.

        The async twin of :meth:`call`; cancellation frees the connection and any
        probe slot and is never retried. ``attempt_timeout`` bounds each attempt; a
        timed-out attempt is a failure of its instance (and fails over).
        """
        if self._staged:
            staged: R = await self._call_staged_async(handler_fn, args, kwargs)
            return staged
        try:
            result: R = await self._execute_async(self._attempts_async, handler_fn, args, kwargs)
        except CircuitOpenError as exc:
            if self._subscribers:
                self._refused(exc)
            raise
        return result

    async def call_once_async(
        self,
        handler_fn: Callable[Concatenate[ServiceInstance, P], Awaitable[R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """The async twin of :meth:`call_once`: one attempt, never retried nor hedged."""
        if self._staged:
            staged: R = await self._call_staged_async(handler_fn, args, kwargs, False)
            return staged
        result: R = await self._guarded_async(self._attempts_async, handler_fn, args, kwargs, False)
        return result

    async def _call_staged_async(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool = True
    ) -> Any:
        try:
            async with self._admission():
                bulkhead = self.bulkhead
                if bulkhead is not None:
                    await self._guard_bulkhead_async(bulkhead)
                try:
                    if self.hedging_delay is not None and retry:
                        return await self._guarded_async(
                            self._hedged_async, handler_fn, args, kwargs
                        )
                    return await self._guarded_async(
                        self._attempts_async, handler_fn, args, kwargs, retry
                    )
                finally:
                    if bulkhead is not None:
                        bulkhead.release()
        except Exception as exc:
            if self.fallback is None:
                raise
            failure = exc
        result = self.fallback(failure)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _attempts_async(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool = True
    ) -> Any:
        """The async twin of :meth:`_attempts`."""
        balancer = self.load_balancer
        policy = self.retry_policy
        started = None
        if not policy._simple:  # inline of policy._start(): no frame on the hot path
            budget = policy.budget
            if budget is not None:
                budget.record_request()
            if policy.max_elapsed is not None:
                started = policy.clock()
        state: _Retrying | None = None  # made at the first failure: the success path needs none
        result: Any = None
        try:
            while True:
                instance = balancer.acquire(None if state is None else state.tried)
                if instance is None:
                    raise self._no_instance(None if state is None else state.last_real)
                timer = balancer.observe_clock or self._event_clock
                start = 0.0 if timer is None else timer()
                try:
                    result = await self._run_attempt_async(
                        handler_fn, instance, args, kwargs, started
                    )
                except Exception as exc:
                    balancer.release(instance, start, exc)
                    failure: Exception | None = exc
                except BaseException:
                    balancer.release(instance, start, ABORTED)
                    raise
                else:
                    balancer.release(instance, start, None)
                    if policy.retry_on_result is None or not policy._rejects(result):
                        if self._subscribers or policy._refund:
                            self._succeeded(instance, start, None if state is None else state.calls)
                        return result
                    failure = None
                if state is None:
                    state = _Retrying(started)
                delay = self._next_wait(state, instance, start, failure, retry)
                if delay is None:
                    return policy._final(failure, result)
                if delay > 0.0:
                    await policy.async_sleep(delay)
                    if policy._past_deadline(state.calls):
                        return policy._final(failure, result)
                state.calls.count += 1
        finally:
            if state is not None and state.token is not None:
                _IN_RETRY.reset(state.token)

    async def _run_attempt_async(
        self,
        handler_fn: Callable[..., Any],
        instance: ServiceInstance,
        args: Any,
        kwargs: Any,
        started: float | None = None,
    ) -> Any:
        """Per-attempt timeout -> handler, for one async attempt."""
        policy = self.retry_policy
        timeout = policy.attempt_timeout
        if policy.max_elapsed is not None and started is not None:
            timeout = policy._remaining(started, timeout)
        if timeout is None:
            return await handler_fn(instance, *args, **kwargs)
        return await _timed(policy.timer, timeout, handler_fn, instance, *args, **kwargs)

    async def _one_attempt_async(
        self,
        handler_fn: Callable[..., Any],
        instance: ServiceInstance,
        args: Any,
        kwargs: Any,
        started: float | None = None,
    ) -> Any:
        """One hedged attempt on an already acquired instance; releases its connection."""
        balancer = self.load_balancer
        timer = balancer.observe_clock or self._event_clock
        start = 0.0 if timer is None else timer()
        try:
            result = await self._run_attempt_async(handler_fn, instance, args, kwargs, started)
        except BaseException as exc:
            self._hedge_failed(instance, start, exc)
            raise
        return self._hedge_done(instance, start, result)

    def _hedge_failed(self, instance: ServiceInstance, start: float, exc: BaseException) -> None:
        """A hedged attempt on ``instance`` raised: release its connection (and report a
        failure; anything not an ``Exception`` aborts)."""
        if isinstance(exc, Exception):
            self.load_balancer.release(instance, start, exc)
            if self._subscribers:
                self._failed(instance, start, exc)
        else:
            self.load_balancer.release(instance, start, ABORTED)

    def _hedge_done(self, instance: ServiceInstance, start: float, result: Any) -> Any:
        """A hedged attempt on ``instance`` returned ``result``: release its connection; a
        rejected result loses the race, like a failure (RejectedResult)."""
        self.load_balancer.release(instance, start, None)
        policy = self.retry_policy
        if policy.retry_on_result is not None and policy._rejects(result):
            raise RejectedResult(result)
        self._succeeded(instance, start, None, refund=False)  # the hedging loop refunds once
        return result

    async def _hedged_async(self, handler_fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Hedging (async): attempts as tasks; the first success wins, the losers are cancelled."""
        timer = self.timer if self.timer is not None else self.retry_policy.timer
        return await hedged_async(self, timer, handler_fn, args, kwargs)

    # -- shared -----------------------------------------------------------------

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` through the service's breaker (which judges the whole call)."""
        try:
            return self._execute(fn, *args)
        except CircuitOpenError as exc:
            if self._subscribers:
                self._refused(exc)
            raise

    async def _guarded_async(self, fn: Callable[..., Any], *args: Any) -> Any:
        """The async twin of :meth:`_guarded`."""
        try:
            return await self._execute_async(fn, *args)
        except CircuitOpenError as exc:
            if self._subscribers:
                self._refused(exc)
            raise

    def _refused(self, exc: CircuitOpenError) -> None:
        """Publish the proxy's :class:`CallRejected` when its own breaker refused a call."""
        if exc.name == self.circuit_breaker.name and not exc.retryable:
            reason = _REFUSALS.get(exc.state, "circuit_open")
            publish(self._subscribers, CallRejected(self.service_name, reason))

    def _admission(self) -> Any:
        """The overload stages (rate limit -> concurrency limit) for one call: limits/."""
        return admission(
            self.rate_limit, self.concurrency_limit, self.service_name, self._subscribers
        )

    def _guard_bulkhead(self, acquire: Callable[[], None]) -> None:
        try:
            acquire()
        except Exception:
            if self._subscribers:
                publish(self._subscribers, CallRejected(self.service_name, "bulkhead_full"))
            raise

    async def _guard_bulkhead_async(self, bulkhead: Bulkhead) -> None:
        try:
            await bulkhead.acquire_async()
        except Exception:
            if self._subscribers:
                publish(self._subscribers, CallRejected(self.service_name, "bulkhead_full"))
            raise

    def _succeeded(
        self,
        instance: ServiceInstance,
        start: float,
        calls: _Attempts | None,
        refund: bool = True,
    ) -> None:
        """Close the books on a successful call: budget refund and event."""
        budget = self.retry_policy.budget
        if refund and budget is not None:
            budget.record_outcome(True)
        if self._subscribers:
            clock = self.load_balancer.observe_clock or self._event_clock or self.clock
            publish(
                self._subscribers,
                CallSucceeded(
                    self.service_name,
                    instance.id,
                    clock() - start,
                    1 if calls is None else calls.count,
                ),
            )

    def _failed(self, instance: ServiceInstance, start: float, failure: Exception) -> None:
        # The same clock that read ``start`` (the balancer's when it observes calls).
        clock = self.load_balancer.observe_clock or self._event_clock or self.clock
        publish(
            self._subscribers,
            CallFailed(self.service_name, instance.id, clock() - start, failure),
        )

    def _no_instance(self, last_real: Exception | None) -> NoHealthyInstanceError:
        if self._subscribers:
            publish(self._subscribers, CallRejected(self.service_name, "no_healthy_instance"))
        error = NoHealthyInstanceError(self.service_name)
        error.__cause__ = last_real
        return error

    @staticmethod
    def _give_up(failure: Exception, last_real: Exception | None) -> Exception:
        """The exception a call ends with: a rejection is chained to the last real failure."""
        if last_real is not None and last_real is not failure and failure.__cause__ is None:
            failure.__cause__ = last_real
        return failure


class _Retrying:
    """One proxy call's state once an attempt has failed (never shared between calls)."""

    __slots__ = ("calls", "last_real", "token", "tried")

    def __init__(self, started: float | None) -> None:
        self.calls = _Attempts(started, False)
        self.tried: set[str] = set()
        self.last_real: Exception | None = None
        self.token: contextvars.Token[bool] | None = None


async def _timed(
    timer: Timer, timeout: float, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
) -> R:
    """Await one attempt with a time limit; running out of time raises ``TimeoutError``."""
    return await timer.wait_for(fn(*args, **kwargs), timeout)
