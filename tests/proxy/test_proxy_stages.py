"""The proxy's optional stages (issue 5): fallback, hedging, bulkhead, per-attempt timeout.

Behaviour shared by ``call`` and ``call_async`` runs once per flavour. Hedging
differs by design (attempts on a thread pool vs tasks), so each has its own
tests. Backoff waits go to the fake clock; a slow attempt is one blocked on an
event the test sets, never one that sleeps. ``hedging_delay`` and
``attempt_timeout`` run on a :class:`ManualTimer` the test advances.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    LoadBalancer,
    LoadBalancerStrategy,
    NoHealthyInstanceError,
    PercentageRetryBudget,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
    TokenBucketRetryBudget,
)
from codomyrmex.service_mesh.budget import RetryBudget
from codomyrmex.service_mesh.events import CallRejected, Event
from codomyrmex.service_mesh.timers import ManualTimer

WAIT = 5.0  # upper bound on any wait for another thread or task


class Boom(Exception):
    """A handler's failure."""


class Abort(BaseException):
    """A non-Exception interruption."""


def make_lb(ids: str = "ab") -> LoadBalancer:
    lb = LoadBalancer(LoadBalancerStrategy.ROUND_ROBIN, rng=random.Random(0))
    for k, i in enumerate(ids):
        lb.register(ServiceInstance(id=i, host=f"10.0.0.{k + 1}", port=8080))
    return lb


def make_proxy(
    clock: Any,
    lb: LoadBalancer | None = None,
    *,
    failure_threshold: int = 100,
    breaker: CircuitBreaker | None = None,
    bulkhead: Bulkhead | None = None,
    hedging_delay: float | None = None,
    max_hedged_attempts: int = 2,
    fallback: Callable[[Exception], Any] | None = None,
    **policy_kwargs: Any,
) -> ServiceProxy:
    policy_kwargs.setdefault("jitter", False)
    policy = RetryPolicy(
        sleep=clock.sleep, async_sleep=clock.async_sleep, clock=clock, **policy_kwargs
    )
    if breaker is None:
        config = CircuitBreakerConfig(failure_threshold=failure_threshold)
        breaker = CircuitBreaker("orders", config, clock=clock)
    return ServiceProxy(
        "orders",
        load_balancer=lb if lb is not None else make_lb(),
        circuit_breaker=breaker,
        retry_policy=policy,
        bulkhead=bulkhead,
        hedging_delay=hedging_delay,
        max_hedged_attempts=max_hedged_attempts,
        fallback=fallback,
    )


def connections(proxy: ServiceProxy) -> dict[str, int]:
    return {i.id: i.connections for i in proxy.load_balancer.instances}


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for another thread"
        time.sleep(0.001)


class Recorder:
    """A fallback that records the exception it was given."""

    def __init__(self, result: Any = "fallback") -> None:
        self.result = result
        self.errors: list[Exception] = []

    def __call__(self, error: Exception) -> Any:
        self.errors.append(error)
        return self.result


# -- fallback ---------------------------------------------------------------------------------


def test_fallback_supplies_the_result_when_the_circuit_is_open(flavour: Any, clock: Any) -> None:
    fallback = Recorder()
    proxy = make_proxy(clock, fallback=fallback)
    proxy.circuit_breaker.force_open()
    ran: list[str] = []
    assert flavour.proxy(proxy, lambda inst: ran.append(inst.id)) == "fallback"
    assert ran == []
    [error] = fallback.errors
    assert isinstance(error, CircuitOpenError)
    assert error.state is CircuitState.FORCED_OPEN


def test_fallback_supplies_the_result_when_no_instance_is_healthy(flavour: Any, clock: Any) -> None:
    fallback = Recorder()
    proxy = make_proxy(clock, make_lb(""), fallback=fallback)
    assert flavour.proxy(proxy, lambda inst: "never") == "fallback"
    [error] = fallback.errors
    assert isinstance(error, NoHealthyInstanceError)
    assert error.service_name == "orders"


