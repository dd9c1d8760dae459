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

import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from .._validate import check_callable, check_int, check_number, check_str
from ..circuit_breaker import CircuitBreaker
from ..errors import CircuitOpenError
from ..events import EventListener, Publisher
from ..limits import ConcurrencyLimiter, RateLimit, admission
from ..load_balancer import LoadBalancer, ServiceInstance
from ..retry.budget import PercentageRetryBudget
from ..retry.options import RetryPolicy
from ..timers import Timer
from .pipeline import AttemptPipeline, ProxyCall
from .stages.bulkhead import Bulkhead
from .stages.hedging import hedged, hedged_async
from .stages.timeouts import timed_attempt

__all__ = ["ServiceProxy"]

P = ParamSpec("P")
R = TypeVar("R")


_STAGE_FIELDS = frozenset(
    {"circuit_breaker", "bulkhead", "hedging_delay", "fallback", "rate_limit", "concurrency_limit"}
)


class ServiceProxy(Publisher, AttemptPipeline):
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

    # -- entry points -------------------------------------------------------------

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
                self.refused(exc)
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

    async def call_async(
        self,
        handler_fn: Callable[Concatenate[ServiceInstance, P], Awaitable[R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Await ``handler_fn(instance, *args, **kwargs)`` through the whole stack.

        :meth:`call` for event loops; cancellation frees the connection and any
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
                self.refused(exc)
            raise
        return result

    async def call_once_async(
        self,
        handler_fn: Callable[Concatenate[ServiceInstance, P], Awaitable[R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """:meth:`call_once` for event loops: one attempt, never retried nor hedged."""
        if self._staged:
            staged: R = await self._call_staged_async(handler_fn, args, kwargs, False)
            return staged
        result: R = await self._guarded_async(self._attempts_async, handler_fn, args, kwargs, False)
        return result

    # -- the stages around the attempts (fallback -> limits -> bulkhead -> breaker) ----

    def _call_staged(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool = True
    ) -> Any:
        """The fallback stage, outermost: it supplies the result when the stack gives up."""
        if self.fallback is None:
            return self._admitted(handler_fn, args, kwargs, retry)
        try:
            return self._admitted(handler_fn, args, kwargs, retry)
        except Exception as exc:
            failure = exc
        return self.fallback(failure)

    async def _call_staged_async(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool = True
    ) -> Any:
        """:meth:`_call_staged` for coroutines; the fallback may return an awaitable."""
        try:
            return await self._admitted_async(handler_fn, args, kwargs, retry)
        except Exception as exc:
            if self.fallback is None:
                raise
            failure = exc
        result = self.fallback(failure)
        return (await result) if inspect.isawaitable(result) else result

    def _admitted(self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool) -> Any:
        """Rate limit -> concurrency limit -> bulkhead -> breaker -> retry or hedging."""
        with self._admission():
            slot = self.bulkhead
            if slot is not None:
                self._take(slot.acquire)
            try:
                if retry and self.hedging_delay is not None:
                    handoff, slot = [slot], None  # hedging takes it: its last hedge frees it
                    try:
                        return self._guarded(self._hedged, handler_fn, args, kwargs, handoff)
                    finally:
                        if handoff and handoff[0] is not None:  # refused before hedging began
                            handoff[0].release()
                return self._guarded(self._attempts, handler_fn, args, kwargs, retry)
            finally:
                if slot is not None:
                    slot.release()

    async def _admitted_async(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool
    ) -> Any:
        """:meth:`_admitted` for coroutines (hedges are tasks: the slot is freed on exit)."""
        rest: tuple[bool, ...] = ()
        if retry and self.hedging_delay is not None:
            run = self._hedged_async
        else:
            run, rest = self._attempts_async, (retry,)
        async with self._admission():
            bulkhead = self.bulkhead
            if bulkhead is None:
                return await self._guarded_async(run, handler_fn, args, kwargs, *rest)
            await self._take_async(bulkhead)
            try:
                return await self._guarded_async(run, handler_fn, args, kwargs, *rest)
            finally:
                bulkhead.release()

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` through the service's breaker (which judges the whole call)."""
        try:
            return self._execute(fn, *args)
        except CircuitOpenError as exc:
            if self._subscribers:
                self.refused(exc)
            raise

    async def _guarded_async(self, fn: Callable[..., Any], *args: Any) -> Any:
        """:meth:`_guarded` for coroutines."""
        try:
            return await self._execute_async(fn, *args)
        except CircuitOpenError as exc:
            if self._subscribers:
                self.refused(exc)
            raise

    def _admission(self) -> Any:
        """The overload stages (rate limit -> concurrency limit) for one call: limits/."""
        return admission(
            self.rate_limit, self.concurrency_limit, self.service_name, self._subscribers
        )

    def _take(self, acquire: Callable[[], None]) -> None:
        """Take a bulkhead slot; a refusal is published as ``bulkhead_full``."""
        try:
            acquire()
        except Exception:
            self.rejected("bulkhead_full")
            raise

    async def _take_async(self, bulkhead: Bulkhead) -> None:
        """:meth:`_take` for event loops."""
        try:
            await bulkhead.acquire_async()
        except Exception:
            self.rejected("bulkhead_full")
            raise

    # -- hedging ------------------------------------------------------------------

    def _hedged(
        self,
        handler_fn: Callable[..., Any],
        args: Any,
        kwargs: Any,
        handoff: list[Bulkhead | None],
    ) -> Any:
        """Hedging (sync): each attempt on a thread of its own; the first success wins.

        Takes the call's bulkhead slot out of ``handoff`` (freed when the last hedge ends).

        Attempts run in a copy of the caller's context (contextvars: routing keys,
        tracing) and are never queued behind other calls' attempts. See :mod:`.stages.hedging`.
        """
        bulkhead = handoff.pop()
        timer = self.timer if self.timer is not None else self.retry_policy.timer
        return hedged(self, timer, handler_fn, args, kwargs, bulkhead)

    async def _hedged_async(self, handler_fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Hedging (async): attempts as tasks; the first success wins, the losers are cancelled."""
        timer = self.timer if self.timer is not None else self.retry_policy.timer
        return await hedged_async(self, timer, handler_fn, args, kwargs)

    # -- the drivers of the attempt pipeline (decisions: .pipeline) -----------------

    def _attempts(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool = True
    ) -> Any:
        """Retry -> pick -> handler, one attempt after another (one if not ``retry``).

        The sync driver: calls the handler and sleeps; the pipeline decides. The
        success path is inline (no call state, no helper frames).
        """
        balancer = self.load_balancer
        engine = self.retry_policy.engine
        started = None if engine.simple else engine.start()
        call: ProxyCall | None = None  # made at the first failure: the success path needs none
        try:
            while True:
                instance = balancer.acquire(None if call is None else call.tried)
                if instance is None:
                    raise self.no_instance(None if call is None else call.last_real)
                timer = balancer.observe_clock or self._event_clock
                start = 0.0 if timer is None else timer()
                try:
                    result = handler_fn(instance, *args, **kwargs)
                except BaseException as exc:
                    call = self.attempt_raised(call, started, instance, start, exc, retry)
                else:
                    balancer.release(instance, start, None)
                    if engine.retry_on_result is None or not engine.rejects(result):
                        if self._subscribers or engine.refund:
                            self.succeeded(instance, start, call)
                        return result
                    call = self.attempt_rejected(call, started, instance, start, result, retry)
                if call.wait is None:
                    return call.end()
                if call.wait > 0.0:
                    self.retry_policy.sleep(call.wait)
                    if engine.past_deadline(call):
                        return call.end()
        finally:
            if call is not None:
                call.close()

    async def _attempts_async(
        self, handler_fn: Callable[..., Any], args: Any, kwargs: Any, retry: bool = True
    ) -> Any:
        """The async driver of :meth:`_attempts`: awaits the handler (within the attempt
        timeout) and the sleeps; the pipeline decides."""
        policy = self.retry_policy
        engine = policy.engine
        balancer = self.load_balancer
        started = None if engine.simple else engine.start()
        plain = started is None and policy.attempt_timeout is None
        accept_any = engine.retry_on_result is None
        call: ProxyCall | None = None
        clock = balancer.observe_clock or self._event_clock
        try:
            while True:
                instance = balancer.acquire(None if call is None else call.tried)
                if instance is None:
                    raise self.no_instance(None if call is None else call.last_real)
                start = 0.0 if clock is None else clock()
                try:
                    if plain:
                        result = await handler_fn(instance, *args, **kwargs)
                    else:
                        result = await timed_attempt(
                            policy, started, handler_fn, instance, args, kwargs
                        )
                except BaseException as exc:
                    call = self.attempt_raised(call, started, instance, start, exc, retry)
                else:
                    balancer.release(instance, start, None)
                    if accept_any or not engine.rejects(result):
                        if self._subscribers or engine.refund:
                            self.succeeded(instance, start, call)
                        return result
                    call = self.attempt_rejected(call, started, instance, start, result, retry)
                wait = call.wait
                if wait is not None and wait > 0.0:
                    await policy.async_sleep(wait)
                    wait = None if policy.engine.past_deadline(call) else wait
                if wait is None:
                    return call.end()
        finally:
            if call is not None:
                call.close()
