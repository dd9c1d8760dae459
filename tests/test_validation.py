"""Bad input: every constructor rejects it at once, naming the field and the value.

Errors are ValueError (right type, wrong value) or TypeError (wrong type); either
way the message names the field and shows the offending value, and a failed call
leaves nothing half-built behind.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    LoadBalancer,
    LoadBalancerStrategy,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)

NAN = math.nan
INF = math.inf


def assert_rejected(
    build: Callable[[], Any],
    field: str,
    value: Any,
    error: type[Exception] | tuple[type[Exception], ...] = (ValueError, TypeError),
) -> Exception:
    """``build()`` raises ``error`` whose message names ``field`` and shows ``value``."""
    with pytest.raises(error) as caught:
        build()
    message = str(caught.value)
    assert field in message, f"message {message!r} does not name the field {field!r}"
    assert repr(value) in message or str(value) in message, (
        f"message {message!r} does not show the value {value!r}"
    )
    return caught.value


# -- CircuitBreakerConfig ----------------------------------------------------------------

THRESHOLDS = ["failure_threshold", "success_threshold", "half_open_max_calls"]


@pytest.mark.parametrize("field", THRESHOLDS)
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (-(10**9), ValueError),
        (True, TypeError),
        (False, TypeError),
        (2.0, TypeError),
        (2.5, TypeError),
        ("3", TypeError),
        (None, TypeError),
    ],
)
def test_breaker_thresholds_must_be_ints_of_at_least_one(
    field: str, value: Any, error: type[Exception]
) -> None:
    assert_rejected(lambda: CircuitBreakerConfig(**{field: value}), field, value, error)


@pytest.mark.parametrize("field", THRESHOLDS)
@pytest.mark.parametrize("value", [1, 2, 10**6])
def test_breaker_thresholds_accept_positive_ints(field: str, value: int) -> None:
    assert getattr(CircuitBreakerConfig(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-0.001, ValueError),
        (-1, ValueError),
        (NAN, ValueError),
        (INF, ValueError),
        (-INF, ValueError),
        (True, TypeError),
        ("30", TypeError),
        (None, TypeError),
    ],
)
def test_breaker_timeout_must_be_a_finite_number_of_at_least_zero(
    value: Any, error: type[Exception]
) -> None:
    assert_rejected(
        lambda: CircuitBreakerConfig(timeout_seconds=value), "timeout_seconds", value, error
    )


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 30, 1e9])
def test_breaker_timeout_accepts_finite_non_negative_numbers(value: float) -> None:
    assert CircuitBreakerConfig(timeout_seconds=value).timeout_seconds == value


def test_breaker_config_defaults_are_the_specs() -> None:
    config = CircuitBreakerConfig()
    assert (
        config.failure_threshold,
        config.success_threshold,
        config.timeout_seconds,
        config.half_open_max_calls,
    ) == (5, 2, 30.0, 3)


def test_breaker_config_is_frozen() -> None:
    config = CircuitBreakerConfig()
    with pytest.raises(AttributeError):
        config.failure_threshold = 0  # type: ignore[misc]
    assert config.failure_threshold == 5


# -- CircuitBreaker ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"), [("", ValueError), (None, TypeError), (5, TypeError), (b"x", TypeError)]
)
def test_breaker_name_must_be_a_non_empty_string(value: Any, error: type[Exception]) -> None:
    assert_rejected(lambda: CircuitBreaker(value), "name", value, error)


@pytest.mark.parametrize("value", [{"failure_threshold": 3}, "config", 3, CircuitState.OPEN])
def test_breaker_config_must_be_a_config(value: Any) -> None:
    assert_rejected(lambda: CircuitBreaker("svc", value), "config", value, TypeError)


@pytest.mark.parametrize("value", [None, 0.0, "monotonic"])
def test_breaker_clock_must_be_callable(value: Any) -> None:
    assert_rejected(lambda: CircuitBreaker("svc", clock=value), "clock", value, TypeError)


# -- RetryPolicy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, ValueError),
        (True, TypeError),
        (1.0, TypeError),
        (2.5, TypeError),
        ("3", TypeError),
        (None, TypeError),
    ],
)
def test_retry_max_retries_must_be_an_int_of_at_least_zero(
    value: Any, error: type[Exception]
) -> None:
    assert_rejected(lambda: RetryPolicy(max_retries=value), "max_retries", value, error)


@pytest.mark.parametrize("field", ["initial_delay", "max_delay"])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-0.1, ValueError),
        (-1, ValueError),
        (NAN, ValueError),
        (INF, ValueError),
        (-INF, ValueError),
        (True, TypeError),
        ("0.1", TypeError),
        (None, TypeError),
    ],
)
def test_retry_delays_must_be_finite_numbers_of_at_least_zero(
    field: str, value: Any, error: type[Exception]
) -> None:
    assert_rejected(lambda: RetryPolicy(**{field: value}), field, value, error)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0.999, ValueError),
        (0, ValueError),
        (-2, ValueError),
        (NAN, ValueError),
        (INF, ValueError),
        (True, TypeError),
        ("2", TypeError),
        (None, TypeError),
    ],
)
def test_retry_exponential_base_must_be_finite_and_at_least_one(
    value: Any, error: type[Exception]
) -> None:
    assert_rejected(lambda: RetryPolicy(exponential_base=value), "exponential_base", value, error)


def test_retry_accepts_boundary_values() -> None:
    policy = RetryPolicy(max_retries=0, initial_delay=0, max_delay=0, exponential_base=1)
    assert (policy.max_retries, policy.initial_delay, policy.max_delay) == (0, 0, 0)
    assert policy.exponential_base == 1


def test_retry_defaults_are_the_specs() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.initial_delay, policy.max_delay) == (3, 0.1, 10.0)
    assert (policy.exponential_base, policy.jitter) == (2.0, True)


@pytest.mark.parametrize("value", [None, 1, "yes", 0.5])
def test_retry_jitter_must_be_a_bool_or_a_known_mode(value: Any) -> None:
    assert_rejected(lambda: RetryPolicy(jitter=value), "jitter", value)


@pytest.mark.parametrize(
    "value",
    [
        (),
        [ValueError],
        (ValueError, "KeyError"),
        (ValueError, int),
        "ValueError",
        42,
        int,
        str,
        ValueError("an instance, not a type"),
    ],
    ids=[
        "empty-tuple",
        "list",
        "tuple-with-str",
        "tuple-with-non-exception-type",
        "str",
        "int",
        "class-int",
        "class-str",
        "exception-instance",
    ],
)
def test_retry_on_must_be_exception_types_or_a_predicate(value: Any) -> None:
    assert_rejected(lambda: RetryPolicy(retry_on=value), "retry_on", value, TypeError)


@pytest.mark.parametrize(
    "value",
    [ValueError, (KeyError, ValueError), BaseException, lambda exc: False],
    ids=["type", "tuple", "BaseException", "predicate"],
)
def test_retry_on_accepts_types_tuples_and_predicates(value: Any) -> None:
    assert RetryPolicy(retry_on=value).retry_on is value


@pytest.mark.parametrize("field", ["sleep", "async_sleep", "clock"])
@pytest.mark.parametrize("value", [None, 0, "time.sleep"])
def test_retry_injected_callables_must_be_callable(field: str, value: Any) -> None:
    assert_rejected(lambda: RetryPolicy(**{field: value}), field, value, TypeError)


@pytest.mark.parametrize("value", [0, "random", 42.0])
def test_retry_rng_must_be_a_random_instance(value: Any) -> None:
    assert_rejected(lambda: RetryPolicy(rng=value), "rng", value, TypeError)


@pytest.mark.parametrize("value", [0, 0.0, -1, NAN, INF, True, "1"])
def test_retry_attempt_timeout_must_be_a_positive_finite_number(value: Any) -> None:
    assert_rejected(lambda: RetryPolicy(attempt_timeout=value), "attempt_timeout", value)


@pytest.mark.parametrize("value", [-1, -0.5, NAN, INF, True, "1"])
def test_retry_max_elapsed_must_be_a_finite_number_of_at_least_zero(value: Any) -> None:
    assert_rejected(lambda: RetryPolicy(max_elapsed=value), "max_elapsed", value)


def test_retry_timing_options_default_to_none_and_accept_good_values() -> None:
    assert (RetryPolicy().attempt_timeout, RetryPolicy().max_elapsed) == (None, None)
    policy = RetryPolicy(attempt_timeout=0.5, max_elapsed=30)
    assert (policy.attempt_timeout, policy.max_elapsed) == (0.5, 30)


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (True, TypeError), (1.0, TypeError)]
)
def test_get_delay_rejects_bad_attempt_numbers(value: Any, error: type[Exception]) -> None:
    assert_rejected(lambda: RetryPolicy().get_delay(value), "attempt", value, error)


# -- ServiceInstance -----------------------------------------------------------------------


def instance(**overrides: Any) -> ServiceInstance:
    fields: dict[str, Any] = {"id": "svc-1", "host": "10.0.0.1", "port": 8080}
    fields.update(overrides)
    return ServiceInstance(**fields)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (65536, ValueError),
        (10**6, ValueError),
        (True, TypeError),
        (8080.0, TypeError),
        ("8080", TypeError),
        (None, TypeError),
    ],
)
def test_instance_port_must_be_an_int_from_1_to_65535(value: Any, error: type[Exception]) -> None:
    assert_rejected(lambda: instance(port=value), "port", value, error)


@pytest.mark.parametrize("value", [1, 80, 65535])
def test_instance_port_accepts_the_whole_range(value: int) -> None:
    assert instance(port=value).port == value


@pytest.mark.parametrize("field", ["id", "host"])
@pytest.mark.parametrize(
    ("value", "error"), [("", ValueError), (None, TypeError), (7, TypeError), (b"h", TypeError)]
)
def test_instance_id_and_host_must_be_non_empty_strings(
    field: str, value: Any, error: type[Exception]
) -> None:
    assert_rejected(lambda: instance(**{field: value}), field, value, error)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, ValueError),
        (-0.01, ValueError),
        (NAN, ValueError),
        (INF, ValueError),
        (True, TypeError),
        ("1", TypeError),
        (None, TypeError),
    ],
)
def test_instance_weight_must_be_a_finite_number_of_at_least_zero(
    value: Any, error: type[Exception]
) -> None:
    assert_rejected(lambda: instance(weight=value), "weight", value, error)


@pytest.mark.parametrize("value", [0, 0.5, 1, 1000])
def test_instance_weight_accepts_zero_and_positive(value: float) -> None:
    assert instance(weight=value).weight == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("healthy", "yes"),
        ("healthy", 1),
        ("healthy", None),
        ("connections", -1),
        ("connections", True),
        ("connections", 1.0),
        ("metadata", None),
        ("metadata", [("k", "v")]),
    ],
)
def test_instance_other_fields_are_checked_too(field: str, value: Any) -> None:
    assert_rejected(lambda: instance(**{field: value}), field, value)


# -- LoadBalancer --------------------------------------------------------------------------


@pytest.mark.parametrize("member", list(LoadBalancerStrategy))
def test_strategy_accepts_members_and_their_values(member: LoadBalancerStrategy) -> None:
    assert LoadBalancer(member).strategy is member
    assert LoadBalancer(member.value).strategy is member  # type: ignore[arg-type]
    assert LoadBalancer(strategy=member.value).strategy is member  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("bogus", ValueError),
        ("", ValueError),
        ("round-robin", ValueError),
        ("Round_Robin", ValueError),
        (" round_robin", ValueError),
        (0, TypeError),
        (None, TypeError),
        (CircuitState.OPEN, TypeError),
        (LoadBalancerStrategy, TypeError),
    ],
)
def test_strategy_rejects_anything_that_is_not_a_member(value: Any, error: type[Exception]) -> None:
    assert_rejected(lambda: LoadBalancer(value), "strategy", value, error)


def test_assigning_a_bad_strategy_leaves_the_balancer_unchanged() -> None:
    lb = LoadBalancer(LoadBalancerStrategy.ROUND_ROBIN)
    for i in "abc":
        lb.register(instance(id=i))
    assert lb.get_instance().id == "a"  # type: ignore[union-attr]
    for bad in ("bogus", 3, None):
        with pytest.raises((ValueError, TypeError), match="strategy"):
            lb.strategy = bad  # type: ignore[assignment]
        assert lb.strategy is LoadBalancerStrategy.ROUND_ROBIN
    assert [lb.get_instance().id for _ in range(3)] == ["b", "c", "a"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value"), [("name", 5), ("name", None), ("rng", 42), ("rng", "seed")]
)
def test_balancer_name_and_rng_are_checked(field: str, value: Any) -> None:
    assert_rejected(lambda: LoadBalancer(**{field: value}), field, value, TypeError)


def test_balancer_accepts_a_seeded_rng() -> None:
    assert LoadBalancer(rng=random.Random(1)).get_instance() is None


@pytest.mark.parametrize(
    "value",
    [None, "svc-1", {"id": "svc-1", "host": "h", "port": 1}, ("svc-1", "h", 1)],
)
def test_a_failed_register_leaves_the_balancer_unchanged(value: Any) -> None:
    lb = LoadBalancer(LoadBalancerStrategy.LEAST_CONNECTIONS, name="svc")
    kept = instance(id="a")
    lb.register(kept)
    with pytest.raises(TypeError) as caught:
        lb.register(value)
    assert "instance" in str(caught.value)
    assert lb.instances == [kept]
    assert lb.healthy_instances == [kept]
    assert len(lb) == 1
    with lb.connection() as got:
        assert got is kept


@pytest.mark.parametrize("value", ["no", 0, 1, None])
def test_mark_healthy_needs_a_bool_and_changes_nothing_otherwise(value: Any) -> None:
    lb = LoadBalancer()
    lb.register(instance(id="a"))
    assert_rejected(lambda: lb.mark_healthy("a", value), "healthy", value, TypeError)
    assert lb.get("a").healthy is True  # type: ignore[union-attr]
    assert lb.get_instance() is lb.get("a")


# -- ServiceProxy --------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "error"), [("", ValueError), (None, TypeError), (3, TypeError)])
def test_proxy_service_name_must_be_a_non_empty_string(value: Any, error: type[Exception]) -> None:
    assert_rejected(lambda: ServiceProxy(value), "service_name", value, error)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("load_balancer", "lb"),
        ("load_balancer", CircuitBreaker("x")),
        ("circuit_breaker", "cb"),
        ("circuit_breaker", CircuitBreakerConfig()),
        ("retry_policy", "policy"),
        ("retry_policy", 3),
    ],
)
def test_proxy_components_must_have_the_right_types(field: str, value: Any) -> None:
    assert_rejected(lambda: ServiceProxy("orders", **{field: value}), field, value, TypeError)


def test_a_rejected_proxy_leaves_the_given_components_untouched() -> None:
    lb = LoadBalancer()
    assert lb.name == ""
    with pytest.raises(TypeError, match="retry_policy"):
        ServiceProxy("orders", load_balancer=lb, retry_policy="bad")  # type: ignore[arg-type]
    assert lb.name == "", "a failed constructor must not have renamed the balancer"
    with pytest.raises(ValueError, match="service_name"):
        ServiceProxy("", load_balancer=lb)
    assert lb.name == ""