def test_fallback_supplies_the_result_when_the_bulkhead_is_full(flavour: Any, clock: Any) -> None:
    fallback = Recorder()
    bulkhead = Bulkhead(1, name="orders")
    proxy = make_proxy(clock, bulkhead=bulkhead, fallback=fallback)
    bulkhead.acquire()  # someone else holds the only slot
    assert flavour.proxy(proxy, lambda inst: "never") == "fallback"
    [error] = fallback.errors
    assert isinstance(error, BulkheadFullError)
    assert bulkhead.in_flight == 1  # the refused call took nothing
    bulkhead.release()
    assert flavour.proxy(proxy, lambda inst: inst.id) == "a"
    assert bulkhead.in_flight == 0


def test_fallback_gets_the_last_failure_when_retries_run_out(flavour: Any, clock: Any) -> None:
    fallback = Recorder()
    raised: list[Boom] = []

    def handler(inst: ServiceInstance) -> str:
        raised.append(Boom(inst.id))
        raise raised[-1]

    proxy = make_proxy(clock, fallback=fallback, max_retries=2)
    assert flavour.proxy(proxy, handler) == "fallback"
    assert len(raised) == 3
    assert fallback.errors == [raised[-1]]
    assert fallback.errors[0] is raised[-1]
    assert connections(proxy) == {"a": 0, "b": 0}


def test_fallback_gets_the_last_failure_when_the_budget_refuses(flavour: Any, clock: Any) -> None:
    fallback = Recorder()
    budget = TokenBucketRetryBudget(max_tokens=2, token_ratio=0.1)
    proxy = make_proxy(clock, fallback=fallback, max_retries=5, budget=budget)
    raised: list[Boom] = []

    def handler(inst: ServiceInstance) -> str:
        raised.append(Boom())
        raise raised[-1]

    assert flavour.proxy(proxy, handler) == "fallback"
    assert len(raised) == 1  # 2 -> 1 token: not above half, no retry
    assert fallback.errors[0] is raised[0]
    assert clock.sleeps == []


def test_fallback_is_not_called_on_success(flavour: Any, clock: Any) -> None:
    fallback = Recorder()
    proxy = make_proxy(clock, fallback=fallback)
    assert flavour.proxy(proxy, lambda inst: inst.id) == "a"
    assert fallback.errors == []


def test_an_exception_from_the_fallback_propagates(flavour: Any, clock: Any) -> None:
    def fallback(error: Exception) -> Any:
        raise KeyError("no cached value") from error

    proxy = make_proxy(clock, fallback=fallback, max_retries=0)

    def handler(inst: ServiceInstance) -> str:
        raise Boom

    with pytest.raises(KeyError) as caught:
        flavour.proxy(proxy, handler)
    assert isinstance(caught.value.__cause__, Boom)


def test_interruptions_bypass_the_fallback(flavour: Any, clock: Any) -> None:
    fallback = Recorder()
    bulkhead = Bulkhead(1)
    proxy = make_proxy(clock, bulkhead=bulkhead, fallback=fallback)

    def handler(inst: ServiceInstance) -> str:
        raise Abort

    with pytest.raises(Abort):
        flavour.proxy(proxy, handler)
    assert fallback.errors == []
    assert bulkhead.in_flight == 0
    assert connections(proxy) == {"a": 0, "b": 0}


def test_an_async_fallback_may_be_a_coroutine_function(run_async: Any, clock: Any) -> None:
    async def fallback(error: Exception) -> str:
        await asyncio.sleep(0)
        return f"cached after {type(error).__name__}"

    proxy = make_proxy(clock, make_lb(""), fallback=fallback)

    async def handler(inst: ServiceInstance) -> str:
        return "never"

    assert run_async(proxy.call_async(handler)) == "cached after NoHealthyInstanceError"


def test_a_result_still_rejected_after_the_last_retry_is_returned_not_replaced(
    flavour: Any, clock: Any
) -> None:
    """The fallback is for exceptions; a rejected result is returned as the policy says."""
    fallback = Recorder()
    proxy = make_proxy(
        clock, fallback=fallback, max_retries=1, retry_on_result=lambda r: r == "busy"
    )
    assert flavour.proxy(proxy, lambda inst: "busy") == "busy"
    assert fallback.errors == []


