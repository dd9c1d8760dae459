"""Passive outlier detection (Envoy semantics) and panic mode, on the fake clock.

Outcomes reach the balancer the way they do in production: through
``lb.connection()`` blocks and ``ServiceProxy`` calls.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    LoadBalancer,
    LoadBalancerStrategy,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.events import (
    Event,
    InstanceEjected,
    InstanceHealthChanged,
    InstanceReturned,
)
from codomyrmex.service_mesh.outlier import DEFAULT_OUTLIER_DETECTION, OutlierDetectionConfig

RR = LoadBalancerStrategy.ROUND_ROBIN


class Abort(BaseException):
    """A non-Exception interruption (like a cancellation)."""


def inst(id: str) -> ServiceInstance:
    return ServiceInstance(id=id, host="10.0.0.1", port=8080)


def make_lb(
    clock: Any,
    ids: Iterable[str] = "abc",
    *,
    strategy: LoadBalancerStrategy = RR,
    events: list[Event] | None = None,
    **config: Any,
) -> LoadBalancer:
    panic = config.pop("panic_threshold", 0.0)
    config.setdefault("max_ejection_percent", 100.0)
    lb = LoadBalancer(
        strategy,
        name="svc",
        rng=random.Random(0),
        clock=clock,
        outlier_detection=OutlierDetectionConfig(**config),
        panic_threshold=panic,
    )
    for i in ids:
        lb.register(inst(i))
    if events is not None:
        lb.subscribe(events.append)
    return lb


def call(lb: LoadBalancer, fail: set[str], error: BaseException | None = None) -> str:
    """One call through ``lb.connection()``; it fails (raises) on the instances in ``fail``."""
    try:
        with lb.connection() as instance:
            if instance.id in fail:
                raise error if error is not None else ConnectionError(instance.id)
            return instance.id
    except (ConnectionError, ValueError, Abort) as exc:
        return f"failed:{exc}"


def succeed_on(lb: LoadBalancer, target: str, times: int) -> None:
    """Drive calls until ``target`` succeeded ``times`` times."""
    done = 0
    for _ in range(50 * (times + 1)):
        if done == times:
            return
        if call(lb, set()) == target:
            done += 1
    assert done == times, "target was never picked"


def fail_on(lb: LoadBalancer, target: str, times: int) -> None:
    """Round robin: drive calls until ``target`` failed ``times`` times; the others succeed."""
    failed = 0
    for _ in range(50 * (times + 1)):
        if failed == times:
            return
        picked = call(lb, {target})
        if picked == f"failed:{target}":
            failed += 1
    assert failed == times, "target was never picked"


def picked_ids(lb: LoadBalancer, n: int = 30) -> set[str]:
    return {lb.get_instance().id for _ in range(n)}  # type: ignore[union-attr]


# -- ejection and return ----------------------------------------------------------


def test_consecutive_failures_eject_and_time_returns(clock: Any) -> None:
    events: list[Event] = []
    lb = make_lb(clock, events=events, consecutive_failures=3, base_ejection_time=30.0)
    fail_on(lb, "b", 2)
    assert not lb.is_ejected("b")
    fail_on(lb, "b", 1)
    assert lb.is_ejected("b")
    assert [i.id for i in lb.ejected_instances] == ["b"]
    assert picked_ids(lb) == {"a", "c"}
    b = lb.get("b")
    assert b is not None and b.healthy is True  # ejection is not the operator's health flag
    assert [i.id for i in lb.healthy_instances] == ["a", "c"]
    ejected = [e for e in events if isinstance(e, InstanceEjected)]
    assert ejected == [InstanceEjected("svc", "b", "consecutive_failures", 30.0)]

    clock.advance(29.9)
    assert picked_ids(lb) == {"a", "c"}
    clock.advance(0.1)
    assert picked_ids(lb) == {"a", "b", "c"}
    assert not lb.is_ejected("b")
    returned = [e for e in events if isinstance(e, InstanceReturned)]
    assert returned == [InstanceReturned("svc", "b", "ejection_time_elapsed")]


def test_a_success_resets_the_consecutive_count(clock: Any) -> None:
    lb = make_lb(clock, consecutive_failures=3)
    for _ in range(5):
        fail_on(lb, "b", 2)
        succeed_on(lb, "b", 1)
    assert not lb.is_ejected("b")
    assert lb.outlier_detector is not None
    assert lb.outlier_detector.stats()["ejections_total"] == 0


def test_ejection_time_grows_with_each_ejection_up_to_the_cap(clock: Any) -> None:
    events: list[Event] = []
    lb = make_lb(
        clock,
        events=events,
        consecutive_failures=1,
        base_ejection_time=30.0,
        max_ejection_time=70.0,
        interval=1000.0,  # no decay within this test
    )
    durations = []
    for _ in range(5):
        fail_on(lb, "b", 1)
        assert lb.is_ejected("b")
        duration = [e for e in events if isinstance(e, InstanceEjected)][-1].duration
        durations.append(duration)
        clock.advance(duration)
        assert not lb.is_ejected("b")
    assert durations == [30.0, 60.0, 70.0, 70.0, 70.0]


def test_multiplier_decays_while_the_instance_behaves(clock: Any) -> None:
    events: list[Event] = []
    lb = make_lb(
        clock,
        events=events,
        consecutive_failures=1,
        base_ejection_time=30.0,
        max_ejection_time=300.0,
        interval=10.0,
    )

    def eject_b() -> float:
        fail_on(lb, "b", 1)
        return [e for e in events if isinstance(e, InstanceEjected)][-1].duration

    assert eject_b() == 30.0
    clock.advance(30.0)
    assert eject_b() == 60.0  # right after returning: multiplier 2
    clock.advance(60.0)
    clock.advance(35.0)  # in service 35 s: one step down (at base_ejection_time)
    assert eject_b() == 60.0  # 2 - 1 + 1
    clock.advance(60.0)
    clock.advance(45.0)  # 45 s: base + 1 interval: two steps down
    assert eject_b() == 30.0  # 2 - 2 + 1
    clock.advance(30.0)
    clock.advance(1000.0)  # long in service: back to the first ejection's length
    assert eject_b() == 30.0


def test_failure_rate_over_the_window_ejects(clock: Any) -> None:
    events: list[Event] = []
    lb = make_lb(
        clock,
        ids="ab",
        events=events,
        consecutive_failures=None,
        failure_rate_threshold=50.0,
        failure_rate_minimum_calls=20,
        failure_rate_minimum_hosts=1,
        interval=10.0,
    )
    # b fails every other call (never two in a row): 50% once it has had 20 calls.
    for k in range(19):
        if k % 2 == 0:
            fail_on(lb, "b", 1)
        else:
            succeed_on(lb, "b", 1)
    assert not lb.is_ejected("b")
    succeed_on(lb, "b", 1)
    fail_on(lb, "b", 1)
    assert lb.is_ejected("b")
    assert [e.reason for e in events if isinstance(e, InstanceEjected)] == ["failure_rate"]


def test_failure_rate_window_starts_over_each_interval(clock: Any) -> None:
    lb = make_lb(
        clock,
        ids="ab",
        consecutive_failures=None,
        failure_rate_threshold=50.0,
        failure_rate_minimum_calls=10,
        failure_rate_minimum_hosts=1,
        interval=10.0,
    )
    for _ in range(3):
        for k in range(8):  # 8 calls per window, 50% failures: never enough calls
            if k % 2 == 0:
                fail_on(lb, "b", 1)
            else:
                succeed_on(lb, "b", 1)
        clock.advance(10.0)
    assert not lb.is_ejected("b")


def test_failure_predicate_decides_what_counts(clock: Any) -> None:
    lb = make_lb(
        clock,
        consecutive_failures=2,
        failure_predicate=lambda exc: not isinstance(exc, ValueError),
    )
    for _ in range(6):
        for _ in range(3):
            call(lb, {"b"}, ValueError("a client error"))
    assert not lb.is_ejected("b")
    fail_on(lb, "b", 2)
    assert lb.is_ejected("b")


def test_cancelled_calls_and_mesh_rejections_do_not_count(clock: Any) -> None:
    lb = make_lb(clock, ids="a", consecutive_failures=2, max_ejection_percent=100.0)
    for _ in range(5):
        assert call(lb, {"a"}, Abort()) == "failed:"
    assert not lb.is_ejected("a")
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    proxy = ServiceProxy("svc", lb, breaker, RetryPolicy(max_retries=0))
    breaker.force_open()
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            proxy.call(lambda instance: instance.id)
    assert not lb.is_ejected("a")


def test_outcomes_through_a_service_proxy_eject(clock: Any) -> None:
    lb = make_lb(clock, consecutive_failures=3)
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=100), clock=clock)
    proxy = ServiceProxy("svc", lb, breaker, RetryPolicy(max_retries=2, initial_delay=0.0))

    def handler(instance: ServiceInstance) -> str:
        if instance.id == "c":
            raise ConnectionError("c is broken")
        return instance.id

    answers = [proxy.call(handler) for _ in range(12)]  # retries hide c's failures
    assert "c" not in answers
    assert lb.is_ejected("c")


# -- caps -------------------------------------------------------------------------


def test_max_ejection_percent_caps_simultaneous_ejections(clock: Any) -> None:
    ids = [f"i{k}" for k in range(20)]
    lb = make_lb(clock, ids=ids, consecutive_failures=1, max_ejection_percent=10.0)
    for target in ["i1", "i2", "i3", "i4"]:
        fail_on(lb, target, 1)
    assert [i.id for i in lb.ejected_instances] == ["i1", "i2"]  # 10% of 20
    detector = lb.outlier_detector
    assert detector is not None
    assert detector.stats() == {"ejected": 2, "ejections_total": 2, "ejections_overflow": 2}
    lb.deregister("i1")  # one fewer ejected: room for another (10% of 19 -> 1, still full)
    fail_on(lb, "i3", 1)
    assert [i.id for i in lb.ejected_instances] == ["i2"]


def test_at_least_one_instance_may_always_be_ejected(clock: Any) -> None:
    lb = make_lb(clock, ids="abc", consecutive_failures=1, max_ejection_percent=0.0)
    fail_on(lb, "a", 1)
    fail_on(lb, "b", 1)
    assert [i.id for i in lb.ejected_instances] == ["a"]


def test_default_max_ejection_percent_is_ten() -> None:
    config = OutlierDetectionConfig()
    assert (config.max_ejection_percent, config.consecutive_failures) == (10.0, 5)
    assert (config.base_ejection_time, config.max_ejection_time) == (30.0, 300.0)


def test_ejection_and_operator_health_are_separate(clock: Any) -> None:
    events: list[Event] = []
    lb = make_lb(clock, events=events, consecutive_failures=1, base_ejection_time=30.0)
    fail_on(lb, "b", 1)
    lb.mark_healthy("b", False)
    lb.mark_healthy("b", True)  # the operator's word does not cancel the ejection
    assert lb.is_ejected("b")
    assert picked_ids(lb) == {"a", "c"}
    lb.mark_healthy("b", False)
    clock.advance(30.0)  # the ejection ends, but b is still unhealthy
    assert not lb.is_ejected("b")
    assert picked_ids(lb) == {"a", "c"}
    lb.mark_healthy("b", True)
    assert picked_ids(lb) == {"a", "b", "c"}
    changes = [(e.instance_id, e.healthy) for e in events if isinstance(e, InstanceHealthChanged)]
    assert changes == [("b", False), ("b", True), ("b", False), ("b", True)]


def test_every_instance_ejected_means_no_instance(clock: Any) -> None:
    lb = make_lb(clock, ids="ab", consecutive_failures=1)
    fail_on(lb, "a", 1)
    fail_on(lb, "b", 1)
    assert lb.is_ejected("a") and lb.is_ejected("b")
    assert lb.get_instance() is None
    clock.advance(30.0)
    assert picked_ids(lb) == {"a", "b"}


def test_a_sole_instance_is_never_ejected(clock: Any) -> None:
    events: list[Event] = []
    lb = make_lb(clock, ids="a", events=events, consecutive_failures=1)
    fail_on(lb, "a", 10)
    assert not lb.is_ejected("a"), "there is nowhere else to go"
    assert lb.get_instance() is lb.get("a")
    assert not [e for e in events if isinstance(e, InstanceEjected)]
    lb.register(inst("b"))  # with somewhere else to go, the next failure ejects it
    fail_on(lb, "a", 1)
    assert lb.is_ejected("a")


# -- panic ------------------------------------------------------------------------


def test_panic_threshold_picks_among_all_instances(clock: Any) -> None:
    lb = make_lb(clock, ids="abcd", consecutive_failures=1, panic_threshold=50.0)
    fail_on(lb, "a", 1)
    lb.mark_healthy("b", False)
    assert not lb.panicking  # 2 of 4 available: 50% is not below 50%
    assert picked_ids(lb) == {"c", "d"}
    lb.mark_healthy("c", False)  # 1 of 4 available: panic
    assert lb.panicking
    assert picked_ids(lb) == {"a", "b", "c", "d"}
    lb.mark_healthy("c", True)
    assert not lb.panicking
    assert picked_ids(lb) == {"c", "d"}
    lb.register(inst("e"))  # 3 of 5
    assert picked_ids(lb) == {"c", "d", "e"}


def test_panic_keeps_round_robin_order(clock: Any) -> None:
    lb = make_lb(clock, ids="abcd", consecutive_failures=1, panic_threshold=60.0)
    lb.mark_healthy("a", False)  # 3 of 4 available
    assert [lb.get_instance().id for _ in range(3)] == ["b", "c", "d"]  # type: ignore[union-attr]
    lb.mark_healthy("b", False)  # 2 of 4: panic, all four in registration order
    assert [lb.get_instance().id for _ in range(4)] == ["a", "b", "c", "d"]  # type: ignore[union-attr]


@pytest.mark.parametrize("strategy", list(LoadBalancerStrategy))
def test_panic_and_ejection_work_with_every_strategy(
    clock: Any, strategy: LoadBalancerStrategy
) -> None:
    lb = make_lb(clock, ids="abcd", strategy=strategy, consecutive_failures=1, panic_threshold=50.0)
    lb.mark_healthy("d", False)
    for _ in range(200):  # fail every call on a: it is ejected at its first pick
        if lb.is_ejected("a"):
            break
        call(lb, {"a"})
    assert lb.is_ejected("a")
    assert picked_ids(lb, 200) == {"b", "c"}
    lb.mark_healthy("c", False)
    assert lb.panicking
    if strategy is LoadBalancerStrategy.LEAST_CONNECTIONS:
        # a's failure is a load penalty: it is picked only once the others are busier
        assert picked_ids(lb, 400) == {"b", "c", "d"}
        with ExitStack() as stack:
            held = [stack.enter_context(lb.connection()).id for _ in range(12)]
        assert set(held) == {"a", "b", "c", "d"}, held
    elif strategy is LoadBalancerStrategy.PEAK_EWMA:
        # a's failure counts as a slow call: it is picked only once the others are slower
        assert picked_ids(lb, 400) == {"b", "c", "d"}
        slow: list[str] = []
        for _ in range(8):  # 12 s on the fake clock: a's 30 s ejection does not end
            with lb.connection() as picked:
                slow.append(picked.id)
                clock.advance(1.5)
        assert "a" in slow, slow
        assert lb.is_ejected("a")
    else:
        assert picked_ids(lb, 400) == {"a", "b", "c", "d"}
    with lb.connection() as held_one:
        assert held_one.connections == 1
    assert all(i.connections == 0 for i in lb.instances)


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("consecutive_failures", 0, ValueError),
        ("consecutive_failures", 2.5, TypeError),
        ("interval", 0.0, ValueError),
        ("base_ejection_time", -1.0, ValueError),
        ("max_ejection_time", float("nan"), ValueError),
        ("max_ejection_percent", 101.0, ValueError),
        ("failure_rate_threshold", 0.0, ValueError),
        ("failure_rate_minimum_calls", 0, ValueError),
        ("failure_predicate", 3, TypeError),
        ("failure_rate_minimum_hosts", 0, ValueError),
        ("success_rate_stdev_factor", -1.0, ValueError),
        ("success_rate_stdev_factor", "1.9", TypeError),
        ("success_rate_minimum_hosts", 0, ValueError),
        ("success_rate_request_volume", 1.5, TypeError),
    ],
)
def test_config_validates_each_field(field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        OutlierDetectionConfig(**{field: value})


def test_config_is_frozen_and_needs_a_detector() -> None:
    config = OutlierDetectionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.interval = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="consecutive_failures"):
        OutlierDetectionConfig(consecutive_failures=None)
    with pytest.raises(TypeError, match="outlier_detection"):
        LoadBalancer(outlier_detection={"consecutive_failures": 5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="panic_threshold"):
        LoadBalancer(panic_threshold=150)


def test_without_detection_no_clock_is_read_per_call() -> None:
    def clock() -> float:
        raise AssertionError("a balancer that observes nothing must not read the clock")

    lb = LoadBalancer(clock=clock, outlier_detection=None)
    assert lb.observe_clock is None
    lb.register(inst("a"))
    with lb.connection():
        pass
    assert lb.outlier_detector is None


def test_detection_is_on_by_default() -> None:
    detector = LoadBalancer().outlier_detector
    assert detector is not None
    assert detector.config == DEFAULT_OUTLIER_DETECTION
    assert DEFAULT_OUTLIER_DETECTION.consecutive_failures == 5
    assert DEFAULT_OUTLIER_DETECTION.max_ejection_percent == 50.0
    assert LoadBalancer(outlier_detection=None).outlier_detector is None


def test_a_raising_listener_is_logged_not_propagated(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lb = make_lb(clock, consecutive_failures=1)

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    lb.subscribe(broken)
    fail_on(lb, "a", 1)
    assert lb.is_ejected("a")
    assert "listener bug" in caplog.text
    lb.unsubscribe(broken)


def test_the_default_ejects_after_five_failures_and_at_most_half_the_pool(clock: Any) -> None:
    lb = LoadBalancer(RR, name="svc", clock=clock)
    for i in "abc":
        lb.register(inst(i))
    fail_on(lb, "b", 4)
    assert not lb.is_ejected("b")
    fail_on(lb, "b", 1)
    assert lb.is_ejected("b")
    assert picked_ids(lb) == {"a", "c"}
    fail_on(lb, "c", 5)
    assert not lb.is_ejected("c"), "a second ejection would take out more than half of three"
    clock.advance(30.0)
    assert picked_ids(lb) == {"a", "b", "c"}
    assert not lb.is_ejected("b")


def test_a_raising_failure_predicate_is_logged_and_the_callers_error_kept(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression (issue 15.16): the predicate's own exception replaced the caller's error.
    def predicate(exc: BaseException) -> bool:
        raise KeyError("predicate bug")

    # Two instances (a sole one is never ejected); round robin: a, b, a, b.
    lb = make_lb(clock, ids="ab", consecutive_failures=2, failure_predicate=predicate)
    for _ in range(4):
        with pytest.raises(ConnectionError, match="the real error"):
            with lb.connection():
                raise ConnectionError("the real error")
    assert "predicate bug" in caplog.text
    assert lb.is_ejected("a")  # a raising predicate counts the call as failed


# -- Envoy's success-rate ejection, minimum hosts, timed returns (issue 15 item 18) -------


def drive(lb: LoadBalancer, rounds: int, failing: dict[str, int]) -> None:
    """Round robin over every instance ``rounds`` times; instance i fails failing[i] of 10."""
    for r in range(rounds):
        for _ in range(len(lb)):
            try:
                with lb.connection() as instance:
                    if r % 10 < failing.get(instance.id, 0):
                        raise ConnectionError(instance.id)
            except ConnectionError:
                pass


def test_failure_rate_needs_the_minimum_number_of_judged_hosts(clock: Any) -> None:
    options: dict[str, Any] = {
        "consecutive_failures": None,
        "failure_rate_threshold": 50.0,
        "failure_rate_minimum_calls": 20,
    }
    few = make_lb(clock, ids="ab", **options)  # Envoy's default: 5 hosts with enough calls
    drive(few, 40, {"b": 6})
    assert not few.is_ejected("b")
    many = make_lb(clock, ids="abcde", **options)
    drive(many, 40, {"b": 6})
    assert many.is_ejected("b")
    # b always fails: at its 20th call only a and b have 20 calls; at its 21st, all do.
    exact = make_lb(clock, ids="abcde", **options)
    drive(exact, 20, {"b": 10})
    assert not exact.is_ejected("b")
    drive(exact, 1, {"b": 10})
    assert exact.is_ejected("b")


def test_success_rate_ejects_below_mean_minus_stdev_factor(clock: Any) -> None:
    events: list[Event] = []
    lb = make_lb(
        clock,
        ids=[f"i{k}" for k in range(6)],
        events=events,
        consecutive_failures=None,
        success_rate_stdev_factor=1.9,
        success_rate_request_volume=50,
        interval=10.0,
    )
    drive(lb, 100, {"i4": 3})  # i4: 70% against 100% for the others
    assert not lb.is_ejected("i4")  # judged only when the interval ends
    clock.advance(10.0)
    drive(lb, 1, {})
    assert [i.id for i in lb.ejected_instances] == ["i4"]
    ejected = [e for e in events if isinstance(e, InstanceEjected)]
    assert [(e.instance_id, e.reason) for e in ejected] == [("i4", "success_rate")]


def test_success_rate_needs_volume_and_minimum_hosts(clock: Any) -> None:
    def run(ids: list[str], rounds: int, **extra: Any) -> bool:
        lb = make_lb(
            clock,
            ids=ids,
            consecutive_failures=None,
            success_rate_stdev_factor=1.0,
            success_rate_request_volume=50,
            interval=10.0,
            **extra,
        )
        drive(lb, rounds, {"i1": 5})
        clock.advance(10.0)
        drive(lb, 1, {})
        return lb.is_ejected("i1")

    six = [f"i{k}" for k in range(6)]
    assert run(six, 60)
    assert not run(six, 40)  # 40 calls each: below the request volume
    assert not run(six[:4], 60)  # 4 hosts: below the default minimum of 5
    assert run(six[:4], 60, success_rate_minimum_hosts=4)
    # Equal rates: stdev 0, nobody is below the mean.
    lb = make_lb(
        clock,
        ids=six,
        consecutive_failures=None,
        success_rate_stdev_factor=0.0,
        success_rate_request_volume=10,
    )
    drive(lb, 20, dict.fromkeys(six, 5))
    clock.advance(10.0)
    drive(lb, 1, {})
    assert lb.ejected_instances == []


def test_an_ejected_instance_returns_on_the_timer_while_quiet(clock: Any) -> None:
    timers: list[tuple[float, Any]] = []
    events: list[Event] = []
    lb = LoadBalancer(
        RR,
        name="svc",
        clock=clock,
        outlier_detection=OutlierDetectionConfig(consecutive_failures=1, max_ejection_percent=100),
        timer=lambda delay, callback: timers.append((delay, callback)),
    )
    for i in "ab":
        lb.register(inst(i))
    lb.subscribe(events.append)
    fail_on(lb, "b", 1)
    assert [(d, type(c).__name__) for d, c in timers] == [(30.0, "function")]
    clock.advance(30.0)
    timers[0][1]()  # the timer fires; no call, no pick
    returned = [e for e in events if isinstance(e, InstanceReturned)]
    assert returned == [InstanceReturned("svc", "b", "ejection_time_elapsed")]


def test_the_default_timer_returns_an_instance_without_any_call() -> None:
    import threading

    came_back = threading.Event()
    lb = LoadBalancer(
        RR,
        name="svc",
        outlier_detection=OutlierDetectionConfig(
            consecutive_failures=1, base_ejection_time=0.05, max_ejection_percent=100
        ),
    )
    for i in "ab":
        lb.register(inst(i))
    lb.subscribe(lambda e: came_back.set() if isinstance(e, InstanceReturned) else None)
    fail_on(lb, "b", 1)
    assert lb.is_ejected("b") or came_back.is_set()
    assert came_back.wait(30.0)  # published from the timer thread, with no call at all
