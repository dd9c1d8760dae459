"""Service proxy: load balancer -> circuit breaker -> retry, in both flavours.

Checks what a caller sees (results, errors and their causes, failover) and the
resting values after any outcome: every connection count back to exactly 0 and
no half-open probe slot left taken.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from contextlib import ExitStack
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    LoadBalancer,
    LoadBalancerStrategy,
    NoHealthyInstanceError,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.outlier import OutlierDetectionConfig
from codomyrmex.service_mesh.timers import ManualTimer

RR = LoadBalancerStrategy.ROUND_ROBIN
ALL_STRATEGIES = list(LoadBalancerStrategy)


class Boom(Exception):
    """The failure our handlers raise."""


class Abort(BaseException):
    """A non-Exception interruption, like KeyboardInterrupt but safe to raise in tests."""


def make_lb(
    ids: str = "abc",
    strategy: LoadBalancerStrategy = RR,
    weights: dict[str, float] | None = None,
    seed: int = 0,
) -> LoadBalancer:
    lb = LoadBalancer(strategy, rng=random.Random(seed))
    for k, i in enumerate(ids):
        weight = (weights or {}).get(i, 1)
        lb.register(ServiceInstance(id=i, host=f"10.0.0.{k + 1}", port=8080, weight=weight))
    return lb


def make_proxy(
    clock: Any,
    lb: LoadBalancer | None = None,
    *,
    failure_threshold: int = 100,
    success_threshold: int = 2,
    half_open_max_calls: int = 3,
    timeout_seconds: float = 30.0,
    **policy_kwargs: Any,
) -> ServiceProxy:
    """A proxy over ``lb`` whose breaker and backoff run on the fake clock."""
    config = CircuitBreakerConfig(
        failure_threshold=failure_threshold,
        success_threshold=success_threshold,
        half_open_max_calls=half_open_max_calls,
        timeout_seconds=timeout_seconds,
    )
    policy_kwargs.setdefault("jitter", False)
    policy = RetryPolicy(
        sleep=clock.sleep, async_sleep=clock.async_sleep, clock=clock, **policy_kwargs
    )
    return ServiceProxy(
        "orders",
        load_balancer=lb if lb is not None else make_lb(),
        circuit_breaker=CircuitBreaker("orders", config, clock=clock),
        retry_policy=policy,
    )


def to_half_open(proxy: ServiceProxy, clock: Any) -> None:
    cb = proxy.circuit_breaker
    while cb.state is not CircuitState.OPEN:
        cb.record_failure()
    clock.advance(cb.config.timeout_seconds + 1)
    assert cb.state is CircuitState.HALF_OPEN


def assert_at_rest(proxy: ServiceProxy, objects: list[ServiceInstance] | None = None) -> None:
    """Every connection count is 0 and no half-open probe slot is held."""
    for instance in objects if objects is not None else proxy.load_balancer.instances:
        assert instance.connections == 0, (instance.id, instance.connections)
    assert proxy.circuit_breaker.half_open_in_flight == 0


def assert_half_open_admits_exactly(cb: CircuitBreaker, slots: int) -> None:
    """A half-open breaker with no probe running admits exactly ``slots`` concurrent probes."""
    assert cb.state is CircuitState.HALF_OPEN
    with ExitStack() as stack:
        for _ in range(slots):
            stack.enter_context(cb.permit())
        with pytest.raises(CircuitOpenError):
            stack.enter_context(cb.permit())


# -- a call ------------------------------------------------------------------------


def test_handler_receives_the_instance_first_then_the_callers_arguments(
    flavour: Any, clock: Any
) -> None:
    proxy = make_proxy(clock)
    seen: list[Any] = []

    def handler(instance: ServiceInstance, *args: Any, **kwargs: Any) -> Any:
        seen.append((instance, args, kwargs))
        return ("reply", instance.address, args, kwargs)

    result = flavour.proxy(proxy, handler, {"order": 7}, 2, timeout=3)
    assert len(seen) == 1
    instance, args, kwargs = seen[0]
    assert instance is proxy.load_balancer.get("a")
    assert args == ({"order": 7}, 2)
    assert kwargs == {"timeout": 3}
    assert result == ("reply", "10.0.0.1:8080", ({"order": 7}, 2), {"timeout": 3})
    assert clock.sleeps == []
    assert_at_rest(proxy)


def test_successive_calls_are_load_balanced(flavour: Any, clock: Any) -> None:
    proxy = make_proxy(clock, make_lb("abc"))
    got = [flavour.proxy(proxy, lambda inst: inst.id) for _ in range(6)]
    assert got == ["a", "b", "c", "a", "b", "c"]


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_retry_fails_over_to_an_untried_healthy_instance(
    flavour: Any, clock: Any, strategy: LoadBalancerStrategy
) -> None:
    for seed in range(5):
        proxy = make_proxy(clock, make_lb("abc", strategy, seed=seed), max_retries=2)
        tried: list[str] = []

        def handler(instance: ServiceInstance) -> str:
            tried.append(instance.id)
            raise Boom(instance.id)

        with pytest.raises(Boom):
            flavour.proxy(proxy, handler)
        assert sorted(tried) == ["a", "b", "c"], (seed, tried)
        assert_at_rest(proxy)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_failover_then_success_returns_the_result(
    flavour: Any, clock: Any, strategy: LoadBalancerStrategy
) -> None:
    proxy = make_proxy(clock, make_lb("abcd", strategy, seed=3), max_retries=3)
    tried: list[str] = []

    def handler(instance: ServiceInstance) -> str:
        tried.append(instance.id)
        if len(tried) < 3:
            raise Boom(instance.id)
        return f"served by {instance.id}"

    assert flavour.proxy(proxy, handler) == f"served by {tried[-1]}"
    assert len(tried) == 3
    assert len(set(tried)) == 3, tried
    assert clock.sleeps == [], "failing over to an untried instance does not back off"
    assert proxy.circuit_breaker.failure_count == 0, "a call that failed over is a success"
    assert_at_rest(proxy)


def test_failover_does_not_sleep_backoff_sleeps_once_every_instance_was_tried(
    flavour: Any, clock: Any
) -> None:
    proxy = make_proxy(clock, make_lb("ab"), max_retries=4)
    tried: list[str] = []
    sleeps_before: list[int] = []

    def handler(instance: ServiceInstance) -> None:
        tried.append(instance.id)
        sleeps_before.append(len(clock.sleeps))
        raise Boom(instance.id)

    with pytest.raises(Boom):
        flavour.proxy(proxy, handler)
    assert len(tried) == 5
    assert set(tried[:2]) == {"a", "b"}, "the first retry fails over to the untried instance"
    # retry 1 fails over at once; retries 2-4 back off with the delay their count gives
    # (the failover still spent retry 1: the next wait is 0.2, not 0.1)
    assert clock.sleeps == [0.2, 0.4, 0.8]
    assert sleeps_before == [0, 0, 1, 2, 3]
    assert_at_rest(proxy)


def test_failover_never_picks_a_zero_weight_instance(flavour: Any, clock: Any) -> None:
    lb = make_lb("abc", LoadBalancerStrategy.WEIGHTED, weights={"a": 1, "b": 0, "c": 1})
    proxy = make_proxy(clock, lb, max_retries=4)
    tried: list[str] = []

    def handler(instance: ServiceInstance) -> None:
        tried.append(instance.id)
        raise Boom

    with pytest.raises(Boom):
        flavour.proxy(proxy, handler)
    assert len(tried) == 5
    assert "b" not in tried
    assert set(tried[:2]) == {"a", "c"}


def test_with_a_single_instance_retries_go_to_it(flavour: Any, clock: Any) -> None:
    proxy = make_proxy(clock, make_lb("a"), max_retries=3)
    tried: list[str] = []

    def handler(instance: ServiceInstance) -> str:
        tried.append(instance.id)
        if len(tried) < 3:
            raise Boom
        return "ok"

    assert flavour.proxy(proxy, handler) == "ok"
    assert tried == ["a", "a", "a"]


def test_last_failure_is_raised_itself_when_retries_run_out(flavour: Any, clock: Any) -> None:
    proxy = make_proxy(clock, max_retries=2)
    errors: list[Boom] = []

    def handler(instance: ServiceInstance) -> None:
        err = Boom(instance.id)
        errors.append(err)
        raise err

    with pytest.raises(Boom) as caught:
        flavour.proxy(proxy, handler)
    assert caught.value is errors[-1]
    assert len(errors) == 3
    assert clock.sleeps == [], "three instances: every retry failed over without waiting"


# -- the breaker inside the proxy ------------------------------------------------------


def test_service_breaker_counts_calls_not_attempts(flavour: Any, clock: Any) -> None:
    proxy = make_proxy(clock, failure_threshold=2, max_retries=5)
    cb = proxy.circuit_breaker
    errors: list[Boom] = []

    def handler(instance: ServiceInstance) -> None:
        err = Boom(len(errors))
        errors.append(err)
        raise err

    with pytest.raises(Boom) as caught:
        flavour.proxy(proxy, handler)
    assert caught.value is errors[-1]
    assert len(errors) == 6, "six failed attempts are one failed call"
    assert cb.failure_count == 1
    assert cb.state is CircuitState.CLOSED
    with pytest.raises(Boom):
        flavour.proxy(proxy, handler)
    assert len(errors) == 12
    assert cb.state is CircuitState.OPEN, "the second failed call opened the breaker"
    sleeps = list(clock.sleeps)
    with pytest.raises(CircuitOpenError) as refused:
        flavour.proxy(proxy, handler)
    assert len(errors) == 12, "an open service breaker refuses before any attempt"
    assert refused.value.__cause__ is None
    assert refused.value.name == "orders"
    assert clock.sleeps == sleeps
    assert_at_rest(proxy)


def test_a_call_that_fails_over_and_succeeds_is_one_breaker_success(
    flavour: Any, clock: Any
) -> None:
    proxy = make_proxy(clock, failure_threshold=2, max_retries=5)
    cb = proxy.circuit_breaker
    cb.record_failure()
    attempts = 0

    def flaky(instance: ServiceInstance) -> str:
        nonlocal attempts
        attempts += 1
        if attempts % 3:
            raise Boom(instance.id)
        return instance.id

    for _ in range(4):
        flavour.proxy(proxy, flaky)
        assert cb.failure_count == 0, "the call succeeded after failing over"
        assert cb.state is CircuitState.CLOSED
    assert attempts == 12, "two failed attempts per call never opened the breaker"
    assert_at_rest(proxy)


def test_a_nested_breaker_rejection_stops_retrying_and_chains_the_last_failure(
    flavour: Any, clock: Any
) -> None:
    """A CircuitOpenError from inside the handler (the caller's own breaker) ends the call."""
    inner = CircuitBreaker(
        "downstream", CircuitBreakerConfig(failure_threshold=2, timeout_seconds=30.0), clock=clock
    )
    proxy = make_proxy(clock, make_lb("ab"), max_retries=5)
    errors: list[Boom] = []
    attempts = 0

    def failing() -> None:
        err = Boom(len(errors))
        errors.append(err)
        raise err

    def handler(instance: ServiceInstance) -> None:
        nonlocal attempts
        attempts += 1
        inner.execute(failing)

    with pytest.raises(CircuitOpenError) as caught:
        flavour.proxy(proxy, handler)
    assert len(errors) == 2, "the second failure opened the inner breaker; nothing ran after it"
    assert attempts == 3, "the third attempt was rejected by the inner breaker: the call ended"
    assert caught.value.__cause__ is errors[-1]
    assert caught.value.name == "downstream"
    assert inner.state is CircuitState.OPEN
    # attempt 2 failed over at once; attempt 3 came after backing off (both were tried)
    assert clock.sleeps == [0.2], "no further waits once the inner breaker rejected"
    assert_at_rest(proxy)


def test_a_nested_breaker_rejection_stops_even_when_retry_on_would_retry_it(
    flavour: Any, clock: Any
) -> None:
    inner = CircuitBreaker(
        "downstream", CircuitBreakerConfig(failure_threshold=1, timeout_seconds=30.0), clock=clock
    )
    proxy = make_proxy(clock, max_retries=5, retry_on=Exception)
    errors: list[Boom] = []
    attempts = 0

    def failing() -> None:
        err = Boom()
        errors.append(err)
        raise err

    def handler(instance: ServiceInstance) -> None:
        nonlocal attempts
        attempts += 1
        inner.execute(failing)

    with pytest.raises(CircuitOpenError) as caught:
        flavour.proxy(proxy, handler)
    assert len(errors) == 1
    assert attempts == 2, "the call must stop at the first rejection"
    assert caught.value.__cause__ is errors[0]
    assert caught.value.name == "downstream"
    assert clock.sleeps == []
    assert_at_rest(proxy)


def test_a_retryable_breaker_rejection_from_the_handler_fails_over(
    flavour: Any, clock: Any
) -> None:
    """A ``retryable`` CircuitOpenError (one instance's own breaker) is retried elsewhere."""

    class InstanceOpen(CircuitOpenError):
        retryable = True

    proxy = make_proxy(clock, max_retries=3)
    tried: list[str] = []

    def handler(instance: ServiceInstance) -> str:
        tried.append(instance.id)
        if instance.id == "a":
            raise InstanceOpen(f"instance-{instance.id}", CircuitState.OPEN, 5.0)
        return instance.id

    assert flavour.proxy(proxy, handler) == "b"
    assert tried == ["a", "b"]
    assert clock.sleeps == []
    assert proxy.circuit_breaker.failure_count == 0
    assert_at_rest(proxy)


def test_open_breaker_rejects_the_first_attempt_without_running_anything(
    flavour: Any, clock: Any
) -> None:
    proxy = make_proxy(clock, failure_threshold=1, max_retries=3)
    proxy.circuit_breaker.record_failure()
    ran: list[Any] = []
    with pytest.raises(CircuitOpenError) as caught:
        flavour.proxy(proxy, ran.append)
    assert ran == []
    assert caught.value.__cause__ is None
    assert caught.value.state is CircuitState.OPEN
    assert clock.sleeps == []
    assert_at_rest(proxy)


def test_a_failed_probe_call_reopens_and_the_next_call_is_refused(flavour: Any, clock: Any) -> None:
    proxy = make_proxy(clock, failure_threshold=1, max_retries=3)
    to_half_open(proxy, clock)
    errors: list[Boom] = []

    def handler(instance: ServiceInstance) -> None:
        assert proxy.circuit_breaker.half_open_in_flight == 1, "the whole call is the probe"
        err = Boom()
        errors.append(err)
        raise err

    with pytest.raises(Boom) as caught:
        flavour.proxy(proxy, handler)
    assert len(errors) == 4, "the probe call failed over and retried before it failed"
    assert caught.value is errors[-1]
    assert proxy.circuit_breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as refused:
        flavour.proxy(proxy, handler)
    assert len(errors) == 4
    assert refused.value.__cause__ is None
    assert_at_rest(proxy)


# -- no healthy instance ------------------------------------------------------------


@pytest.mark.parametrize("setup", ["empty", "all-unhealthy", "all-drained"])
def test_no_healthy_instance_raises_with_the_service_name(
    flavour: Any, clock: Any, setup: str
) -> None:
    if setup == "empty":
        lb = LoadBalancer(name="some-other-name")
    elif setup == "all-unhealthy":
        lb = make_lb("ab")
        lb.mark_healthy("a", False)
        lb.mark_healthy("b", False)
    else:
        lb = make_lb("ab", LoadBalancerStrategy.WEIGHTED, weights={"a": 0, "b": 0})
    proxy = make_proxy(clock, lb, max_retries=3)
    ran: list[Any] = []
    with pytest.raises(NoHealthyInstanceError) as caught:
        flavour.proxy(proxy, ran.append)
    assert caught.value.service_name == "orders"
    assert ran == []
    assert clock.sleeps == [], "a missing instance is not retried"
    assert_at_rest(proxy)


def test_instances_vanishing_between_attempts_raise_no_healthy_instance(
    flavour: Any, clock: Any
) -> None:
    lb = make_lb("ab")
    proxy = make_proxy(clock, lb, max_retries=3)
    calls = 0

    def handler(instance: ServiceInstance) -> None:
        nonlocal calls
        calls += 1
        lb.mark_healthy("a", False)
        lb.mark_healthy("b", False)
        raise Boom

    with pytest.raises(NoHealthyInstanceError) as caught:
        flavour.proxy(proxy, handler)
    assert caught.value.service_name == "orders"
    assert calls == 1
    assert_at_rest(proxy)


# -- defaults ------------------------------------------------------------------------


def test_components_left_as_none_get_defaults() -> None:
    proxy = ServiceProxy("orders")
    other = ServiceProxy("billing")
    lb, cb, policy = proxy.load_balancer, proxy.circuit_breaker, proxy.retry_policy
    assert isinstance(lb, LoadBalancer)
    assert lb.strategy is RR
    assert len(lb) == 0
    assert isinstance(cb, CircuitBreaker)
    assert cb.name == "orders"
    assert cb.config == CircuitBreakerConfig()
    assert cb.state is CircuitState.CLOSED
    assert isinstance(policy, RetryPolicy)
    reference = RetryPolicy()
    for attr in ("max_retries", "initial_delay", "max_delay", "exponential_base", "jitter"):
        assert getattr(policy, attr) == getattr(reference, attr), attr
    assert (policy.max_retries, policy.initial_delay, policy.max_delay) == (3, 0.1, 10.0)
    assert (policy.exponential_base, policy.jitter) == (2.0, True)
    assert other.load_balancer is not lb
    assert other.circuit_breaker is not cb
    assert other.circuit_breaker.name == "billing"
    with pytest.raises(NoHealthyInstanceError) as caught:
        proxy.call(lambda inst: None)
    assert caught.value.service_name == "orders"


def test_default_components_work_end_to_end(flavour: Any) -> None:
    proxy = ServiceProxy("orders")
    proxy.load_balancer.register(ServiceInstance(id="o-1", host="orders.local", port=443))
    assert flavour.proxy(proxy, lambda inst, x: (inst.address, x * 2), 21) == (
        "orders.local:443",
        42,
    )
    assert_at_rest(proxy)


def test_given_components_are_used_as_they_are(clock: Any) -> None:
    lb = make_lb("a")
    cb = CircuitBreaker("orders", clock=clock)
    policy = RetryPolicy()
    proxy = ServiceProxy("orders", load_balancer=lb, circuit_breaker=cb, retry_policy=policy)
    assert proxy.load_balancer is lb
    assert proxy.circuit_breaker is cb
    assert proxy.retry_policy is policy
    assert proxy.service_name == "orders"


# -- connection counting ---------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["success", "exception", "base-exception"])
def test_connection_is_counted_during_the_call_and_released_after(
    flavour: Any, clock: Any, outcome: str
) -> None:
    lb = make_lb("abc", LoadBalancerStrategy.LEAST_CONNECTIONS)
    proxy = make_proxy(clock, lb, max_retries=2)
    during: list[tuple[str, int, int]] = []

    def handler(instance: ServiceInstance) -> str:
        assert lb.get(instance.id) is instance
        during.append((instance.id, instance.connections, sum(i.connections for i in lb.instances)))
        if outcome == "exception":
            raise Boom
        if outcome == "base-exception":
            raise Abort
        return "ok"

    if outcome == "success":
        assert flavour.proxy(proxy, handler) == "ok"
    else:
        with pytest.raises(Boom if outcome == "exception" else Abort):
            flavour.proxy(proxy, handler)
    assert during, "handler never ran"
    assert all(mine == 1 and total == 1 for _, mine, total in during), during
    assert len(during) == (3 if outcome == "exception" else 1), "BaseException is never retried"
    assert_at_rest(proxy)


def test_base_exception_frees_a_half_open_probe_slot(flavour: Any, clock: Any) -> None:
    proxy = make_proxy(clock, failure_threshold=1, half_open_max_calls=1, max_retries=3)
    to_half_open(proxy, clock)

    def handler(instance: ServiceInstance) -> None:
        assert proxy.circuit_breaker.half_open_in_flight == 1
        raise Abort

    with pytest.raises(Abort):
        flavour.proxy(proxy, handler)
    assert proxy.circuit_breaker.state is CircuitState.HALF_OPEN
    assert_at_rest(proxy)
    assert flavour.proxy(proxy, lambda inst: "probe ok") == "probe ok"


def test_base_exception_during_the_backoff_wait_releases_everything(clock: Any) -> None:
    def sleep(seconds: float) -> None:
        raise Abort

    lb = make_lb("ab")
    proxy = ServiceProxy(
        "orders",
        load_balancer=lb,
        circuit_breaker=CircuitBreaker("orders", clock=clock),
        retry_policy=RetryPolicy(max_retries=3, sleep=sleep, jitter=False),
    )
    calls = 0

    def handler(instance: ServiceInstance) -> None:
        nonlocal calls
        calls += 1
        raise Boom

    with pytest.raises(Abort):
        proxy.call(handler)
    assert calls == 2, "the first failure failed over without a wait; the second waited"
    assert_at_rest(proxy)


def test_cancelling_a_call_releases_its_connection_and_probe_slot(
    run_async: Any, clock: Any
) -> None:
    proxy = make_proxy(clock, failure_threshold=1, half_open_max_calls=1, max_retries=3)
    to_half_open(proxy, clock)
    lb = proxy.load_balancer
    entered: list[ServiceInstance] = []

    async def handler(instance: ServiceInstance) -> None:
        entered.append(instance)
        await asyncio.Event().wait()

    async def main() -> bool:
        task = asyncio.create_task(proxy.call_async(handler))
        while not entered:
            await asyncio.sleep(0)
        assert entered[0].connections == 1
        assert proxy.circuit_breaker.half_open_in_flight == 1
        task.cancel()
        await asyncio.wait([task], timeout=5)
        return task.cancelled()

    assert run_async(main()) is True
    assert len(entered) == 1, "cancellation is never retried"
    assert proxy.circuit_breaker.state is CircuitState.HALF_OPEN
    assert_at_rest(proxy, lb.instances)
    assert clock.sleeps == []


def test_cancelling_during_the_backoff_wait_stops_the_call(run_async: Any, clock: Any) -> None:
    lb = make_lb("ab")
    calls = 0

    async def handler(instance: ServiceInstance) -> None:
        nonlocal calls
        calls += 1
        raise Boom

    async def main() -> bool:
        asleep = asyncio.Event()

        async def forever(seconds: float) -> None:
            asleep.set()
            await asyncio.Event().wait()

        proxy = ServiceProxy(
            "orders",
            load_balancer=lb,
            circuit_breaker=CircuitBreaker("orders", clock=clock),
            retry_policy=RetryPolicy(max_retries=3, async_sleep=forever),
        )
        task = asyncio.create_task(proxy.call_async(handler))
        await asleep.wait()
        task.cancel()
        await asyncio.wait([task], timeout=5)
        return task.cancelled()

    assert run_async(main()) is True
    assert calls == 2, "the first failure failed over without a wait; the second waited"
    assert [i.connections for i in lb.instances] == [0, 0]


# -- async attempt_timeout and max_elapsed ------------------------------------------------


async def timed_out(timer: ManualTimer, coro: Any) -> Any:
    """Await ``coro``, ending each attempt it waits on by moving ``timer`` past its timeout."""
    task = asyncio.ensure_future(coro)
    for _ in range(100):
        for _ in range(10_000):
            if task.done() or timer.waiting:
                break
            await asyncio.sleep(0)
        if task.done():
            break
        timer.advance(3.0)
    return await task


def test_async_attempt_timeout_is_an_instance_failure_the_breaker_sees_the_call(
    run_async: Any, clock: Any
) -> None:
    lb = LoadBalancer(
        RR,
        rng=random.Random(0),
        outlier_detection=OutlierDetectionConfig(consecutive_failures=2, max_ejection_percent=50),
    )
    for k, i in enumerate("abc"):
        lb.register(ServiceInstance(id=i, host=f"10.0.0.{k + 1}", port=8080))
    timer = ManualTimer()
    proxy = make_proxy(
        clock, lb, failure_threshold=2, max_retries=2, attempt_timeout=3.0, timer=timer
    )
    entered: list[str] = []

    async def hangs(instance: ServiceInstance) -> None:
        entered.append(instance.id)
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        run_async(timed_out(timer, proxy.call_async(hangs)))
    assert entered == ["a", "b", "c"], "each timed-out attempt failed over at once"
    assert clock.sleeps == []
    assert proxy.circuit_breaker.failure_count == 1, "three timeouts are one failed call"
    assert proxy.circuit_breaker.state is CircuitState.CLOSED
    with pytest.raises(TimeoutError):
        run_async(timed_out(timer, proxy.call_async(hangs)))
    assert len(entered) == 6
    assert lb.is_ejected(entered[3]), "two timeouts in a row: outlier detection ejected it"
    assert proxy.circuit_breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as caught:
        run_async(timed_out(timer, proxy.call_async(hangs)))
    assert len(entered) == 6
    assert caught.value.__cause__ is None
    assert_at_rest(proxy)


def test_async_attempt_timeout_is_retried_on_another_instance(run_async: Any, clock: Any) -> None:
    timer = ManualTimer()
    proxy = make_proxy(clock, max_retries=2, attempt_timeout=3.0, timer=timer)
    entered: list[str] = []

    async def first_hangs(instance: ServiceInstance) -> str:
        entered.append(instance.id)
        if len(entered) == 1:
            await asyncio.Event().wait()
        return instance.id

    proxy.circuit_breaker.record_failure()
    assert run_async(timed_out(timer, proxy.call_async(first_hangs))) == "b"
    assert entered == ["a", "b"]
    assert proxy.circuit_breaker.failure_count == 0, "the call succeeded: a breaker success"
    assert clock.sleeps == [], "a timed-out attempt fails over without waiting"
    assert_at_rest(proxy)


def test_max_elapsed_counts_from_the_first_attempt(flavour: Any, clock: Any) -> None:
    proxy = make_proxy(clock, max_retries=5, max_elapsed=5.0)
    started: list[float] = []
    t0 = clock()

    def slow_failure(instance: ServiceInstance) -> None:
        started.append(clock() - t0)
        clock.advance(10.0)
        raise Boom

    with pytest.raises(Boom):
        flavour.proxy(proxy, slow_failure)
    assert started == [0.0], "no attempt may start after the deadline"
    assert_at_rest(proxy)


def test_max_elapsed_allows_retries_before_the_deadline(flavour: Any, clock: Any) -> None:
    # one instance, so every retry backs off (failover would not wait)
    proxy = make_proxy(clock, make_lb("a"), max_retries=5, initial_delay=1.0, max_elapsed=5.5)
    started: list[float] = []
    t0 = clock()

    def handler(instance: ServiceInstance) -> None:
        started.append(clock() - t0)
        clock.advance(1.0)
        raise Boom

    with pytest.raises(Boom):
        flavour.proxy(proxy, handler)
    # [0,1] wait 1 [2,3] wait 2 would start at 5 < 5.5 -> [5,6]; wait 4 would start at 10: stop
    assert started == [0.0, 2.0, 5.0]


def test_max_elapsed_judges_a_failover_by_its_start_not_by_the_backoff_it_skips(
    flavour: Any, clock: Any
) -> None:
    # Three instances, backoff 1 s then 2 s, deadline 2.5 s, attempts of 1 s each: the
    # failovers start at 1 s and 2 s (no wait), both inside the deadline, so all three
    # instances are tried -- a backoff of 2 s would have ended the call after two.
    proxy = make_proxy(clock, make_lb("abc"), max_retries=5, initial_delay=1.0, max_elapsed=2.5)
    started: list[tuple[float, str]] = []
    t0 = clock()

    def handler(instance: ServiceInstance) -> None:
        started.append((clock() - t0, instance.id))
        clock.advance(1.0)
        raise Boom

    with pytest.raises(Boom):
        flavour.proxy(proxy, handler)
    assert [at for at, _ in started] == [0.0, 1.0, 2.0]
    assert sorted(i for _, i in started) == ["a", "b", "c"]
    assert clock.sleeps == []


# -- storms ------------------------------------------------------------------------------


def test_thread_storm_leaves_connections_and_probe_slots_at_rest(clock: Any) -> None:
    lb = make_lb("abcdef", LoadBalancerStrategy.LEAST_CONNECTIONS)
    objects = list(lb.instances)
    proxy = make_proxy(
        clock,
        lb,
        failure_threshold=1,  # the breaker judges calls: let every failed call open it
        timeout_seconds=1.0,
        half_open_max_calls=2,
        max_retries=2,
        initial_delay=0.0,
    )
    threads, iterations = 16, 250
    start = threading.Barrier(threads + 1)
    done = threading.Event()
    unexpected: list[BaseException] = []
    outcomes: Counter[str] = Counter()
    outcomes_lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)

        def handler(instance: ServiceInstance) -> str:
            if instance.connections < 1:
                unexpected.append(AssertionError(f"{instance.id}: {instance.connections}"))
            roll = rng.random()
            if roll < 0.35:
                raise Boom
            if roll < 0.45:
                raise Abort
            return "ok"

        start.wait()
        for _ in range(iterations):
            try:
                proxy.call(handler)
                kind = "ok"
            except (Boom, Abort, CircuitOpenError, NoHealthyInstanceError) as exc:
                kind = type(exc).__name__
            except BaseException as exc:
                unexpected.append(exc)
                kind = "unexpected"
            with outcomes_lock:
                outcomes[kind] += 1
                if kind == "CircuitOpenError":  # let time pass so the breaker probes again
                    clock.advance(0.4)

    def churner() -> None:
        rng = random.Random(1)
        start.wait()
        while not done.is_set():
            lb.mark_healthy(rng.choice("abcdef"), rng.random() < 0.7)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    churn = threading.Thread(target=churner)
    for t in [*pool, churn]:
        t.start()
    for t in pool:
        t.join()
    done.set()
    churn.join()
    assert unexpected == []
    assert {"ok", "Boom", "Abort", "CircuitOpenError"} <= set(outcomes), outcomes
    for i in "abcdef":
        lb.mark_healthy(i, True)
    assert_at_rest(proxy, objects)