# -- bulkhead as a stage -------------------------------------------------------------------------


def test_the_bulkhead_caps_concurrent_calls_through_the_proxy(run_async: Any, clock: Any) -> None:
    events: list[Event] = []
    bulkhead = Bulkhead(2, name="orders")
    proxy = make_proxy(clock, bulkhead=bulkhead, max_retries=0)
    proxy.subscribe(events.append)

    async def main() -> None:
        release = asyncio.Event()
        started: list[str] = []

        async def handler(inst: ServiceInstance) -> str:
            started.append(inst.id)
            await release.wait()
            return inst.id

        calls = [asyncio.create_task(proxy.call_async(handler)) for _ in range(2)]
        for _ in range(100):
            if len(started) == 2:
                break
            await asyncio.sleep(0)
        assert bulkhead.in_flight == 2
        with pytest.raises(BulkheadFullError):
            await proxy.call_async(handler)
        release.set()
        assert sorted(await asyncio.gather(*calls)) == ["a", "b"]

    run_async(main())
    assert bulkhead.in_flight == 0
    assert [e.reason for e in events if isinstance(e, CallRejected)] == ["bulkhead_full"]


def test_the_bulkhead_holds_one_slot_for_a_whole_retried_call(flavour: Any, clock: Any) -> None:
    bulkhead = Bulkhead(1)
    proxy = make_proxy(clock, bulkhead=bulkhead, max_retries=3)
    seen: list[int] = []

    def handler(inst: ServiceInstance) -> str:
        seen.append(bulkhead.in_flight)
        if len(seen) < 3:
            raise Boom
        return "ok"

    assert flavour.proxy(proxy, handler) == "ok"
    assert seen == [1, 1, 1]  # retries do not queue behind their own call
    assert bulkhead.in_flight == 0


# -- hedging (sync: a thread pool) --------------------------------------------------------------


class Gate:
    """A handler whose attempt on ``slow`` instances blocks until the test opens the gate."""

    def __init__(self, slow: str = "a", fail: str = "") -> None:
        self.slow = slow
        self.fail = fail
        self.open = threading.Event()
        self.attempts: list[str] = []
        self.finished: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, inst: ServiceInstance) -> str:
        with self.lock:
            self.attempts.append(inst.id)
        if inst.id in self.slow:
            assert self.open.wait(WAIT)
        with self.lock:
            self.finished.append(inst.id)
        if inst.id in self.fail:
            raise Boom(inst.id)
        return inst.id


