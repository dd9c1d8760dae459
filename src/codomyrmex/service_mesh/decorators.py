"""Decorators that put a function behind a shared circuit breaker or a retry policy.

One decorator serves plain and coroutine functions: a coroutine function gets
an async wrapper. Signatures are kept for type checkers (ParamSpec).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

from .circuit_breaker import CircuitBreaker, CircuitBreakerConfig
from .mesh import Mesh, default_mesh
from .retry import RetryOn, RetryPolicy

__all__ = ["BreakerWrapped", "RetryWrapped", "with_circuit_breaker", "with_retry"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class BreakerWrapped(Protocol, Generic[P, R_co]):
    """A function behind a circuit breaker, reachable as ``.circuit_breaker``."""

    circuit_breaker: CircuitBreaker

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...


class RetryWrapped(Protocol, Generic[P, R_co]):
    """A function behind a retry policy, reachable as ``.retry_policy``."""

    retry_policy: RetryPolicy

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...


def with_circuit_breaker(
    name: str, config: CircuitBreakerConfig | None = None, *, mesh: Mesh | None = None
) -> Callable[[Callable[P, R]], BreakerWrapped[P, R]]:
    """Run the function through the breaker called ``name`` in the (default) mesh.

    Every decorator with the same name shares one breaker; a different config
    for a name already registered raises ValueError.
    """
    breaker = (mesh if mesh is not None else default_mesh()).circuit_breaker(name, config)

    def decorate(fn: Callable[P, R]) -> BreakerWrapped[P, R]:
        wrapper = _wrap(fn, breaker.wrap, breaker.execute_async)
        wrapper.circuit_breaker = breaker
        return cast(BreakerWrapped[P, R], wrapper)

    return decorate


_RETRY_DEFAULTS = (3, 0.1, 10.0, 2.0, True, None)
"""``with_retry``'s own defaults, in parameter order (the spec's ``RetryPolicy`` defaults)."""


def with_retry(
    max_retries: int = 3,
    initial_delay: float = 0.1,
    max_delay: float = 10.0,
    exponential_base: float = 2.0,
    jitter: bool = True,
    retry_on: RetryOn | None = None,
    *,
    policy: RetryPolicy | None = None,
    **options: Any,
) -> Callable[[Callable[P, R]], RetryWrapped[P, R]]:
    """Retry the function by a :class:`RetryPolicy` built from these arguments.

    Pass ``policy=`` to share one policy instead; ``options`` (``sleep``,
    ``rng``, ``max_elapsed``, ...) go to the policy's constructor.
    """
    if policy is None:
        policy = RetryPolicy(
            max_retries, initial_delay, max_delay, exponential_base, jitter, retry_on, **options
        )
    elif not isinstance(policy, RetryPolicy):
        raise TypeError(f"policy must be a RetryPolicy, got {policy!r}")
    elif (
        options
        or (max_retries, initial_delay, max_delay, exponential_base, jitter, retry_on)
        != _RETRY_DEFAULTS
    ):
        raise TypeError("with_retry takes either policy= or the policy's arguments, not both")
    the_policy = policy

    def decorate(fn: Callable[P, R]) -> RetryWrapped[P, R]:
        wrapper = _wrap(fn, the_policy.wrap, the_policy.execute_async)
        wrapper.retry_policy = the_policy
        return cast(RetryWrapped[P, R], wrapper)

    return decorate


def _wrap(
    fn: Callable[..., Any],
    wrap_sync: Callable[[Callable[..., Any]], Callable[..., Any]],
    execute_async: Callable[..., Any],
) -> Any:
    """Coroutine functions get an async wrapper awaiting ``execute_async``; others ``wrap_sync``."""
    if not inspect.iscoroutinefunction(fn):
        return wrap_sync(fn)

    @functools.wraps(fn)
    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        return await execute_async(fn, *args, **kwargs)

    return async_wrapper