def test_thread_storm_against_a_half_open_breaker_keeps_probe_slots_exact(clock: Any) -> None:
    """Probes only succeed (never closing it) or abort: the breaker stays HALF_OPEN throughout."""
    lb = make_lb("abcd", LoadBalancerStrategy.LEAST_CONNECTIONS)
    proxy = make_proxy(
        clock,
        lb,
        failure_threshold=1,
        success_threshold=10**9,
        half_open_max_calls=3,
        max_retries=0,
    )
    to_half_open(proxy, clock)
    cb = proxy.circuit_breaker
    threads, iterations = 16, 300
    start = threading.Barrier(threads)
    running = 0
    peak = 0
    lock = threading.Lock()
    outcomes: Counter[str] = Counter()
    unexpected: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)

        def handler(instance: ServiceInstance) -> str:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                if rng.random() < 0.3:
                    raise Abort
                return "ok"
            finally:
                with lock:
                    running -= 1

        start.wait()
        for _ in range(iterations):
            try:
                proxy.call(handler)
                kind = "ok"
            except (Abort, CircuitOpenError) as exc:
                kind = type(exc).__name__
            except BaseException as exc:
                unexpected.append(exc)
                kind = "unexpected"
            with lock:
                outcomes[kind] += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert unexpected == []
    assert {"ok", "Abort"} <= set(outcomes), outcomes
    assert peak <= 3
    assert cb.state is CircuitState.HALF_OPEN
    assert_at_rest(proxy)
    assert_half_open_admits_exactly(cb, 3)