def call_in_thread(proxy: ServiceProxy, handler: Any) -> tuple[threading.Thread, list[Any]]:
    """Start ``proxy.call(handler)`` on a thread; its result or exception lands in the list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(proxy.call(handler))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_slow_first_attempt_gets_a_hedge_on_another_instance(clock: Any) -> None:
    timer = ManualTimer()
    proxy = make_proxy(clock, hedging_delay=2.0, timer=timer)
    gate = Gate(slow="a")
    try:
        caller, outcome = call_in_thread(proxy, gate)
        timer.until_waiting(1)
        assert timer.deadlines() == [2.0]  # the hedging delay, on the injected timer
        timer.advance(1.999)
        assert gate.attempts == ["a"]
        timer.advance(0.001)
        caller.join(WAIT)
        assert outcome == ["b"]  # the hedge answered first and won
        assert gate.attempts == ["a", "b"]
        assert connections(proxy) == {"a": 1, "b": 0}  # the loser is still running...
        gate.open.set()
        wait_until(lambda: connections(proxy) == {"a": 0, "b": 0})  # ...then is released
        assert gate.finished == ["b", "a"]
    finally:
        gate.open.set()
        proxy.close()


def test_a_fast_first_attempt_gets_no_hedge(clock: Any) -> None:
    timer = ManualTimer()
    proxy = make_proxy(clock, hedging_delay=60.0, timer=timer)
    gate = Gate(slow="")
    try:
        assert proxy.call(gate) == "a"  # the timer never moved: no wait for the delay
        assert gate.attempts == ["a"]
        assert connections(proxy) == {"a": 0, "b": 0}
    finally:
        proxy.close()


def test_a_failed_attempt_starts_the_next_hedge_at_once(clock: Any) -> None:
    proxy = make_proxy(clock, hedging_delay=60.0)
    gate = Gate(slow="", fail="a")
    try:
        assert proxy.call(gate) == "b"
        assert gate.attempts == ["a", "b"]
    finally:
        proxy.close()


def test_when_every_hedge_fails_the_last_failure_is_raised(clock: Any) -> None:
    proxy = make_proxy(clock, make_lb("abc"), hedging_delay=60.0, max_hedged_attempts=3)
    gate = Gate(slow="", fail="abc")
    try:
        with pytest.raises(Boom) as caught:
            proxy.call(gate)
        assert gate.attempts == ["a", "b", "c"]
        assert caught.value.args == ("c",)
        assert connections(proxy) == {"a": 0, "b": 0, "c": 0}
    finally:
        proxy.close()


def test_hedging_launches_at_most_max_hedged_attempts(clock: Any) -> None:
    proxy = make_proxy(clock, make_lb("abc"), hedging_delay=0.0, max_hedged_attempts=2)
    gate = Gate(slow="abc")
    try:
        result: list[str] = []
        caller = threading.Thread(target=lambda: result.append(proxy.call(gate)), daemon=True)
        caller.start()
        wait_until(lambda: len(gate.attempts) == 2)
        gate.open.set()
        caller.join(WAIT)
        assert result and result[0] in ("a", "b")
        assert sorted(gate.attempts) == ["a", "b"]
        wait_until(lambda: connections(proxy) == {"a": 0, "b": 0, "c": 0})
    finally:
        gate.open.set()
        proxy.close()


class CountingBudget(RetryBudget):
    """A budget that refuses every retry and says when, and how often, it was asked."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.requests = 0
        self.questions = 0

    def record_request(self) -> None:
        self.requests += 1

    def try_retry(self) -> bool:
        self.questions += 1
        self.asked.set()
        return False


def test_a_hedge_needs_the_retry_budget(clock: Any) -> None:
    budget = CountingBudget()
    timer = ManualTimer()
    proxy = make_proxy(clock, hedging_delay=0.005, budget=budget, timer=timer)
    gate = Gate(slow="a")
    try:
        result: list[str] = []
        caller = threading.Thread(target=lambda: result.append(proxy.call(gate)), daemon=True)
        caller.start()
        timer.until_waiting(1)
        timer.advance(0.005)
        assert budget.asked.wait(WAIT)  # the hedge was asked for, and refused
        gate.open.set()
        caller.join(WAIT)
        assert result == ["a"]
        assert gate.attempts == ["a"]
        assert budget.requests == 1
    finally:
        gate.open.set()
        proxy.close()


def test_a_refused_hedge_is_not_asked_for_again_while_the_attempt_runs(clock: Any) -> None:
    """With ``hedging_delay=0`` a refusal must not turn the wait into a busy loop."""
    budget = CountingBudget()
    timer = ManualTimer()
    proxy = make_proxy(
        clock, make_lb("abc"), hedging_delay=0.0, max_hedged_attempts=3, budget=budget, timer=timer
    )
    gate = Gate(slow="a", fail="a")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            proxy.call(gate)
        except BaseException as exc:
            errors.append(exc)

    try:
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        assert budget.asked.wait(WAIT)
        timer.until_waiting(1)  # the caller now waits for the attempt...
        assert timer.deadlines() == [None]  # ...on no timer: it cannot poll
        assert budget.questions == 1
        gate.open.set()  # the attempt fails: a hedge may be asked for again, once
        caller.join(WAIT)
        assert not caller.is_alive()
        assert [type(e) for e in errors] == [Boom]
        assert budget.questions == 2
        assert gate.attempts == ["a"]
    finally:
        gate.open.set()
        proxy.close()


