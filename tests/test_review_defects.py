"""Regression tests for the defects of issue 15 (retry, budgets, breaker, decorators, store).

Each test names its item; each fails on the code before its fix. Time comes from
the ``clock`` fixture or a :class:`ManualTimer`; nothing sleeps.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    LoadBalancer,
    LoadBalancerStrategy,
    Mesh,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
    TokenBucketRetryBudget,
)


class Boom(Exception):
    """A handler's failure."""


def make_lb(ids: str = "ab") -> LoadBalancer:
    lb = LoadBalancer(LoadBalancerStrategy.ROUND_ROBIN, rng=random.Random(0))
    for k, i in enumerate(ids):
        lb.register(ServiceInstance(id=i, host=f"10.0.0.{k + 1}", port=8080))
    return lb


def fail(inst: ServiceInstance) -> None:
    raise Boom(inst.id)


# -- item 3: call_once's budget accounting ---------------------------------------------------


def test_item3_call_once_failures_cost_what_its_successes_refund(flavour: Any, clock: Any) -> None:
    budget = TokenBucketRetryBudget(max_tokens=10, token_ratio=0.5)
    policy = RetryPolicy(
        budget=budget, sleep=clock.sleep, async_sleep=clock.async_sleep, clock=clock
    )
    proxy = ServiceProxy("orders", make_lb(), retry_policy=policy)
    once = flavour.make_async(fail) if flavour.is_async else fail
    for _ in range(3):
        with pytest.raises(Boom):
            if flavour.is_async:
                flavour.run(proxy.call_once_async(once))
            else:
                proxy.call_once(once)
    assert budget.tokens == 7.0  # each failure cost one token
    if flavour.is_async:
        flavour.run(proxy.call_once_async(flavour.make_async(lambda inst: inst.id)))
    else:
        proxy.call_once(lambda inst: inst.id)
    assert budget.tokens == 7.5  # and a success refunds token_ratio


# -- item 5: the slow-call threshold is exclusive --------------------------------------------


def test_item5_a_call_lasting_exactly_the_threshold_is_not_slow(flavour: Any, clock: Any) -> None:
    config = CircuitBreakerConfig(
        slow_call_duration_threshold=2.0,
        slow_call_rate_threshold=100.0,
        sliding_window_size=1,
        minimum_number_of_calls=1,
    )
    cb = CircuitBreaker("svc", config, clock=clock)

    def lasting(seconds: float) -> Any:
        def call() -> str:
            clock.advance(seconds)
            return "ok"

        return call

    flavour.breaker(cb, lasting(2.0))
    assert cb.metrics["slow_calls"] == 0
    assert cb.state is CircuitState.CLOSED
    flavour.breaker(cb, lasting(2.001))
    assert cb.metrics["slow_calls"] == 1
    assert cb.state is CircuitState.OPEN


# -- item 7: gRPC's bounds on the token bucket ------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"token_ratio": 0}, "token_ratio"),
        ({"token_ratio": 0.0}, "token_ratio"),
        ({"token_ratio": 1.5}, "token_ratio"),
        ({"max_tokens": 1001}, "max_tokens"),
        ({"max_tokens": 1e9}, "max_tokens"),
    ],
)
def test_item7_token_bucket_bounds(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field) as caught:
        TokenBucketRetryBudget(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(caught.value)


def test_item7_token_bucket_accepts_grpcs_limits() -> None:
    budget = TokenBucketRetryBudget(max_tokens=1000, token_ratio=1.0)
    assert (budget.max_tokens, budget.token_ratio) == (1000.0, 1.0)


# -- item 9 (and item 27: the max_open_seconds floor) ------------------------------------------


def test_item9_max_open_seconds_below_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_open_seconds") as caught:
        CircuitBreakerConfig(timeout_seconds=30.0, max_open_seconds=10.0)
    assert "10.0" in str(caught.value)


def reopen_waits(clock: Any, cb: CircuitBreaker, reopenings: int) -> list[float]:
    waits = []
    cb.record_failure()
    for _ in range(reopenings + 1):
        assert cb.state is CircuitState.OPEN
        waits.append(cb.retry_after())
        clock.advance(waits[-1])
        assert cb.state is CircuitState.HALF_OPEN
        cb.record_failure()
    return waits


def test_item27_max_open_seconds_equal_to_the_timeout_holds_the_wait(clock: Any) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1, timeout_seconds=4.0, open_backoff_multiplier=3.0, max_open_seconds=4.0
    )
    cb = CircuitBreaker("svc", config, clock=clock)
    assert reopen_waits(clock, cb, 3) == [4.0, 4.0, 4.0, 4.0]


def test_item27_the_grown_wait_stops_at_max_open_seconds(clock: Any) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1,
        timeout_seconds=4.0,
        open_backoff_multiplier=3.0,
        max_open_seconds=20.0,
    )
    cb = CircuitBreaker("svc", config, clock=clock)
    assert reopen_waits(clock, cb, 3) == [4.0, 12.0, 20.0, 20.0]


# -- item 22: bad store arguments ---------------------------------------------------------------


@pytest.mark.parametrize("store", ["redis://localhost:6379", 42, object(), {"bind": 1}])
def test_item22_a_breaker_refuses_a_bad_store_naming_it(store: Any) -> None:
    with pytest.raises(TypeError, match="store") as caught:
        CircuitBreaker("svc", store=store)
    assert repr(store) in str(caught.value)


@pytest.mark.parametrize("store", ["redis://localhost:6379", 42, object()])
def test_item22_a_mesh_refuses_a_bad_store_at_construction(store: Any) -> None:
    with pytest.raises(TypeError, match="store") as caught:
        Mesh(store=store)
    assert repr(store) in str(caught.value)
