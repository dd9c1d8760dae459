"""Safe defaults (issue 14): what each default protects against, one behaviour per test.

The fault matrix against real backends is in tests/integrations/clients/test_fault_matrix.py; these
tests pin down the individual defaults with injected clocks and no network.
"""

from __future__ import annotations

import math

import pytest

from codomyrmex.service_mesh import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    RetryPolicy,
)


class Boom(Exception):
    """A failure of the called service."""


def boom() -> None:
    raise Boom


def test_a_slow_call_threshold_alone_keeps_failures_opening_the_breaker() -> None:
    now = [0.0]
    config = CircuitBreakerConfig(slow_call_duration_threshold=1.0, minimum_number_of_calls=10)
    cb = CircuitBreaker("slow-only", config, clock=lambda: now[0])
    for _ in range(10):  # fast failures: no call is slow, every call fails
        with pytest.raises(Boom):
            cb.execute(boom)
    assert cb.state is CircuitState.OPEN
    assert config.window_failure_rate == 50.0


def test_the_default_failure_rate_of_a_windowed_breaker_is_half_the_calls() -> None:
    config = CircuitBreakerConfig(slow_call_duration_threshold=1.0, minimum_number_of_calls=10)
    cb = CircuitBreaker("half", config, clock=lambda: 0.0)
    for i in range(10):  # 4 failures of 10: below 50%
        if i < 4:
            with pytest.raises(Boom):
                cb.execute(boom)
        else:
            cb.execute(lambda: None)
    assert cb.state is CircuitState.CLOSED
    with pytest.raises(Boom):
        cb.execute(boom)  # 5 of the last 10 (count window of 100 holds 11: 5/11 < 50%)
    with pytest.raises(Boom):
        cb.execute(boom)  # 6 of 12: 50%
    assert cb.state is CircuitState.OPEN


def test_a_full_bulkhead_is_a_rejection_the_default_policy_does_not_retry() -> None:
    bulkhead = Bulkhead(1)
    bulkhead.acquire()
    calls = []

    def guarded() -> None:
        calls.append(1)
        bulkhead.acquire()

    policy = RetryPolicy(max_retries=3, initial_delay=0.0)
    with pytest.raises(BulkheadFullError):
        policy.execute(guarded)
    assert calls == [1]


def test_an_operator_held_circuit_says_so_instead_of_retry_after_inf() -> None:
    cb = CircuitBreaker("held")
    cb.force_open()
    with pytest.raises(CircuitOpenError) as caught:
        cb.execute(lambda: None)
    assert math.isinf(caught.value.retry_after)
    assert "inf" not in str(caught.value)
    assert "until an operator resets it" in str(caught.value)
