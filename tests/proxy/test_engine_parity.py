"""One engine, two drivers: the same scripted faults through ``call`` and ``call_async``
(and ``execute`` / ``execute_async``) give the same attempts, instances, waits, events
and outcome.

Each scenario builds a fresh, deterministic set-up (round robin, seeded jitter, a fake
clock) for each driver, runs one script of per-attempt outcomes, and compares the
whole trace; a drift between the sync and async drivers fails here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    LoadBalancer,
    LoadBalancerStrategy,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
    TokenBucketRetryBudget,
)
from codomyrmex.service_mesh.events import Event
from codomyrmex.service_mesh.retry import RetryAfter


class Boom(Exception):
    """A scripted failure."""


class Slow(Exception):
    """A scripted failure that asks for a wait (``retry_after``)."""

    retry_after = 2.5


@dataclass
class Trace:
    """What one run did: attempts (instance ids), waits, events and how it ended."""

    instances: list[str] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    outcome: tuple[Any, ...] = ()


class Clock:
    """A fake clock; sleeping moves it (and records the wait)."""

    def __init__(self, trace: Trace, overshoot: float = 0.0) -> None:
        self.now = 100.0
        self.trace = trace
        self.overshoot = overshoot  # a sleep that lasts longer than asked (a busy machine)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.trace.sleeps.append(seconds)
        self.now += seconds + self.overshoot

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)


Step = Callable[[str, Clock], Any]
"""One scripted attempt: given the instance id and the clock, return a result or raise."""


def ok(value: Any = "ok") -> Step:
    return lambda instance, clock: value


def fail(exc: type[Exception] | Callable[[], Exception] = Boom) -> Step:
    """A failure: ``exc(instance)`` for an exception type, else a new ``exc()`` each time
    (one exception object must not be shared by two runs: a run chains causes to it)."""

    def step(instance: str, clock: Clock) -> Any:
        raise exc(instance) if isinstance(exc, type) else exc()

    return step


def slow_fail(seconds: float) -> Step:
    """A failure after ``seconds`` on the clock (for the deadline)."""

    def step(instance: str, clock: Clock) -> Any:
        clock.now += seconds
        raise Boom(instance)

    return step


def describe(exc: BaseException | None) -> Any:
    if exc is None:
        return None
    return (type(exc).__name__, str(exc), describe(exc.__cause__))


def build(
    trace: Trace,
    ids: str,
    policy_kwargs: dict[str, Any],
    proxy_kwargs: dict[str, Any],
    overshoot: float = 0.0,
) -> Any:
    clock = Clock(trace, overshoot)
    lb = LoadBalancer(LoadBalancerStrategy.ROUND_ROBIN, rng=random.Random(7))
    for k, i in enumerate(ids):
        lb.register(ServiceInstance(id=i, host=f"10.0.0.{k + 1}", port=8080))
    breaker = CircuitBreaker(
        "svc", CircuitBreakerConfig(failure_threshold=100, timeout_seconds=30.0), clock=clock
    )
    policy = RetryPolicy(
        sleep=clock.sleep,
        async_sleep=clock.async_sleep,
        clock=clock,
        rng=random.Random(3),
        **policy_kwargs,
    )
    proxy = ServiceProxy("svc", lb, breaker, policy, clock=clock, **proxy_kwargs)
    proxy.subscribe(lambda event: trace.events.append(_event(event)))
    return proxy, clock


def _event(event: Event) -> tuple[Any, ...]:
    """An event as comparable values (its exceptions described, not compared by identity)."""
    values = [
        describe(value) if isinstance(value, BaseException) else value
        for value in (getattr(event, f.name) for f in dataclasses.fields(event))
    ]
    return (type(event).__name__, *values)


def run_proxy(
    script: list[Step],
    *,
    use_async: bool,
    once: bool = False,
    ids: str = "abc",
    policy_kwargs: dict[str, Any] | None = None,
    proxy_kwargs: dict[str, Any] | None = None,
    overshoot: float = 0.0,
) -> Trace:
    trace = Trace()
    proxy, clock = build(trace, ids, policy_kwargs or {}, proxy_kwargs or {}, overshoot)
    steps = iter(script)

    def handler(instance: ServiceInstance) -> Any:
        trace.instances.append(instance.id)
        return next(steps)(instance.id, clock)

    async def ahandler(instance: ServiceInstance) -> Any:
        await asyncio.sleep(0)
        return handler(instance)

    try:
        if use_async:
            call = proxy.call_once_async if once else proxy.call_async
            result = asyncio.run(call(ahandler))
        else:
            result = (proxy.call_once if once else proxy.call)(handler)
    except Exception as exc:
        trace.outcome = ("raised", describe(exc))
    else:
        trace.outcome = ("returned", result)
    connections = {i.id: i.connections for i in proxy.load_balancer.instances}
    trace.outcome += (sorted(connections.items()),)
    return trace


SCENARIOS: dict[str, dict[str, Any]] = {
    "success at once": {"script": [ok()]},
    "fail over, then success": {"script": [fail(), fail(), ok()]},
    "every instance fails, backoff, success": {
        "script": [fail(), fail(), fail(), ok()],
        "policy_kwargs": {"initial_delay": 0.5},
    },
    "retries run out": {
        "script": [fail()] * 4,
        "policy_kwargs": {"initial_delay": 0.5, "jitter": "decorrelated"},
    },
    "one instance: backoff between attempts": {
        "script": [fail(), fail(), ok("late")],
        "ids": "a",
        "policy_kwargs": {"initial_delay": 0.25, "jitter": "equal"},
    },
    "retry_after honoured": {
        "script": [fail(Slow), fail(Slow), ok()],
        "ids": "a",
    },
    "not retried by retry_on": {
        "script": [fail(lambda: ValueError("bad request"))],
        "policy_kwargs": {"retry_on": Boom},
    },
    "a foreign open circuit ends the call, chained": {
        "script": [fail(), fail(lambda: CircuitOpenError("downstream", CircuitState.OPEN, 5.0))],
    },
    "rejected results, the last one returned": {
        "script": [ok(None), ok(None), ok(None), ok(None)],
        "policy_kwargs": {"retry_on_result": lambda r: r is None},
    },
    "rejected then accepted": {
        "script": [ok(None), ok("fine")],
        "policy_kwargs": {"retry_on_result": lambda r: r is None},
    },
    "predicate asks for RetryAfter(0)": {
        "script": [fail(), fail(), ok()],
        "ids": "a",
        "policy_kwargs": {"retry_on": lambda exc: RetryAfter(0)},
    },
    "deadline stops the retries": {
        "script": [slow_fail(4.0), slow_fail(4.0), slow_fail(4.0), ok()],
        "ids": "a",
        "policy_kwargs": {"initial_delay": 1.0, "max_elapsed": 10.0, "jitter": False},
    },
    "a wait that overruns the deadline ends the call": {
        "script": [fail(), fail(), ok()],
        "ids": "a",
        "policy_kwargs": {"initial_delay": 1.0, "max_elapsed": 10.0, "jitter": False},
        "overshoot": 20.0,
    },
    "token budget refuses retries": {
        "script": [fail()] * 4,
        "policy_kwargs": {"budget": TokenBucketRetryBudget(max_tokens=2, token_ratio=0.1)},
    },
    "no instance at all": {"script": [], "ids": ""},
    "call_once: one attempt": {"script": [fail(), ok()], "once": True},
    "fallback supplies the result": {
        "script": [fail()] * 4,
        "proxy_kwargs": {"fallback": lambda exc: f"fallback after {exc}"},
    },
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_call_and_call_async_trace_the_same_attempts(name: str) -> None:
    scenario = SCENARIOS[name]
    sync = run_proxy(**_fresh(scenario), use_async=False)
    async_ = run_proxy(**_fresh(scenario), use_async=True)
    assert sync == async_
    assert sync.instances or scenario.get("ids") == ""  # the scenario ran


def _fresh(scenario: dict[str, Any]) -> dict[str, Any]:
    """The scenario with a new budget object (budgets keep counts across calls)."""
    fresh = dict(scenario)
    policy_kwargs = dict(fresh.get("policy_kwargs", {}))
    budget = policy_kwargs.get("budget")
    if isinstance(budget, TokenBucketRetryBudget):
        policy_kwargs["budget"] = TokenBucketRetryBudget(budget.max_tokens, budget.token_ratio)
    fresh["policy_kwargs"] = policy_kwargs
    return fresh


def test_the_traces_tell_scenarios_apart() -> None:
    """The comparison can fail: two different scripts do not give equal traces."""
    one = run_proxy([fail(), ok()], use_async=False)
    other = run_proxy([fail(), fail(), ok()], use_async=True)
    assert one != other


def test_failover_trace_is_what_the_pipeline_promises() -> None:
    """The shared trace itself: failover to untried instances without waiting."""
    trace = run_proxy([fail(), fail(), ok()], use_async=True)
    assert trace.instances == ["a", "b", "c"]
    assert trace.sleeps == []
    assert trace.outcome[0] == "returned"
    assert all(count == 0 for _, count in trace.outcome[2])


@pytest.mark.parametrize(
    "script, policy_kwargs, overshoot",
    [
        ([fail(), fail(), ok()], {"initial_delay": 0.5}, 0.0),
        ([fail()] * 5, {"initial_delay": 0.5, "jitter": "full"}, 0.0),
        ([ok(None), ok(None), ok("x")], {"retry_on_result": lambda r: r is None}, 0.0),
        ([slow_fail(4.0)] * 5, {"initial_delay": 1.0, "max_elapsed": 10.0}, 0.0),
        ([fail()] * 3, {"initial_delay": 1.0, "max_elapsed": 10.0}, 20.0),
        ([fail(lambda: ValueError("no"))], {"retry_on": Boom}, 0.0),
    ],
)
def test_execute_and_execute_async_trace_the_same_attempts(
    script: list[Step], policy_kwargs: dict[str, Any], overshoot: float
) -> None:
    def run(use_async: bool) -> Trace:
        trace = Trace()
        clock = Clock(trace, overshoot)
        policy = RetryPolicy(
            sleep=clock.sleep,
            async_sleep=clock.async_sleep,
            clock=clock,
            rng=random.Random(5),
            **policy_kwargs,
        )
        policy.subscribe(lambda event: trace.events.append(_event(event)))
        steps = iter(script)

        def fn() -> Any:
            trace.instances.append("-")
            return next(steps)("-", clock)

        async def afn() -> Any:
            return fn()

        try:
            result = asyncio.run(policy.execute_async(afn)) if use_async else policy.execute(fn)
        except Exception as exc:
            trace.outcome = ("raised", describe(exc))
        else:
            trace.outcome = ("returned", result)
        return trace

    assert run(False) == run(True)