def test_async_storm_with_cancellations_leaves_everything_at_rest(
    run_async: Any, clock: Any
) -> None:
    lb = make_lb("abcde", LoadBalancerStrategy.LEAST_CONNECTIONS)
    objects = list(lb.instances)
    proxy = make_proxy(
        clock,
        lb,
        failure_threshold=1,  # the breaker judges calls: let every failed call open it
        timeout_seconds=1.0,
        half_open_max_calls=2,
        max_retries=2,
        initial_delay=0.5,
        attempt_timeout=5.0,
    )
    rng = random.Random(5)

    cancelled_in_flight = 0

    async def handler(instance: ServiceInstance, k: int) -> int:
        nonlocal cancelled_in_flight
        if instance.connections < 1:
            raise AssertionError(f"{instance.id}: {instance.connections}")
        try:
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            cancelled_in_flight += 1
            raise
        roll = rng.random()
        if roll < 0.35:
            raise Boom(k)
        return k

    async def client(k: int) -> int:
        # Arrivals spread over many loop turns, so calls meet a breaker opened by earlier ones.
        for _ in range(rng.randint(0, 100)):
            await asyncio.sleep(0)
        result: int = await proxy.call_async(handler, k)
        return result

    async def main() -> Counter[str]:
        tasks = [asyncio.create_task(client(k)) for k in range(800)]
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0)
            for task in rng.sample(tasks, 8):
                task.cancel()
            clock.advance(rng.choice([0.0, 0.4, 1.2]))
            lb.mark_healthy(rng.choice("abcde"), rng.random() < 0.7)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return Counter(type(r).__name__ for r in results)

    kinds = run_async(main())
    assert set(kinds) <= {
        "int",
        "Boom",
        "CancelledError",
        "CircuitOpenError",
        "NoHealthyInstanceError",
    }, kinds
    assert {"int", "Boom", "CancelledError", "CircuitOpenError"} <= set(kinds), kinds
    assert cancelled_in_flight > 0, "the storm must cancel some calls while they run"
    for i in "abcde":
        lb.mark_healthy(i, True)
    assert_at_rest(proxy, objects)