def test_a_hedge_spends_the_percentage_budget(clock: Any) -> None:
    budget = PercentageRetryBudget(
        percent=100.0, min_retries_per_second=0.0, window_seconds=10, clock=clock
    )
    proxy = make_proxy(
        clock, make_lb("abc"), hedging_delay=60.0, max_hedged_attempts=3, budget=budget
    )
    gate = Gate(slow="", fail="abc")
    try:
        with pytest.raises(Boom):
            proxy.call(gate)  # 1 request: 1 hedge allowed, the third attempt refused
        assert gate.attempts == ["a", "b"]
        assert (budget.requests, budget.retries) == (1, 1)
    finally:
        proxy.close()


def test_a_hedged_success_refunds_the_token_bucket_once(clock: Any) -> None:
    budget = TokenBucketRetryBudget(max_tokens=10, token_ratio=1.0)
    budget.tokens = 6.0
    proxy = make_proxy(clock, hedging_delay=60.0, budget=budget)
    try:
        assert proxy.call(lambda inst: inst.id) == "a"
        assert budget.tokens == 7.0
    finally:
        proxy.close()


# -- hedging (async: tasks) -----------------------------------------------------------------------


class AsyncGate:
    """The async twin of :class:`Gate`; records attempts that were cancelled."""

    def __init__(self, slow: str = "a", fail: str = "") -> None:
        self.slow = slow
        self.fail = fail
        self.open: asyncio.Event | None = None
        self.attempts: list[str] = []
        self.cancelled: list[str] = []

    async def __call__(self, inst: ServiceInstance) -> str:
        if self.open is None:
            self.open = asyncio.Event()
        self.attempts.append(inst.id)
        try:
            if inst.id in self.slow:
                await self.open.wait()
            else:
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled.append(inst.id)
            raise
        if inst.id in self.fail:
            raise Boom(inst.id)
        return inst.id


def test_async_slow_first_attempt_is_hedged_and_the_loser_cancelled(
    run_async: Any, clock: Any
) -> None:
    proxy = make_proxy(clock, hedging_delay=0.0)
    gate = AsyncGate(slow="a")
    assert run_async(proxy.call_async(gate)) == "b"
    assert gate.attempts == ["a", "b"]
    assert gate.cancelled == ["a"]
    assert connections(proxy) == {"a": 0, "b": 0}  # released before the call returned
    assert proxy.circuit_breaker.failure_count == 0  # a cancelled loser is no failure


def test_async_hedge_after_the_hedging_delay(run_async: Any, clock: Any) -> None:
    timer = ManualTimer()
    proxy = make_proxy(clock, hedging_delay=2.0, timer=timer)
    gate = AsyncGate(slow="a")

    async def main() -> str:
        call = asyncio.ensure_future(proxy.call_async(gate))
        await timer.until_waiting_async(1)
        assert timer.deadlines() == [2.0]
        timer.advance(1.999)
        for _ in range(20):
            await asyncio.sleep(0)
        assert gate.attempts == ["a"]
        timer.advance(0.001)
        return await call

    assert run_async(main()) == "b"
    assert gate.cancelled == ["a"]


def test_async_fast_first_attempt_gets_no_hedge(run_async: Any, clock: Any) -> None:
    proxy = make_proxy(clock, hedging_delay=60.0)
    gate = AsyncGate(slow="")
    assert run_async(proxy.call_async(gate)) == "a"
    assert gate.attempts == ["a"]


def test_async_failed_attempt_starts_the_next_hedge_at_once(run_async: Any, clock: Any) -> None:
    proxy = make_proxy(clock, hedging_delay=60.0)
    gate = AsyncGate(slow="", fail="a")
    assert run_async(proxy.call_async(gate)) == "b"
    assert gate.attempts == ["a", "b"]


def test_async_every_hedge_failing_goes_to_the_fallback(run_async: Any, clock: Any) -> None:
    fallback = Recorder()
    proxy = make_proxy(clock, hedging_delay=60.0, fallback=fallback)
    gate = AsyncGate(slow="", fail="ab")
    assert run_async(proxy.call_async(gate)) == "fallback"
    assert [e.args for e in fallback.errors] == [("b",)]


