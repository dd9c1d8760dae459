"""Typed events per component, their delivery guarantees, and the structured log records.

Each component (breaker, proxy, retry policy, load balancer, chaos) delivers its
own events to its subscribers; a listener that raises is logged and never
changes the outcome of the call that caused the event. Transitions and retries
are logged under ``codomyrmex.service_mesh`` with their fields in ``extra``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    LoadBalancer,
    NoHealthyInstanceError,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.events import (
    CallFailed,
    CallRejected,
    CallSucceeded,
    Event,
    InstanceHealthChanged,
    InstancePicked,
    RetryGaveUp,
    RetryScheduled,
    StateTransition,
    publish,
)
from conftest import FakeClock, Flavour

LOGGER = "codomyrmex.service_mesh"
CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(Exception):
    pass


def _raise(event: Event) -> None:
    raise RuntimeError("listener bug")


def _proxy(clock: FakeClock, *ids: str, retries: int = 0, threshold: int = 5) -> ServiceProxy:
    balancer = LoadBalancer(name="svc", clock=clock)
    for n, instance_id in enumerate(ids):
        balancer.register(ServiceInstance(instance_id, "127.0.0.1", 9000 + n))
    breaker = CircuitBreaker(
        "svc", CircuitBreakerConfig(failure_threshold=threshold, timeout_seconds=10.0), clock=clock
    )
    policy = RetryPolicy(
        max_retries=retries,
        initial_delay=0.25,
        jitter=False,
        sleep=clock.sleep,
        async_sleep=clock.async_sleep,
    )
    return ServiceProxy("svc", balancer, breaker, policy, clock=clock)


# -- breaker ---------------------------------------------------------------------------


def test_breaker_events_follow_its_state_machine(clock: FakeClock, flavour: Flavour) -> None:
    breaker = CircuitBreaker(
        "cb",
        CircuitBreakerConfig(failure_threshold=2, success_threshold=1, timeout_seconds=5.0),
        clock=clock,
    )
    seen: list[Event] = []
    listener = seen.append
    breaker.subscribe(listener)

    def fail() -> None:
        raise Boom

    for _ in range(2):
        with pytest.raises(Boom):
            flavour.breaker(breaker, fail)
    with pytest.raises(CircuitOpenError):
        flavour.breaker(breaker, lambda: 1)
    clock.advance(5.0)
    assert flavour.breaker(breaker, lambda: 1) == 1

    assert seen == [
        StateTransition("cb", CLOSED, OPEN),
        CallRejected("cb", "circuit_open", by_breaker=True),
        StateTransition("cb", OPEN, HALF_OPEN),
        StateTransition("cb", HALF_OPEN, CLOSED),
    ]

    breaker.unsubscribe(listener)
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        breaker.execute(lambda: 1)
    assert len(seen) == 4


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: CircuitBreaker("cb"), id="breaker"),
        pytest.param(lambda: RetryPolicy(), id="retry"),
        pytest.param(lambda: ServiceProxy("svc"), id="proxy"),
        pytest.param(lambda: LoadBalancer(name="svc"), id="balancer"),
    ],
)
def test_a_component_unsubscribes_a_bound_method_passed_anew(make: Any) -> None:
    component = make()
    seen: list[Event] = []
    component.subscribe(seen.append)
    component.unsubscribe(seen.append)
    assert component._subscribers == ()


def test_operator_states_publish_transitions_and_forced_rejections(clock: FakeClock) -> None:
    breaker = CircuitBreaker("cb", clock=clock)
    seen: list[Event] = []
    breaker.subscribe(seen.append)
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        breaker.execute(lambda: 1)
    breaker.reset()
    assert seen == [
        StateTransition("cb", CLOSED, CircuitState.FORCED_OPEN),
        CallRejected("cb", "forced_open", by_breaker=True),
        StateTransition("cb", CircuitState.FORCED_OPEN, CLOSED),
    ]


# -- proxy -----------------------------------------------------------------------------


def test_proxy_events_tell_attempts_retries_and_durations(
    clock: FakeClock, flavour: Flavour
) -> None:
    proxy = _proxy(clock, "i1", "i2", retries=2)
    seen: list[Event] = []
    proxy.subscribe(seen.append)
    calls = 0

    def slow_then_ok(instance: ServiceInstance) -> str:
        nonlocal calls
        calls += 1
        clock.advance(0.125 * calls)
        if calls == 1:
            raise Boom(instance.id)
        return instance.id

    assert flavour.proxy(proxy, slow_then_ok) == "i2"

    failed, scheduled, succeeded = seen
    assert isinstance(failed, CallFailed)
    assert (failed.source, failed.instance_id, failed.duration) == ("svc", "i1", 0.125)
    assert isinstance(failed.error, Boom)
    assert scheduled == RetryScheduled("svc", 1, 0.0, failed.error)  # failover: no wait
    assert succeeded == CallSucceeded("svc", "i2", 0.25, 2)


def test_proxy_gives_up_and_rejects_with_typed_reasons(clock: FakeClock, flavour: Flavour) -> None:
    proxy = _proxy(clock, "i1", retries=1)
    seen: list[Event] = []
    proxy.subscribe(seen.append)

    def fail(instance: ServiceInstance) -> None:
        raise Boom(instance.id)

    with pytest.raises(Boom):
        flavour.proxy(proxy, fail)
    gave_up = seen[-1]
    assert isinstance(gave_up, RetryGaveUp)
    assert gave_up.attempts == 2
    assert isinstance(gave_up.error, Boom)

    proxy.load_balancer.mark_healthy("i1", False)
    with pytest.raises(NoHealthyInstanceError):
        flavour.proxy(proxy, fail)
    assert seen[-1] == CallRejected("svc", "no_healthy_instance")


def test_balancer_events_picks_and_health(clock: FakeClock) -> None:
    balancer = LoadBalancer(name="svc")
    balancer.register(ServiceInstance("i1", "127.0.0.1", 9000))
    seen: list[Event] = []
    balancer.subscribe(seen.append)
    balancer.get_instance()
    balancer.mark_healthy("i1", False)
    balancer.mark_healthy("i1", False)  # no change, no event
    balancer.mark_healthy("i1", True)
    assert seen == [
        InstancePicked("svc", "i1"),
        InstanceHealthChanged("svc", "i1", False),
        InstanceHealthChanged("svc", "i1", True),
    ]


def test_standalone_retry_policy_events(clock: FakeClock, flavour: Flavour) -> None:
    policy = RetryPolicy(
        max_retries=1,
        initial_delay=1.0,
        jitter=False,
        sleep=clock.sleep,
        async_sleep=clock.async_sleep,
        name="job",
    )
    seen: list[Event] = []
    policy.subscribe(seen.append)

    def fail() -> None:
        raise Boom

    with pytest.raises(Boom):
        flavour.retry(policy, fail)
    assert [type(e) for e in seen] == [RetryScheduled, RetryGaveUp]
    assert seen[0].source == "job"
    assert clock.sleeps == [1.0]


# -- delivery guarantees ---------------------------------------------------------------


def test_a_raising_listener_never_breaks_a_call(
    clock: FakeClock, flavour: Flavour, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = _proxy(clock, "i1", threshold=1)
    after: list[Event] = []
    for component in (proxy, proxy.circuit_breaker, proxy.load_balancer):
        component.subscribe(_raise)
    proxy.subscribe(after.append)

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert flavour.proxy(proxy, lambda instance: instance.id) == "i1"

        def fail(instance: ServiceInstance) -> None:
            raise Boom

        with pytest.raises(Boom):
            flavour.proxy(proxy, fail)
        with pytest.raises(CircuitOpenError):
            flavour.proxy(proxy, fail)

    # The service breaker (threshold 1) judged the failed call and refuses the next one
    # before any attempt: the proxy reports it as its own rejection.
    assert [type(e) for e in after] == [CallSucceeded, CallFailed, RetryGaveUp, CallRejected]
    assert after[-1] == CallRejected("svc", "circuit_open")
    broken = [r for r in caplog.records if "event listener" in r.getMessage()]
    assert broken, "a raising listener is logged"
    assert all(r.exc_info is not None for r in broken)
    assert proxy.load_balancer.instances[0].connections == 0


def test_publish_delivers_to_every_listener_in_order_despite_failures() -> None:
    got: list[str] = []
    publish(
        (lambda e: got.append("a"), _raise, lambda e: got.append("c")),
        CallRejected("x", "bulkhead_full"),
    )
    assert got == ["a", "c"]


def test_events_are_frozen_values() -> None:
    event = CallRejected("svc", "circuit_open")
    assert event == CallRejected("svc", "circuit_open")
    with pytest.raises(AttributeError):
        event.reason = "other"  # type: ignore[misc]


# -- logging ---------------------------------------------------------------------------


def _records(caplog: pytest.LogCaptureFixture, field: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and hasattr(r, field)]


def test_transitions_are_logged_with_structured_fields(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker(
        "payments",
        CircuitBreakerConfig(failure_threshold=1, success_threshold=1, timeout_seconds=1.0),
        clock=clock,
    )
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        breaker.record_failure()
        clock.advance(1.0)
        breaker.execute(lambda: None)

    records = _records(caplog, "breaker")
    fields = [(r.levelno, r.breaker, r.old_state, r.new_state) for r in records]  # type: ignore[attr-defined]
    assert fields == [
        (logging.WARNING, "payments", "closed", "open"),
        (logging.INFO, "payments", "open", "half_open"),
        (logging.INFO, "payments", "half_open", "closed"),
    ]
    assert records[0].getMessage() == "circuit payments: closed -> open"


def test_retries_are_logged_with_service_attempt_and_delay(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = _proxy(clock, "i1", "i2", retries=1)

    def fail(instance: ServiceInstance) -> None:
        raise Boom

    with caplog.at_level(logging.DEBUG, logger=LOGGER), pytest.raises(Boom):
        proxy.call(fail)

    scheduled = [r for r in _records(caplog, "attempt") if r.levelno == logging.DEBUG]
    gave_up = [r for r in _records(caplog, "attempt") if r.levelno == logging.INFO]
    assert [(r.service, r.attempt, r.delay) for r in scheduled] == [("svc", 1, 0.0)]  # type: ignore[attr-defined]  # failover
    assert [(r.service, r.attempt) for r in gave_up] == [("svc", 2)]  # type: ignore[attr-defined]
    # Each record names the instance whose attempt failed: i1 first, then the failover i2.
    assert [r.instance for r in scheduled + gave_up] == ["i1", "i2"]  # type: ignore[attr-defined]


def test_a_retry_refused_by_the_budget_is_a_typed_rejection(clock: FakeClock) -> None:
    from codomyrmex.service_mesh import TokenBucketRetryBudget

    balancer = LoadBalancer(name="svc")
    balancer.register(ServiceInstance("i1", "127.0.0.1", 9000))
    policy = RetryPolicy(
        max_retries=3,
        jitter=False,
        sleep=clock.sleep,
        budget=TokenBucketRetryBudget(max_tokens=2, token_ratio=0.1),
    )
    proxy = ServiceProxy("svc", balancer, None, policy, clock=clock)
    seen: list[Event] = []
    proxy.subscribe(seen.append)

    def fail(instance: ServiceInstance) -> None:
        raise Boom

    with pytest.raises(Boom):
        proxy.call(fail)  # 2 tokens -> 1 after the failure: not above half, refused
    kinds = [type(e).__name__ for e in seen]
    assert kinds == ["CallFailed", "CallRejected", "RetryGaveUp"], kinds
    rejected = seen[1]
    assert isinstance(rejected, CallRejected) and rejected.reason == "retry_budget"
    assert clock.sleeps == []


def test_nothing_is_logged_below_the_configured_level(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = _proxy(clock, "i1", retries=1)

    def fail(instance: ServiceInstance) -> Any:
        raise Boom

    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(Boom):
        proxy.call(fail)
    assert [r for r in caplog.records if r.name == LOGGER] == []
