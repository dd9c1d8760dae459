"""The mesh registry: its status snapshot and its mesh-wide event subscription.

Mesh-wide listeners see the events of every breaker, proxy and load balancer
registered (before or after they subscribed), of any watched component, and
nothing of what was removed; with no listener the mesh attaches nothing to its
components, so their hot paths stay untouched.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    LoadBalancer,
    LoadBalancerStrategy,
    Mesh,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.chaos import Chaos, FaultInjected
from codomyrmex.service_mesh.events import (
    CallFailed,
    CallRejected,
    CallSucceeded,
    Event,
    InstanceHealthChanged,
    InstancePicked,
    RetryScheduled,
    StateTransition,
)
from codomyrmex.service_mesh.mesh import breaker_status, default_mesh
from codomyrmex.service_mesh.outlier import OutlierDetectionConfig
from conftest import FakeClock


class Boom(Exception):
    pass


def _proxy(
    name: str,
    *ids: str,
    breaker: CircuitBreaker | None = None,
    retries: int = 0,
    clock: FakeClock | None = None,
    balancer: LoadBalancer | None = None,
) -> ServiceProxy:
    balancer = balancer if balancer is not None else LoadBalancer(name=name)
    for n, instance_id in enumerate(ids):
        balancer.register(ServiceInstance(instance_id, "127.0.0.1", 9000 + n))
    policy = RetryPolicy(max_retries=retries, initial_delay=0.0, jitter=False, sleep=lambda s: None)
    if clock is not None:
        return ServiceProxy(name, balancer, breaker, policy, clock=clock)
    return ServiceProxy(name, balancer, breaker, policy)


def _ok(instance: ServiceInstance) -> str:
    return instance.id


def _fail(instance: ServiceInstance) -> str:
    raise Boom(instance.id)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def _attached(*components: Any) -> list[int]:
    """How many subscribers each component carries."""
    return [len(c._subscribers) for c in components]


# -- status ----------------------------------------------------------------------------


def test_status_is_a_json_snapshot_of_services_instances_and_breakers() -> None:
    mesh = Mesh()
    orders = mesh.register_service(_proxy("orders", "o1", "o2", "o3"))
    orders.load_balancer.mark_healthy("o3", False)
    lone = mesh.circuit_breaker("db", CircuitBreakerConfig(failure_threshold=2))
    lone.record_failure()

    status = mesh.status()

    assert json.loads(json.dumps(status, allow_nan=False)) == status
    assert status["total_services"] == 1
    assert status["total_instances"] == 3
    assert status["healthy_instances"] == 2
    assert status["total_breakers"] == 2
    (service,) = status["services"]
    assert service["name"] == "orders"
    assert service["strategy"] == "round_robin"
    assert (service["instance_count"], service["healthy_count"], service["ejected_count"]) == (
        3,
        2,
        0,
    )
    assert [i["id"] for i in service["instances"]] == ["o1", "o2", "o3"]
    assert service["instances"][2]["healthy"] is False
    assert service["instances"][0] == {
        "id": "o1",
        "host": "127.0.0.1",
        "port": 9000,
        "address": "127.0.0.1:9000",
        "weight": 1,
        "healthy": True,
        "ejected": False,
        "connections": 0,
        "metadata": {},
    }
    breakers = {b["name"]: b for b in status["breakers"]}
    assert breakers["db"]["state"] == "closed"
    assert breakers["db"]["failure_count"] == 1
    assert breakers["db"]["failure_threshold"] == 2
    assert breakers["db"]["last_failure_time"].endswith("+00:00")
    assert breakers["orders"]["last_failure_time"] is None
    assert "instances" not in mesh.status(include_instances=False)["services"][0]


def test_status_counts_ejected_instances_apart_from_healthy_ones(clock: FakeClock) -> None:
    balancer = LoadBalancer(
        name="api",
        clock=clock,
        outlier_detection=OutlierDetectionConfig(
            consecutive_failures=1, base_ejection_time=30.0, max_ejection_percent=100.0
        ),
    )
    mesh = Mesh()
    proxy = mesh.register_service(_proxy("api", "a1", "a2", balancer=balancer, clock=clock))
    with pytest.raises(Boom):
        proxy.call(_fail)

    (service,) = mesh.status()["services"]
    assert service["ejected_count"] == 1
    assert service["healthy_count"] == 1
    assert sum(i["ejected"] for i in service["instances"]) == 1
    assert all(i["healthy"] for i in service["instances"])


def test_a_forced_open_breaker_has_no_finite_retry_after_and_stays_strict_json() -> None:
    breaker = CircuitBreaker("b")
    breaker.force_open()
    status = breaker_status(breaker)
    assert status["state"] == "forced_open"
    assert status["retry_after"] is None
    json.dumps(status, allow_nan=False)


# -- mesh-wide events ------------------------------------------------------------------


def test_a_mesh_listener_sees_breaker_proxy_and_balancer_events() -> None:
    mesh = Mesh()
    breaker = CircuitBreaker("orders", CircuitBreakerConfig(failure_threshold=1))
    proxy = mesh.register_service(_proxy("orders", "o1", breaker=breaker))
    seen = Recorder()
    mesh.subscribe(seen)

    assert proxy.call(_ok) == "o1"
    with pytest.raises(Boom):
        proxy.call(_fail)
    with pytest.raises(CircuitOpenError):
        proxy.call(_ok)
    proxy.load_balancer.mark_healthy("o1", False)

    # The breaker judges whole calls: it opens once the failed call has ended, and refuses
    # the next call before an instance is picked (announced by the breaker and the proxy).
    assert seen.kinds() == [
        "InstancePicked",
        "CallSucceeded",
        "InstancePicked",
        "CallFailed",
        "RetryGaveUp",
        "StateTransition",
        "CallRejected",
        "CallRejected",
        "InstanceHealthChanged",
    ]
    assert seen.of(StateTransition) == [
        StateTransition("orders", CircuitState.CLOSED, CircuitState.OPEN)
    ]
    assert seen.of(CallRejected) == [
        CallRejected("orders", "circuit_open", by_breaker=True),
        CallRejected("orders", "circuit_open"),
    ]
    assert seen.of(InstanceHealthChanged) == [InstanceHealthChanged("orders", "o1", False)]


def test_components_registered_after_subscribing_are_heard_too() -> None:
    mesh = Mesh()
    seen = Recorder()
    mesh.subscribe(seen)
    proxy = mesh.register_service(_proxy("late", "l1"))
    breaker = mesh.circuit_breaker("later", CircuitBreakerConfig(failure_threshold=1))
    added = mesh.add_circuit_breaker(
        CircuitBreaker("added", CircuitBreakerConfig(failure_threshold=1))
    )

    proxy.call(_ok)
    breaker.record_failure()
    added.record_failure()

    assert seen.of(InstancePicked) == [InstancePicked("late", "l1")]
    assert [e.source for e in seen.of(CallSucceeded)] == ["late"]
    assert [e.source for e in seen.of(StateTransition)] == ["later", "added"]


def test_removed_components_are_no_longer_heard_and_carry_no_subscriber() -> None:
    mesh = Mesh()
    proxy = mesh.register_service(_proxy("gone", "g1"))
    lone = mesh.circuit_breaker("lone", CircuitBreakerConfig(failure_threshold=1))
    seen = Recorder()
    mesh.subscribe(seen)

    assert mesh.remove_service("gone")
    assert mesh.get_circuit_breaker("gone") is None  # the service's breaker went with it
    assert mesh.remove_circuit_breaker("lone")
    proxy.call(_ok)
    lone.record_failure()

    assert seen.events == []
    assert _attached(proxy, proxy.circuit_breaker, proxy.load_balancer, lone) == [0, 0, 0, 0]


def test_a_breaker_shared_by_two_services_reports_each_event_once() -> None:
    mesh = Mesh()
    shared = CircuitBreaker("shared", CircuitBreakerConfig(failure_threshold=1))
    a = mesh.register_service(_proxy("a", "a1", breaker=shared))
    mesh.register_service(_proxy("b", "b1", breaker=shared))
    seen = Recorder()
    mesh.subscribe(seen)

    with pytest.raises(Boom):
        a.call(_fail)
    assert len(seen.of(StateTransition)) == 1
    assert _attached(shared) == [1]

    mesh.remove_service("a")  # still reachable through b and by name
    shared.reset()
    assert len(seen.of(StateTransition)) == 2


def test_a_proxy_whose_breaker_name_is_taken_by_another_breaker_is_refused() -> None:
    """Two breakers of one name would not share state: the mesh says so instead."""
    mesh = Mesh()
    registered = mesh.circuit_breaker("svc")  # takes the name first (as a decorator would)
    own = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1))
    with pytest.raises(ValueError, match="'svc'"):
        mesh.register_service(_proxy("svc", "s1", breaker=own))
    assert mesh.get_service("svc") is None
    assert mesh.get_circuit_breaker("svc") is registered

    proxy = mesh.register_service(_proxy("svc", "s1", breaker=registered))  # sharing works
    seen = Recorder()
    mesh.subscribe(seen)
    for _ in range(registered.config.failure_threshold):
        with pytest.raises(Boom):
            proxy.call(_fail)
    assert seen.of(StateTransition) == [
        StateTransition("svc", CircuitState.CLOSED, CircuitState.OPEN)
    ]


def test_replacing_a_service_replaces_its_breaker_and_shared_ones_stay() -> None:
    mesh = Mesh()
    first = mesh.register_service(_proxy("orders", "o1"))
    second = mesh.register_service(_proxy("orders", "o2"))
    assert first.circuit_breaker is not second.circuit_breaker
    assert mesh.get_circuit_breaker("orders") is second.circuit_breaker

    shared = CircuitBreaker("shared")
    mesh.register_service(_proxy("a", "a1", breaker=shared))
    mesh.register_service(_proxy("b", "b1", breaker=shared))
    mesh.remove_service("a")
    assert mesh.get_circuit_breaker("shared") is shared  # b still uses it
    mesh.remove_service("b")
    assert mesh.get_circuit_breaker("shared") is None


def test_with_no_listener_the_mesh_attaches_nothing() -> None:
    mesh = Mesh()
    proxy = mesh.register_service(_proxy("svc", "s1"))
    lone = mesh.circuit_breaker("lone")
    components = (proxy, proxy.circuit_breaker, proxy.load_balancer, lone)
    assert _attached(*components) == [0, 0, 0, 0]

    first, second = Recorder(), Recorder()
    mesh.subscribe(first)
    mesh.subscribe(second)
    assert _attached(*components) == [1, 1, 1, 1]  # one dispatcher, however many listeners

    mesh.unsubscribe(first)
    assert _attached(*components) == [1, 1, 1, 1]
    mesh.unsubscribe(second)
    assert _attached(*components) == [0, 0, 0, 0]
    proxy.call(_ok)
    assert first.events == second.events == []


def test_unsubscribe_accepts_a_bound_method_and_ignores_strangers() -> None:
    mesh = Mesh()
    proxy = mesh.register_service(_proxy("svc", "s1"))
    seen = Recorder()

    class Sink:
        def __init__(self) -> None:
            self.count = 0

        def on_event(self, event: Event) -> None:
            self.count += 1

    sink = Sink()
    mesh.subscribe(sink.on_event)
    mesh.unsubscribe(seen)  # never subscribed: ignored
    proxy.call(_ok)
    mesh.unsubscribe(sink.on_event)  # a new bound-method object, equal to the first
    proxy.call(_ok)
    assert sink.count == 2  # InstancePicked + CallSucceeded of the first call only


def test_clear_detaches_but_keeps_the_listeners_for_what_comes_next() -> None:
    mesh = Mesh()
    old = mesh.register_service(_proxy("old", "o1"))
    seen = Recorder()
    mesh.subscribe(seen)
    mesh.clear()
    old.call(_ok)
    assert seen.events == []

    new = mesh.register_service(_proxy("new", "n1"))
    new.call(_ok)
    assert [e.source for e in seen.of(CallSucceeded)] == ["new"]


def test_watch_relays_a_chaos_strategy_and_a_standalone_retry_policy() -> None:
    mesh = Mesh()
    seen = Recorder()
    mesh.subscribe(seen)
    chaos = Chaos("flaky", rate=1.0, exception=Boom("injected"), seed=1)
    policy = RetryPolicy(
        max_retries=1, initial_delay=0.5, jitter=False, sleep=lambda s: None, name="job"
    )
    mesh.watch(chaos)
    mesh.watch(policy)
    mesh.watch(chaos)  # watching twice is watching once

    with pytest.raises(Boom):
        policy.execute(chaos.wrap(lambda: 1))

    assert [e.kind for e in seen.of(FaultInjected)] == ["exception", "exception"]
    assert seen.of(RetryScheduled)[0].source == "job"
    assert seen.of(RetryScheduled)[0].delay == 0.5

    mesh.unwatch(chaos)
    mesh.unwatch(policy)
    mesh.unwatch(policy)  # unknown now: ignored
    before = len(seen.events)
    with pytest.raises(Boom):
        policy.execute(chaos.wrap(lambda: 1))
    assert len(seen.events) == before
    assert _attached(chaos, policy) == [0, 0]


def test_watch_rejects_what_cannot_be_subscribed_to() -> None:
    with pytest.raises(TypeError, match="subscribe"):
        Mesh().watch(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="listener"):
        Mesh().subscribe("not callable")  # type: ignore[arg-type]


def test_a_raising_mesh_listener_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mesh = Mesh()
    proxy = mesh.register_service(_proxy("svc", "s1"))

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    seen = Recorder()
    mesh.subscribe(broken)
    mesh.subscribe(seen)
    with caplog.at_level("ERROR", logger="codomyrmex.service_mesh"):
        assert proxy.call(_ok) == "s1"
    assert seen.kinds() == ["InstancePicked", "CallSucceeded"]
    assert sum("event listener" in r.getMessage() for r in caplog.records) == 2


def test_mesh_events_in_the_async_flavour() -> None:
    mesh = Mesh()
    proxy = mesh.register_service(_proxy("svc", "s1", "s2", retries=1))
    seen = Recorder()
    mesh.subscribe(seen)
    calls = 0

    async def first_fails(instance: ServiceInstance) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Boom(instance.id)
        return instance.id

    assert asyncio.run(proxy.call_async(first_fails)) == "s2"
    assert seen.kinds() == [
        "InstancePicked",
        "CallFailed",
        "RetryScheduled",
        "InstancePicked",
        "CallSucceeded",
    ]
    assert seen.of(CallFailed)[0].instance_id == "s1"
    assert seen.of(CallSucceeded)[0].attempts == 2


def test_the_default_mesh_is_the_decorators_registry_and_can_be_subscribed() -> None:
    from codomyrmex.service_mesh import with_circuit_breaker

    seen = Recorder()
    default_mesh().subscribe(seen)
    try:

        @with_circuit_breaker("decorated", CircuitBreakerConfig(failure_threshold=1))
        def flaky() -> None:
            raise Boom

        with pytest.raises(Boom):
            flaky()
        assert seen.of(StateTransition)[0].source == "decorated"
    finally:
        default_mesh().unsubscribe(seen)


def test_strategy_is_reported_by_value() -> None:
    mesh = Mesh()
    mesh.register_service(
        _proxy("w", "w1", balancer=LoadBalancer(LoadBalancerStrategy.WEIGHTED, name="w"))
    )
    assert mesh.status()["services"][0]["strategy"] == "weighted"