def test_async_hedge_needs_the_retry_budget(run_async: Any, clock: Any) -> None:
    budget = PercentageRetryBudget(
        percent=0.0, min_retries_per_second=0.0, window_seconds=10, clock=clock
    )
    proxy = make_proxy(clock, hedging_delay=0.0, budget=budget)

    async def main() -> str:
        gate = AsyncGate(slow="a")
        call = asyncio.create_task(proxy.call_async(gate))
        for _ in range(50):
            await asyncio.sleep(0)
        assert gate.attempts == ["a"]
        assert gate.open is not None
        gate.open.set()
        return await asyncio.wait_for(call, WAIT)

    assert run_async(main()) == "a"
    assert (budget.requests, budget.retries) == (1, 0)


def test_async_refused_hedge_is_not_asked_for_again_while_the_attempt_runs(
    run_async: Any, clock: Any
) -> None:
    budget = CountingBudget()
    proxy = make_proxy(clock, hedging_delay=0.0, budget=budget)

    async def main() -> str:
        gate = AsyncGate(slow="a")
        call = asyncio.create_task(proxy.call_async(gate))
        for _ in range(50):
            await asyncio.sleep(0)
        assert budget.questions == 1  # refused once; no polling on a zero timer
        assert gate.open is not None
        gate.open.set()
        return await asyncio.wait_for(call, WAIT)

    assert run_async(main()) == "a"


def test_async_hedged_success_refunds_the_token_bucket_once(run_async: Any, clock: Any) -> None:
    budget = TokenBucketRetryBudget(max_tokens=10, token_ratio=1.0)
    budget.tokens = 6.0
    proxy = make_proxy(clock, hedging_delay=60.0, budget=budget)
    assert run_async(proxy.call_async(AsyncGate(slow=""))) == "a"
    assert budget.tokens == 7.0


def test_cancelling_a_hedged_call_cancels_every_attempt(run_async: Any, clock: Any) -> None:
    proxy = make_proxy(clock, hedging_delay=0.0)
    gate = AsyncGate(slow="ab")

    async def main() -> None:
        call = asyncio.create_task(proxy.call_async(gate))
        for _ in range(100):
            if len(gate.attempts) == 2:
                break
            await asyncio.sleep(0)
        assert connections(proxy) == {"a": 1, "b": 1}
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    run_async(main())
    assert sorted(gate.cancelled) == ["a", "b"]
    assert connections(proxy) == {"a": 0, "b": 0}


# -- per-attempt timeout ---------------------------------------------------------------------------


def test_a_timed_out_attempt_fails_over_and_the_breaker_judges_the_call(
    run_async: Any, clock: Any
) -> None:
    breaker = CircuitBreaker("orders", CircuitBreakerConfig(failure_threshold=2), clock=clock)
    timer = ManualTimer()
    proxy = make_proxy(clock, breaker=breaker, max_retries=1, attempt_timeout=3.0, timer=timer)
    gate = AsyncGate(slow="ab")

    async def one_call() -> None:
        call = asyncio.ensure_future(proxy.call_async(gate))
        for _ in range(2):
            await timer.until_waiting_async(1)
            assert timer.deadlines() == [timer.now + 3.0]
            timer.advance(3.0)
        await call

    async def main() -> list[CircuitState]:
        states = []
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await one_call()
            states.append(breaker.state)
        return states

    states = run_async(main())
    assert gate.attempts == ["a", "b", "a", "b"]  # each timeout was retried on the other instance
    assert gate.cancelled == ["a", "b", "a", "b"]  # each timed-out attempt was cancelled
    assert clock.sleeps == []  # failing over to the untried instance does not wait
    # one breaker failure per call (both attempts timed out), not one per attempt
    assert states == [CircuitState.CLOSED, CircuitState.OPEN]
    assert connections(proxy) == {"a": 0, "b": 0}


# -- describe() -----------------------------------------------------------------------------------


def test_describe_lists_the_default_stages_in_order(clock: Any) -> None:
    proxy = make_proxy(clock, max_retries=2)
    assert proxy.describe().split(" -> ") == [
        "circuit breaker(orders, judges calls)",
        "retry(max_retries=2)",
        "pick instance(round_robin, counts connections, ejects outliers)",
        "handler",
    ]


