"""Checked by ``mypy --strict`` (never run, never collected by pytest).

Proves that the decorators keep signatures (ParamSpec) for sync and async
functions and that ``execute`` is typed by the wrapped function. Each
``# type: ignore[...]`` marks a line that must be an error: with mypy's
``warn_unused_ignores`` (on under ``--strict``), a missing error fails the check.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from typing_extensions import assert_type

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    RetryPolicy,
    with_circuit_breaker,
    with_retry,
)


@with_circuit_breaker("auth-service", config=CircuitBreakerConfig(failure_threshold=3))
def call_auth(token: str, *, scopes: list[str] | None = None) -> bool:
    return bool(token)


@with_circuit_breaker("auth-service")
async def call_auth_async(token: str, retries: int = 0) -> dict[str, int]:
    return {token: retries}


@with_retry(max_retries=5, initial_delay=0.2)
def fetch_data(url: str, timeout: float = 1.0) -> bytes:
    return url.encode()


@with_retry(max_retries=5)
async def fetch_data_async(url: str) -> bytes:
    return url.encode()


@with_retry(max_retries=2)
@with_circuit_breaker("stacked")
def stacked(n: int) -> int:
    return n


def f(a: int, b: str) -> float:
    return a + len(b)


async def af(a: int, b: str) -> list[int]:
    return [a, len(b)]


def check_decorated_signatures() -> None:
    assert_type(call_auth("t"), bool)
    assert_type(call_auth("t", scopes=["read"]), bool)
    call_auth(1)  # type: ignore[arg-type]
    call_auth("t", ["read"])  # type: ignore[call-arg]
    call_auth("t", scope=["read"])  # type: ignore[call-arg]
    call_auth()  # type: ignore[call-arg]

    pending = call_auth_async("t")
    _ = assert_type(pending, Coroutine[Any, Any, dict[str, int]])
    pending.close()
    _ = call_auth_async("t", "1")  # type: ignore[arg-type]

    assert_type(fetch_data("u"), bytes)
    assert_type(fetch_data("u", timeout=2.0), bytes)
    fetch_data(b"u")  # type: ignore[arg-type]

    fetching = fetch_data_async("u")
    _ = assert_type(fetching, Coroutine[Any, Any, bytes])
    fetching.close()
    _ = fetch_data_async(3)  # type: ignore[arg-type]

    assert_type(stacked(1), int)
    stacked("1")  # type: ignore[arg-type]


async def check_awaited_results() -> None:
    assert_type(await call_auth_async("t"), dict[str, int])
    assert_type(await fetch_data_async("u"), bytes)
    x: str = await fetch_data_async("u")  # type: ignore[assignment]
    del x


def check_attributes() -> None:
    assert_type(call_auth.circuit_breaker, CircuitBreaker)
    assert_type(call_auth_async.circuit_breaker, CircuitBreaker)
    assert_type(fetch_data.retry_policy, RetryPolicy)
    assert_type(fetch_data_async.retry_policy, RetryPolicy)
    assert_type(stacked.retry_policy, RetryPolicy)
    assert_type(call_auth.circuit_breaker.state, CircuitState)
    fetch_data.circuit_breaker  # type: ignore[attr-defined]
    call_auth.retry_policy  # type: ignore[attr-defined]


def check_execute(cb: CircuitBreaker, policy: RetryPolicy) -> None:
    assert_type(cb.execute(f, 1, "x"), float)
    assert_type(cb.execute(f, a=1, b="x"), float)
    cb.execute(f, "1", "x")  # type: ignore[arg-type]
    cb.execute(f, 1)  # type: ignore[call-arg]
    cb.execute(f, 1, "x", 2)  # type: ignore[call-arg]
    assert_type(policy.execute(f, 1, "x"), float)
    policy.execute(f, 1, 2)  # type: ignore[arg-type]
    assert_type(cb.can_execute(), bool)
    assert_type(cb.state, CircuitState)
    assert_type(cb.wrap(f)(1, "x"), float)


async def check_execute_async(cb: CircuitBreaker, policy: RetryPolicy) -> None:
    assert_type(await cb.execute_async(af, 1, "x"), list[int])
    await cb.execute_async(af, 1, 2)  # type: ignore[arg-type]
    assert_type(await policy.execute_async(af, 1, "x"), list[int])
    await cb.execute_async(f, 1, "x")  # type: ignore[arg-type]


def check_permit_and_errors(cb: CircuitBreaker) -> None:
    with cb.permit():
        pass
    try:
        cb.execute(f, 1, "x")
    except CircuitOpenError as error:
        assert_type(error.name, str)
        assert_type(error.state, CircuitState)
        assert_type(error.retry_after, float)


async def check_async_permit(cb: CircuitBreaker) -> None:
    async with cb.permit():
        pass
