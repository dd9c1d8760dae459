"""Service proxy: the full resilience stack for calls to one service.

Each attempt picks an instance (a retry prefers one not yet tried), counts a
connection on it, and runs the handler through the circuit breaker; the retry
policy decides whether and when to try again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._validate import check_str
from .circuit_breaker import CircuitBreaker
from .errors import CircuitOpenError, NoHealthyInstanceError
from .load_balancer import ABORTED, LoadBalancer, ServiceInstance
from .retry import RetryPolicy, _aw

__all__ = ["ServiceProxy"]

P = ParamSpec("P")
R = TypeVar("R")


class ServiceProxy:
    """Calls to one service through load balancer -> circuit breaker -> retry.

    ``call(handler, *args, **kwargs)`` runs ``handler(instance, *args, **kwargs)``
    on a picked instance and returns its result. When the breaker rejects, the
    call stops with :class:`CircuitOpenError` chained (``__cause__``) to the last
    real failure; with no healthy instance it raises :class:`NoHealthyInstanceError`.
    """

    __slots__ = (
        "_breaker",
        "_execute",
        "_execute_async",
        "circuit_breaker",
        "load_balancer",
        "retry_policy",
        "service_name",
    )

    def __init__(
        self,
        service_name: str,
        load_balancer: LoadBalancer | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        check_str("service_name", service_name)
        if load_balancer is None:
            load_balancer = LoadBalancer(name=service_name)
        elif not isinstance(load_balancer, LoadBalancer):
            raise TypeError(f"load_balancer must be a LoadBalancer, got {load_balancer!r}")
        if circuit_breaker is None:
            circuit_breaker = CircuitBreaker(service_name)
        elif not isinstance(circuit_breaker, CircuitBreaker):
            raise TypeError(f"circuit_breaker must be a CircuitBreaker, got {circuit_breaker!r}")
        if retry_policy is None:
            retry_policy = RetryPolicy()
        elif not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy, got {retry_policy!r}")
        if not load_balancer.name:
            load_balancer.name = service_name
        self.service_name = service_name
        self.load_balancer = load_balancer
        self.circuit_breaker = circuit_breaker
        self.retry_policy = retry_policy
        self._execute = circuit_breaker.execute
        self._execute_async = circuit_breaker.execute_async

    def __repr__(self) -> str:
        return (
            f"ServiceProxy({self.service_name!r}, load_balancer={self.load_balancer!r}, "
            f"circuit_breaker={self.circuit_breaker!r}, retry_policy={self.retry_policy!r})"
        )

    def describe(self) -> str:
        """The order of the stages a call goes through."""
        return "retry -> pick instance (count connection) -> circuit breaker -> handler"

    def call(
        self,
        handler_fn: Callable[Concatenate[ServiceInstance, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run ``handler_fn(instance, *args, **kwargs)`` through the whole stack."""
        balancer = self.load_balancer
        policy = self.retry_policy
        started = None if policy.max_elapsed is None else policy.clock()
        tried: set[str] | None = None
        last_real: Exception | None = None
        attempt = 0
        while True:
            instance = balancer._acquire(tried)
            if instance is None:
                raise NoHealthyInstanceError(self.service_name) from last_real
            timer = balancer._observe_clock
            start = 0.0 if timer is None else timer()
            try:
                result = self._execute(handler_fn, instance, *args, **kwargs)
            except Exception as exc:
                balancer._release(instance, start, exc)
                failure = exc
            except BaseException:
                balancer._release(instance, start, ABORTED)
                raise
            else:
                balancer._release(instance, start, None)
                return result
            if not isinstance(failure, CircuitOpenError):
                last_real = failure
            delay = policy._next_delay(failure, attempt, started)
            if delay is None:
                raise self._give_up(failure, last_real)
            if delay > 0.0:
                policy.sleep(delay)
            attempt += 1
            if tried is None:
                tried = set()
            tried.add(instance.id)

    async def call_async(
        self,
        handler_fn: Callable[Concatenate[ServiceInstance, P], Awaitable[R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Await ``handler_fn(instance, *args, **kwargs)`` through the whole stack.

        The async twin of :meth:`call`; cancellation frees the connection and any
        probe slot and is never retried. ``attempt_timeout`` bounds each attempt
        inside the breaker, so a timed-out attempt is a breaker failure.
        """
        balancer = self.load_balancer
        policy = self.retry_policy
        started = None if policy.max_elapsed is None else policy.clock()
        tried: set[str] | None = None
        last_real: Exception | None = None
        attempt = 0
        while True:
            instance = balancer._acquire(tried)
            if instance is None:
                raise NoHealthyInstanceError(self.service_name) from last_real
            timer = balancer._observe_clock
            start = 0.0 if timer is None else timer()
            try:
                timeout = policy.attempt_timeout
                if started is not None:
                    timeout = policy._remaining(started, timeout)
                if timeout is None:
                    result = await self._execute_async(handler_fn, instance, *args, **kwargs)
                else:
                    timed: Any = _timed
                    result = await self._execute_async(
                        timed, timeout, handler_fn, instance, *args, **kwargs
                    )
            except Exception as exc:
                balancer._release(instance, start, exc)
                failure = exc
            except BaseException:
                balancer._release(instance, start, ABORTED)
                raise
            else:
                balancer._release(instance, start, None)
                return result
            if not isinstance(failure, CircuitOpenError):
                last_real = failure
            delay = policy._next_delay(failure, attempt, started)
            if delay is None:
                raise self._give_up(failure, last_real)
            if delay > 0.0:
                await policy.async_sleep(delay)
            attempt += 1
            if tried is None:
                tried = set()
            tried.add(instance.id)

    @staticmethod
    def _give_up(failure: Exception, last_real: Exception | None) -> Exception:
        """The exception a call ends with: a rejection is chained to the last real failure."""
        if last_real is not None and last_real is not failure and failure.__cause__ is None:
            failure.__cause__ = last_real
        return failure


async def _timed(
    timeout: float, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
) -> R:
    """Await one attempt with a time limit; running out of time raises ``TimeoutError``."""
    return await asyncio.wait_for(_aw(fn(*args, **kwargs)), timeout)