def test_describe_names_outlier_ejection_only_when_it_is_on(clock: Any) -> None:
    lb = LoadBalancer(LoadBalancerStrategy.LEAST_CONNECTIONS, outlier_detection=None)
    proxy = make_proxy(clock, lb, max_retries=1)
    assert proxy.describe().split(" -> ") == [
        "circuit breaker(orders, judges calls)",
        "retry(max_retries=1)",
        "pick instance(least_connections, counts connections)",
        "handler",
    ]
    assert "ejects outliers" in ServiceProxy("orders").describe()


def test_describe_lists_every_configured_stage_in_order(clock: Any) -> None:
    proxy = make_proxy(
        clock,
        bulkhead=Bulkhead(4),
        hedging_delay=0.05,
        max_hedged_attempts=3,
        fallback=Recorder(),
        attempt_timeout=0.5,
    )
    stages = [stage.split("(")[0] for stage in proxy.describe().split(" -> ")]
    assert stages == [
        "fallback",
        "bulkhead",
        "circuit breaker",
        "hedging",
        "pick instance",
        "attempt timeout",
        "handler",
    ]
    assert "max_concurrent=4" in proxy.describe()
    assert "delay=0.05s, max_attempts=3" in proxy.describe()


# -- nested retries through the proxy --------------------------------------------------------------


def test_a_retried_function_inside_a_proxy_call_makes_one_attempt_per_proxy_retry(
    flavour: Any, clock: Any
) -> None:
    attempts: list[str] = []
    inner = RetryPolicy(max_retries=5, sleep=clock.sleep)

    def fetch(inst: ServiceInstance) -> str:
        attempts.append(inst.id)
        raise Boom

    proxy = make_proxy(clock, max_retries=1)
    with pytest.raises(Boom):
        flavour.proxy(proxy, lambda inst: inner.execute(fetch, inst))
    # In full on the proxy's first attempt, then once per proxy retry: 6 + 1, not 2 x 6.
    assert attempts == ["a"] * 6 + ["b"]


def test_a_result_rejected_by_retry_on_result_loses_the_hedge_race(clock: Any) -> None:
    """A hedged attempt answering with a rejected result (say a 503) is no winner."""
    proxy = make_proxy(
        clock, hedging_delay=60.0, retry_on_result=lambda result: result == "unavailable"
    )
    answers = {"a": "unavailable", "b": "ok"}
    seen: list[str] = []

    def handler(instance: ServiceInstance) -> str:
        seen.append(instance.id)
        return answers[instance.id]

    try:
        assert proxy.call(handler) == "ok"
        assert seen == ["a", "b"]
        answers["b"] = "unavailable"
        seen.clear()
        # Every hedge rejected: the last rejected result is returned, as retries do.
        assert proxy.call(handler) == "unavailable"
        assert sorted(seen) == ["a", "b"]
        assert connections(proxy) == {"a": 0, "b": 0}
    finally:
        proxy.close()


def test_async_a_rejected_result_loses_the_hedge_race(run_async: Any, clock: Any) -> None:
    proxy = make_proxy(
        clock, hedging_delay=60.0, retry_on_result=lambda result: result == "unavailable"
    )
    answers = {"a": "unavailable", "b": "ok"}

    async def handler(instance: ServiceInstance) -> str:
        return answers[instance.id]

    assert run_async(proxy.call_async(handler)) == "ok"
    assert connections(proxy) == {"a": 0, "b": 0}


# -- from review: hedging threads, call_once, reassigned stages ------------------------------


def test_sync_hedges_see_the_callers_context_and_never_queue(clock: Any) -> None:
    """Each hedged attempt runs on its own thread in a copy of the caller's context: many
    concurrent hedged calls never wait for one another's threads."""
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    callers = 12
    barrier = threading.Barrier(callers, timeout=WAIT)
    proxy = make_proxy(clock, hedging_delay=60.0)
    seen: list[str] = []

    def handler(instance: ServiceInstance) -> str:
        seen.append(request_id.get("missing"))
        barrier.wait()  # passes only when all the callers' attempts run at once
        return instance.id

    def caller(n: int) -> None:
        request_id.set(f"req-{n}")
        proxy.call(handler)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not barrier.broken
    assert sorted(seen) == sorted(f"req-{n}" for n in range(callers))
    assert connections(proxy) == {"a": 0, "b": 0}