def test_async_storm_against_a_half_open_breaker_keeps_probe_slots_exact(
    run_async: Any, clock: Any
) -> None:
    lb = make_lb("abcd", LoadBalancerStrategy.LEAST_CONNECTIONS)
    proxy = make_proxy(
        clock,
        lb,
        failure_threshold=1,
        success_threshold=10**9,
        half_open_max_calls=3,
        max_retries=0,
    )
    to_half_open(proxy, clock)
    cb = proxy.circuit_breaker
    rng = random.Random(9)
    running = 0
    peak = 0

    cancelled_in_flight = 0

    async def handler(instance: ServiceInstance) -> str:
        nonlocal running, peak, cancelled_in_flight
        running += 1
        peak = max(peak, running)
        try:
            for _ in range(rng.randint(1, 4)):
                await asyncio.sleep(0)
            return "ok"
        except asyncio.CancelledError:
            cancelled_in_flight += 1
            raise
        finally:
            running -= 1

    async def client() -> str:
        for _ in range(rng.randint(0, 200)):  # arrivals spread over many loop turns
            await asyncio.sleep(0)
        return await proxy.call_async(handler)

    async def main() -> Counter[str]:
        tasks = [asyncio.create_task(client()) for _ in range(1000)]
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0)
            for task in rng.sample(tasks, 3):
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return Counter(type(r).__name__ for r in results)

    kinds = run_async(main())
    assert set(kinds) == {"str", "CancelledError", "CircuitOpenError"}, kinds
    assert cancelled_in_flight > 0, "the storm must cancel some probes while they run"
    assert peak <= 3
    assert cb.state is CircuitState.HALF_OPEN
    assert_at_rest(proxy)
    assert_half_open_admits_exactly(cb, 3)
