"""Chaos: exceptions, results and latency injected at a seeded rate, visible as events.

Randomness is a seeded ``random.Random`` and latency goes through a fake sleep,
so which calls are hit is reproducible and no test waits.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    LoadBalancer,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.chaos import Chaos, FaultInjected
from codomyrmex.service_mesh.events import CallFailed, CallSucceeded, Event, StateTransition
from conftest import FakeClock, Flavour


class Injected(Exception):
    pass


def _hits(chaos: Chaos, n: int) -> list[bool]:
    """Which of ``n`` calls were hit (an exception fault), in order."""
    wrapped = chaos.wrap(lambda: False)
    hits = []
    for _ in range(n):
        try:
            wrapped()
        except Injected:
            hits.append(True)
        else:
            hits.append(False)
    return hits


def test_the_same_seed_hits_the_same_calls() -> None:
    a = _hits(Chaos(rate=0.3, exception=Injected, seed=42), 200)
    b = _hits(Chaos(rate=0.3, exception=Injected, seed=42), 200)
    c = _hits(Chaos(rate=0.3, exception=Injected, seed=43), 200)
    assert a == b
    assert a != c


def test_a_hit_is_exactly_a_draw_below_the_rate() -> None:
    draws = random.Random(7)
    expected = [draws.random() < 0.25 for _ in range(500)]
    assert _hits(Chaos(rate=0.25, exception=Injected, rng=random.Random(7)), 500) == expected
    assert 0.18 < sum(expected) / 500 < 0.32


@pytest.mark.parametrize(("rate", "hits"), [(0.0, 0), (1.0, 50)])
def test_rates_zero_and_one_are_never_and_always(rate: float, hits: int) -> None:
    assert sum(_hits(Chaos(rate=rate, exception=Injected, seed=1), 50)) == hits


def test_exception_fault_in_both_flavours(flavour: Flavour) -> None:
    chaos = Chaos("db", rate=1.0, exception=Injected("db down"), seed=1)
    ran: list[int] = []
    call = flavour.decorate(chaos, lambda x: ran.append(x))
    with pytest.raises(Injected, match="db down") as first:
        call(1)
    with pytest.raises(Injected) as second:
        call(2)
    assert ran == []
    assert first.value is not second.value, "each hit raises a fresh copy"


def test_exception_class_and_factory_specs() -> None:
    with pytest.raises(Injected):
        Chaos(rate=1.0, exception=Injected).execute(lambda: 1)
    made: list[Exception] = []

    def factory() -> Exception:
        made.append(Injected(len(made)))
        return made[-1]

    with pytest.raises(Injected) as raised:
        Chaos(rate=1.0, exception=factory).execute(lambda: 1)
    assert raised.value is made[0]


def test_result_fault_replaces_the_call(flavour: Flavour) -> None:
    chaos = Chaos(rate=1.0, result={"status": 503}, seed=1)
    ran: list[int] = []
    call = flavour.decorate(chaos, lambda: ran.append(1))
    assert call() == {"status": 503}
    assert ran == []
    assert Chaos(rate=1.0, result=None).execute(lambda: "real") is None


def test_latency_fault_sleeps_then_runs_the_call(clock: FakeClock, flavour: Flavour) -> None:
    chaos = Chaos(rate=1.0, latency=0.75, seed=1, sleep=clock.sleep, async_sleep=clock.async_sleep)
    call = flavour.decorate(chaos, lambda x: x * 2)
    assert call(21) == 42
    assert clock.sleeps == [0.75]


def test_latency_then_exception(clock: FakeClock, flavour: Flavour) -> None:
    chaos = Chaos(
        rate=1.0,
        latency=2.0,
        exception=Injected,
        sleep=clock.sleep,
        async_sleep=clock.async_sleep,
    )
    call = flavour.decorate(chaos, lambda: 1)
    with pytest.raises(Injected):
        call()
    assert clock.sleeps == [2.0]


def test_enable_disable_and_rate_at_runtime() -> None:
    rng = random.Random(3)
    chaos = Chaos(rate=1.0, exception=Injected, rng=rng, enabled=False)
    assert chaos.enabled is False
    state = rng.getstate()
    assert _hits(chaos, 5) == [False] * 5
    assert rng.getstate() == state, "a disabled strategy draws nothing"

    chaos.enable()
    assert _hits(chaos, 3) == [True] * 3
    chaos.rate = 0.0
    assert _hits(chaos, 3) == [False] * 3
    chaos.disable()
    chaos.rate = 1.0
    assert _hits(chaos, 3) == [False] * 3
    with pytest.raises(ValueError, match="rate"):
        chaos.rate = 1.5


def test_applies_to_narrows_the_eligible_calls() -> None:
    chaos = Chaos(rate=1.0, exception=Injected, applies_to=lambda instance: instance == "bad")
    wrapped = chaos.wrap(lambda instance: instance)
    assert wrapped("good") == "good"
    with pytest.raises(Injected):
        wrapped("bad")


def test_a_raising_applies_to_injects_nothing(caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any) -> bool:
        raise RuntimeError("predicate bug")

    chaos = Chaos(rate=1.0, exception=Injected, applies_to=broken)
    with caplog.at_level(logging.ERROR, logger="codomyrmex.service_mesh"):
        assert chaos.execute(lambda: "ran") == "ran"
    assert "applies_to" in caplog.records[0].getMessage()


def test_injected_faults_are_events_and_debug_logs(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []
    boom = Chaos("boom", rate=1.0, exception=Injected("x"), latency=0.5, sleep=clock.sleep)
    slow = Chaos("slow", rate=1.0, latency=0.25, sleep=clock.sleep)
    canned = Chaos("canned", rate=1.0, result=7)
    for chaos in (boom, slow, canned):
        chaos.subscribe(seen.append)

    with caplog.at_level(logging.DEBUG, logger="codomyrmex.service_mesh"):
        with pytest.raises(Injected) as raised:
            boom.execute(lambda: 1)
        slow.execute(lambda: 1)
        canned.execute(lambda: 1)

    assert seen == [
        FaultInjected("boom", "exception", 0.5, raised.value),
        FaultInjected("slow", "latency", 0.25, None),
        FaultInjected("canned", "result", 0.0, None),
    ]
    logged = [(r.chaos, r.fault, r.delay) for r in caplog.records if hasattr(r, "chaos")]  # type: ignore[attr-defined]
    assert logged == [
        ("boom", "exception", 0.5),
        ("slow", "latency", 0.25),
        ("canned", "result", 0.0),
    ]

    listener = seen.append
    canned.subscribe(listener)
    canned.unsubscribe(listener)
    canned.unsubscribe(seen.append)  # bound methods compare equal: the first one goes too
    canned.execute(lambda: 1)
    assert len(seen) == 3


def test_on_a_proxy_handler_faults_open_the_breaker_and_fail_over(clock: FakeClock) -> None:
    balancer = LoadBalancer(name="api")
    for n in (1, 2):
        balancer.register(ServiceInstance(f"api-{n}", "127.0.0.1", 9000 + n))
    breaker = CircuitBreaker(
        "api", CircuitBreakerConfig(failure_threshold=3, timeout_seconds=10.0), clock=clock
    )
    policy = RetryPolicy(max_retries=1, initial_delay=0.0, jitter=False, sleep=clock.sleep)
    proxy = ServiceProxy("api", balancer, breaker, policy, clock=clock)
    seen: list[Event] = []
    proxy.subscribe(seen.append)
    breaker.subscribe(seen.append)
    chaos = Chaos(
        "api-1 down",
        rate=1.0,
        exception=ConnectionError("injected"),
        applies_to=lambda instance: instance.id == "api-1",
    )
    chaos.subscribe(seen.append)
    handler = chaos.wrap(lambda instance: instance.id)

    results = [proxy.call(handler) for _ in range(2)]
    assert results == ["api-2", "api-2"]  # api-1 failed each time, the retry went to api-2
    assert [e.instance_id for e in seen if isinstance(e, CallFailed)] == ["api-1", "api-1"]
    assert sum(isinstance(e, FaultInjected) for e in seen) == 2
    assert breaker.failure_count == 0  # the breaker judges calls: these failed over and succeeded

    chaos.applies_to = None  # now every instance fails
    for _ in range(3):  # every attempt fails: three failed calls open the breaker
        with pytest.raises(ConnectionError):
            proxy.call(handler)
    faults = sum(isinstance(e, FaultInjected) for e in seen)
    assert faults == 2 + 3 * 2  # each failed call made both its attempts
    with pytest.raises(CircuitOpenError):
        proxy.call(handler)
    assert sum(isinstance(e, FaultInjected) for e in seen) == faults  # refused: nothing ran
    assert any(isinstance(e, StateTransition) for e in seen)
    assert sum(isinstance(e, CallSucceeded) for e in seen) == 2
    assert all(i.connections == 0 for i in balancer.instances)


def test_async_handler_on_a_proxy(clock: FakeClock) -> None:
    balancer = LoadBalancer(name="api")
    balancer.register(ServiceInstance("api-1", "127.0.0.1", 9001))
    proxy = ServiceProxy("api", balancer, retry_policy=RetryPolicy(max_retries=0))
    chaos = Chaos(rate=1.0, latency=1.5, async_sleep=clock.async_sleep, sleep=clock.sleep)

    async def handler(instance: ServiceInstance) -> str:
        return instance.id

    assert asyncio.run(proxy.call_async(chaos.wrap(handler))) == "api-1"
    assert asyncio.run(chaos.execute_async(handler, balancer.instances[0])) == "api-1"
    assert clock.sleeps == [1.5, 1.5]


def test_wrap_keeps_the_function_identity() -> None:
    chaos = Chaos(rate=0.0, latency=1.0)

    @chaos
    def named(x: int) -> int:
        """Doc."""
        return x

    assert named.__name__ == "named"
    assert named.__doc__ == "Doc."
    assert named(3) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rate": 0.5}, ValueError, "configure a fault"),
        ({"rate": -0.1, "latency": 1.0}, ValueError, "rate"),
        ({"rate": 1.1, "latency": 1.0}, ValueError, "rate"),
        ({"rate": "half", "latency": 1.0}, TypeError, "rate"),
        ({"rate": 0.5, "latency": -1.0}, ValueError, "latency"),
        ({"rate": 0.5, "exception": Injected, "result": 1}, ValueError, "exclude"),
        ({"rate": 0.5, "exception": "boom"}, TypeError, "exception"),
        ({"rate": 0.5, "latency": 1.0, "seed": 1, "rng": random.Random()}, ValueError, "rng"),
        ({"rate": 0.5, "latency": 1.0, "rng": 42}, TypeError, "rng"),
        ({"rate": 0.5, "latency": 1.0, "sleep": None}, TypeError, "sleep"),
        ({"rate": 0.5, "latency": 1.0, "enabled": 1}, TypeError, "enabled"),
    ],
)
def test_bad_configuration_fails_at_construction(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Chaos(**kwargs)


def test_a_factory_that_returns_no_exception_is_a_type_error() -> None:
    chaos = Chaos(rate=1.0, exception=lambda: "not an exception")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="factory"):
        chaos.execute(lambda: 1)


def test_repr_names_the_faults() -> None:
    text = repr(Chaos("c", rate=0.5, latency=1.0, result=3, enabled=False))
    assert text == "Chaos('c', rate=0.5, latency=1.0, result=3, disabled)"