def test_call_once_makes_one_attempt_behind_every_stage(clock: Any) -> None:
    proxy = make_proxy(
        clock, hedging_delay=0.0, bulkhead=Bulkhead(1), fallback=lambda exc: f"fallback:{exc!r}"
    )
    attempts: list[str] = []

    def fail(instance: ServiceInstance) -> str:
        attempts.append(instance.id)
        raise Boom(instance.id)

    assert proxy.call_once(fail) == "fallback:Boom('a')"  # no retry, no hedge; fallback
    assert attempts == ["a"]
    assert proxy.call_once(lambda instance: instance.id) == "b"  # balanced
    assert proxy.bulkhead is not None
    proxy.bulkhead.acquire()  # hold the only slot: call_once is refused like any call
    try:
        assert proxy.call_once(lambda instance: instance.id).startswith("fallback:BulkheadFull")
    finally:
        proxy.bulkhead.release()
    assert connections(proxy) == {"a": 0, "b": 0}


def test_async_call_once_makes_one_attempt(run_async: Any, clock: Any) -> None:
    proxy = make_proxy(clock, max_retries=3)
    attempts: list[str] = []

    async def fail(instance: ServiceInstance) -> str:
        attempts.append(instance.id)
        raise Boom(instance.id)

    with pytest.raises(Boom):
        run_async(proxy.call_once_async(fail))
    assert attempts == ["a"]
    assert clock.sleeps == []


def test_stages_assigned_after_construction_take_effect(clock: Any) -> None:
    proxy = make_proxy(clock, max_retries=0)

    def fail(instance: ServiceInstance) -> str:
        raise Boom(instance.id)

    proxy.fallback = lambda exc: "fallback"
    assert proxy.call(fail) == "fallback"
    proxy.fallback = None
    replacement = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1))
    proxy.circuit_breaker = replacement
    with pytest.raises(Boom):
        proxy.call(fail)
    assert replacement.state is CircuitState.OPEN
    with pytest.raises(TypeError, match="circuit_breaker"):
        proxy.circuit_breaker = "not a breaker"  # type: ignore[assignment]
    assert proxy.circuit_breaker is replacement


def test_event_durations_use_the_clock_that_started_them() -> None:
    """A latency-aware balancer on its own clock: events measure with that same clock."""
    from conftest import FakeClock

    balancer_clock = FakeClock(start=5000.0)
    lb = LoadBalancer(LoadBalancerStrategy.PEAK_EWMA, clock=balancer_clock)
    lb.register(ServiceInstance("a", "127.0.0.1", 8001))
    proxy = ServiceProxy("svc", lb)  # the proxy keeps its real default clock
    seen: list[Event] = []
    proxy.subscribe(seen.append)

    def handler(instance: ServiceInstance) -> str:
        balancer_clock.advance(0.25)
        return instance.id

    assert proxy.call(handler) == "a"
    assert [round(e.duration, 6) for e in seen] == [0.25]  # type: ignore[attr-defined]


def test_a_hedged_call_the_breaker_refuses_gives_its_bulkhead_slot_back(
    flavour: Any, clock: Any
) -> None:
    """Refused before any hedge started: the slot the call took is free again (it was
    kept for good by sync hedged calls, until the bulkhead refused everything)."""
    bulkhead = Bulkhead(2)
    proxy = make_proxy(clock, bulkhead=bulkhead, hedging_delay=1.0)
    proxy.circuit_breaker.force_open()
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            flavour.proxy(proxy, lambda instance: "ok")
        assert bulkhead.in_flight == 0
    proxy.circuit_breaker.reset()
    assert flavour.proxy(proxy, lambda instance: "ok") == "ok"
