"""Regression tests for the defects of issue 15 (retry, budgets, breaker, decorators, store).

Each test names its item; each fails on the code before its fix. Time comes from
the ``clock`` fixture or a :class:`ManualTimer`; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
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
    Mesh,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
    ThresholdCrossed,
    TokenBucketRetryBudget,
    disable_retries,
    set_testing,
    with_circuit_breaker,
)
from codomyrmex.service_mesh.timers import ManualTimer


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


# -- items 1 and 2: hedging ---------------------------------------------------------------------

WAIT = 30.0  # a bound on waiting for another thread (never a timing assertion)


class BadRequest(Exception):
    """A failure the policy's ``retry_on`` does not retry (a 400)."""


class Gate:
    """A sync handler: attempts on ``slow`` instances block until ``open`` is set."""

    def __init__(self, slow: str = "", fail: str = "", bad: str = "") -> None:
        self.slow, self.fail, self.bad = slow, fail, bad
        self.open = threading.Event()
        self.lock = threading.Lock()
        self.attempts: list[str] = []
        self.running = 0
        self.most = 0
        self.ended = threading.Semaphore(0)

    def __call__(self, inst: ServiceInstance) -> str:
        with self.lock:
            self.attempts.append(inst.id)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if inst.id in self.slow:
                assert self.open.wait(WAIT)
            if inst.id in self.bad:
                raise BadRequest(inst.id)
            if inst.id in self.fail:
                raise Boom(inst.id)
            return inst.id
        finally:
            with self.lock:
                self.running -= 1
            self.ended.release()


def hedging_proxy(
    clock: Any,
    ids: str = "abc",
    *,
    max_hedged_attempts: int = 3,
    hedging_delay: float = 1.0,
    breaker: CircuitBreaker | None = None,
    bulkhead: Bulkhead | None = None,
    **policy_kwargs: Any,
) -> tuple[ServiceProxy, ManualTimer]:
    timer = ManualTimer()
    policy_kwargs.setdefault("jitter", False)
    policy = RetryPolicy(
        sleep=clock.sleep, async_sleep=clock.async_sleep, clock=timer, timer=timer, **policy_kwargs
    )
    proxy = ServiceProxy(
        "orders",
        make_lb(ids),
        circuit_breaker=breaker or CircuitBreaker("orders", clock=clock),
        retry_policy=policy,
        bulkhead=bulkhead,
        hedging_delay=hedging_delay,
        max_hedged_attempts=max_hedged_attempts,
    )
    return proxy, timer


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize(
    "switch", [disable_retries, lambda: set_testing(attempts=1)], ids=["disable", "testing"]
)
def test_item1_the_testing_switches_stop_hedges(clock: Any, switch: Any) -> None:
    proxy, timer = hedging_proxy(clock)
    gate = Gate(slow="a")
    with switch():
        caller, outcome = in_thread(lambda: proxy.call(gate))
        timer.until_waiting(1)
        assert timer.deadlines() == [None]  # no hedge is due: the caller waits for "a"
        timer.advance(10.0)
        gate.open.set()
        caller.join(WAIT)
    assert outcome == ["a"]
    assert gate.attempts == ["a"]


def test_item1_set_testing_caps_the_hedges(clock: Any) -> None:
    proxy, _ = hedging_proxy(clock, max_hedged_attempts=3)
    gate = Gate(fail="abc")
    with set_testing(attempts=2), pytest.raises(Boom):
        proxy.call(gate)
    assert gate.attempts == ["a", "b"]


def test_item1_async_the_testing_switches_stop_hedges(run_async: Any, clock: Any) -> None:
    proxy, _ = hedging_proxy(clock)
    attempts: list[str] = []

    async def fail_async(inst: ServiceInstance) -> None:
        attempts.append(inst.id)
        raise Boom(inst.id)

    with disable_retries(), pytest.raises(Boom):
        run_async(proxy.call_async(fail_async))
    assert attempts == ["a"]


def test_item1_a_hedged_call_inside_a_retried_call_adds_up(flavour: Any, clock: Any) -> None:
    """3 hedges inside 3 retried attempts made 9 attempts; nested, they add up: 3 + 1 + 1."""
    proxy, _ = hedging_proxy(clock)
    outer = RetryPolicy(max_retries=2, sleep=clock.sleep, async_sleep=clock.async_sleep)
    attempts: list[str] = []

    def handler(inst: ServiceInstance) -> None:
        attempts.append(inst.id)
        raise Boom(inst.id)

    if flavour.is_async:

        async def call() -> Any:
            return await proxy.call_async(flavour.make_async(handler))

        with pytest.raises(Boom):
            flavour.run(outer.execute_async(call))
    else:
        with pytest.raises(Boom):
            outer.execute(lambda: proxy.call(handler))
    assert len(attempts) == 5


def test_item1_a_failure_retry_on_excludes_ends_the_hedged_call(flavour: Any, clock: Any) -> None:
    proxy, _ = hedging_proxy(clock, retry_on=lambda exc: not isinstance(exc, BadRequest))
    gate = Gate(bad="abc")
    with pytest.raises(BadRequest) as caught:
        flavour.proxy(proxy, gate)
    assert caught.value.args == ("a",)
    assert gate.attempts == ["a"]  # not re-sent to every instance


def test_item2_a_late_loser_keeps_the_bulkhead_slot_and_feeds_nothing(clock: Any) -> None:
    bulkhead = Bulkhead(1, name="orders")
    breaker = CircuitBreaker("orders", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    proxy, timer = hedging_proxy(clock, "ab", breaker=breaker, bulkhead=bulkhead)
    gate = Gate(slow="a", fail="a")
    caller, outcome = in_thread(lambda: proxy.call(gate))
    timer.until_waiting(1)
    timer.advance(1.0)  # the hedge goes to "b" and wins
    caller.join(WAIT)
    assert outcome == ["b"]
    assert gate.ended.acquire(timeout=WAIT)  # "b" has ended; "a" still runs
    assert bulkhead.in_flight == 1  # the loser still holds the call's slot
    with pytest.raises(BulkheadFullError):
        proxy.call(gate)  # so the bound holds: no second call beside the loser
    gate.open.set()
    assert gate.ended.acquire(timeout=WAIT)  # the loser failed, after the call
    deadline = threading.Event()
    for _ in range(10_000):
        if bulkhead.in_flight == 0:
            break
        deadline.wait(0.001)
    assert bulkhead.in_flight == 0
    assert gate.most == 2
    assert breaker.state is CircuitState.CLOSED  # the late failure counted as nothing
    assert breaker.failure_count == 0
    assert {i.id: i.connections for i in proxy.load_balancer.instances} == {"a": 0, "b": 0}


def test_item2_a_hedge_never_goes_to_an_instance_already_tried(clock: Any) -> None:
    proxy, timer = hedging_proxy(clock, "a")
    gate = Gate(slow="a")
    caller, outcome = in_thread(lambda: proxy.call(gate))
    timer.until_waiting(1)
    timer.advance(1.0)  # a hedge is due, but the only instance is busy with this call
    timer.until_waiting(1)
    assert timer.deadlines() == [None]
    gate.open.set()
    caller.join(WAIT)
    assert outcome == ["a"]
    assert gate.attempts == ["a"]


def test_item2_async_a_hedge_never_goes_to_an_instance_already_tried(
    run_async: Any, clock: Any
) -> None:
    proxy, timer = hedging_proxy(clock, "a")
    attempts: list[str] = []
    release = asyncio.Event()

    async def slow(inst: ServiceInstance) -> str:
        attempts.append(inst.id)
        await release.wait()
        return inst.id

    async def main() -> Any:
        call = asyncio.ensure_future(proxy.call_async(slow))
        await timer.until_waiting_async(1)
        timer.advance(1.0)
        for _ in range(50):
            await asyncio.sleep(0)
        assert timer.deadlines() == [None]
        release.set()
        return await call

    assert run_async(main()) == "a"
    assert attempts == ["a"]


def test_item2_no_hedge_starts_after_max_elapsed(clock: Any) -> None:
    """Sync: the deadline also bounds the running attempt (as in async)."""
    proxy, timer = hedging_proxy(clock, "ab", hedging_delay=2.0, max_elapsed=1.5)
    gate = Gate(slow="ab")
    caller, outcome = in_thread(lambda: proxy.call(gate))
    timer.until_waiting(1)
    assert timer.deadlines() == [1.5]  # the attempt's deadline comes before the hedge's
    timer.advance(1.5)
    caller.join(WAIT)
    [error] = outcome
    assert isinstance(error, TimeoutError)
    assert gate.attempts == ["a"]  # no hedge after the deadline
    gate.open.set()


def test_item2_async_no_hedge_starts_after_max_elapsed(run_async: Any, clock: Any) -> None:
    proxy, timer = hedging_proxy(clock, "ab", hedging_delay=2.0, max_elapsed=1.5)
    attempts: list[str] = []

    async def hang(inst: ServiceInstance) -> None:
        attempts.append(inst.id)
        await asyncio.Event().wait()

    async def main() -> None:
        call = asyncio.ensure_future(proxy.call_async(hang))
        await timer.until_waiting_async(2)  # the hedging delay and the attempt's deadline
        assert sorted(d for d in timer.deadlines() if d is not None) == [1.5, 2.0]
        timer.advance(2.0)
        await call

    with pytest.raises(TimeoutError):
        run_async(main())
    assert attempts == ["a"]


def test_item2_a_sync_hedge_obeys_attempt_timeout(clock: Any) -> None:
    breaker = CircuitBreaker("orders", clock=clock)
    proxy, timer = hedging_proxy(
        clock, "ab", hedging_delay=60.0, attempt_timeout=0.5, breaker=breaker
    )
    gate = Gate(slow="a")
    caller, outcome = in_thread(lambda: proxy.call(gate))
    timer.until_waiting(1)
    assert timer.deadlines() == [0.5]
    timer.advance(0.5)  # "a" timed out: the next hedge starts at once
    caller.join(WAIT)
    assert outcome == ["b"]
    assert gate.attempts == ["a", "b"]
    gate.open.set()
    assert gate.ended.acquire(timeout=WAIT) and gate.ended.acquire(timeout=WAIT)
    # The service breaker judges the call, which "b" won: the timed-out attempt is a
    # failure of instance "a" only (its late outcome counts as nothing).
    assert breaker.failure_count == 0


def test_item2_a_breaker_rejection_costs_no_token_when_hedging(flavour: Any, clock: Any) -> None:
    budget = TokenBucketRetryBudget(max_tokens=10, token_ratio=0.1)
    budget.tokens = 8.0
    proxy, _ = hedging_proxy(clock, budget=budget)
    proxy.circuit_breaker.force_open()
    with pytest.raises(CircuitOpenError):
        flavour.proxy(proxy, lambda inst: inst.id)
    assert budget.tokens == 8.0  # as when retrying: a rejection is not a failure


# -- item 8: listener signatures and equal-looking decorator configs ---------------------------


def test_item8_an_old_new_listener_is_called_with_old_and_new(clock: Any) -> None:
    seen: list[tuple[CircuitState, CircuitState]] = []
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, timeout_seconds=5.0),
        clock=clock,
        on_state_change=lambda old, new: seen.append((old, new)),
    )
    three: list[str] = []
    cb.add_listener(lambda breaker, old, new: three.append(breaker.name))
    cb.record_failure()
    clock.advance(5.0)
    assert cb.state is CircuitState.HALF_OPEN
    assert seen == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
    ]
    assert three == ["svc", "svc"]


def test_item8_a_two_argument_listener_can_be_removed(clock: Any) -> None:
    seen: list[CircuitState] = []

    def listener(old: CircuitState, new: CircuitState) -> None:
        seen.append(new)

    cb = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    cb.add_listener(listener)
    cb.remove_listener(listener)
    cb.record_failure()
    assert seen == []


@pytest.mark.parametrize("listener", [lambda: None, lambda a, b, c, d: None, lambda x: None])
def test_item8_a_listener_of_neither_form_is_refused_when_added(listener: Any) -> None:
    cb = CircuitBreaker("svc")
    with pytest.raises(TypeError, match="listener"):
        cb.add_listener(listener)


def test_item8_same_name_decorators_with_equal_looking_lambdas_share_a_breaker() -> None:
    mesh = Mesh()

    def config(threshold: int) -> CircuitBreakerConfig:
        return CircuitBreakerConfig(
            failure_threshold=threshold, failure_predicate=lambda exc: "5" in str(exc)
        )

    first = with_circuit_breaker("payments", config(3), mesh=mesh)(lambda: "a")
    second = with_circuit_breaker(
        "payments",
        CircuitBreakerConfig(failure_threshold=3, failure_predicate=lambda exc: "5" in str(exc)),
        mesh=mesh,
    )(lambda: "b")
    assert first.circuit_breaker is second.circuit_breaker
    with pytest.raises(ValueError, match="payments"):  # a different threshold still differs
        with_circuit_breaker("payments", config(4), mesh=mesh)
    with pytest.raises(ValueError, match="payments"):  # and so does different code
        with_circuit_breaker(
            "payments",
            CircuitBreakerConfig(
                failure_threshold=3, failure_predicate=lambda exc: "4" in str(exc)
            ),
            mesh=mesh,
        )


def test_item8_lambdas_capturing_different_values_are_different() -> None:
    mesh = Mesh()

    def config(code: str) -> CircuitBreakerConfig:
        return CircuitBreakerConfig(failure_predicate=lambda exc: code in str(exc))

    mesh.circuit_breaker("svc", config("503"))
    mesh.circuit_breaker("svc", config("503"))
    with pytest.raises(ValueError):
        mesh.circuit_breaker("svc", config("500"))


# -- item 10: METRICS_ONLY publishes crossings; HALF_OPEN judged by rate ------------------------


def test_item10_metrics_only_publishes_a_threshold_crossing_once(clock: Any) -> None:
    cb = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=3), clock=clock)
    events: list[Any] = []
    cb.subscribe(events.append)
    cb.metrics_only()
    for _ in range(5):
        cb.record_failure()
    crossings = [e for e in events if isinstance(e, ThresholdCrossed)]
    assert crossings == [ThresholdCrossed("svc", "failures", 3.0, 3.0)]
    assert cb.state is CircuitState.METRICS_ONLY
    cb.record_success()  # below the threshold again: the next crossing is announced
    for _ in range(3):
        cb.record_failure()
    assert len([e for e in events if isinstance(e, ThresholdCrossed)]) == 2


def test_item10_metrics_only_publishes_a_window_rate_crossing(flavour: Any, clock: Any) -> None:
    config = CircuitBreakerConfig(
        failure_rate_threshold=50.0, sliding_window_size=4, minimum_number_of_calls=4
    )
    cb = CircuitBreaker("svc", config, clock=clock)
    events: list[Any] = []
    cb.subscribe(events.append)
    cb.metrics_only()
    for ok in (True, False, True, False):
        try:
            flavour.breaker(cb, (lambda: "ok") if ok else fail_plain)
        except Boom:
            pass
    assert [e for e in events if isinstance(e, ThresholdCrossed)] == [
        ThresholdCrossed("svc", "failure_rate", 50.0, 50.0)
    ]


def fail_plain() -> None:
    raise Boom


def half_open(clock: Any, probes: int, **kwargs: Any) -> CircuitBreaker:
    config = CircuitBreakerConfig(
        failure_threshold=1,
        timeout_seconds=1.0,
        half_open_max_calls=probes,
        half_open_judged_by_rate=True,
        **kwargs,
    )
    cb = CircuitBreaker("svc", config, clock=clock)
    cb.record_failure()
    clock.advance(1.0)
    assert cb.state is CircuitState.HALF_OPEN
    return cb


def test_item10_half_open_by_rate_closes_below_the_rate(clock: Any) -> None:
    cb = half_open(clock, 4)
    outcomes = [True, False, True, True]  # 25% failures < 50%
    for k, ok in enumerate(outcomes):
        with pytest.raises(Boom) if not ok else _nothing():
            with cb.permit():
                if not ok:
                    raise Boom
        expected = CircuitState.CLOSED if k == 3 else CircuitState.HALF_OPEN
        assert cb.state is expected  # one failure did not re-open it


def test_item10_half_open_by_rate_reopens_at_the_rate(clock: Any) -> None:
    cb = half_open(
        clock, 4, failure_rate_threshold=50.0, sliding_window_size=1, minimum_number_of_calls=1
    )
    for ok in (False, True, False):
        with pytest.raises(Boom) if not ok else _nothing():
            with cb.permit():
                if not ok:
                    raise Boom
        assert cb.state is CircuitState.HALF_OPEN
    with cb.permit():
        pass
    assert cb.state is CircuitState.OPEN  # 2 of 4 failed: 50% >= 50%


def test_item10_half_open_by_rate_admits_the_probes_in_all(clock: Any) -> None:
    cb = half_open(clock, 2)
    with cb.permit():
        pass
    assert cb.can_execute()
    first = cb.permit()
    first.__enter__()
    assert not cb.can_execute()  # one ended, one running: no third probe
    with pytest.raises(CircuitOpenError):
        cb.permit().__enter__()
    first.__exit__(None, None, None)
    assert cb.state is CircuitState.CLOSED


def test_item10_half_open_by_rate_is_validated() -> None:
    with pytest.raises(TypeError, match="half_open_judged_by_rate"):
        CircuitBreakerConfig(half_open_judged_by_rate=1)  # type: ignore[arg-type]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- item 27: a store refusing an outcome ---------------------------------------------------------


class _Link:
    """A link to a fleet that is online but takes (or refuses) every outcome."""

    def __init__(self, takes: bool) -> None:
        self.takes = takes
        self.records = 0

    @property
    def online(self) -> bool:
        return True

    def acquire_probe(self, epoch: int) -> bool | None:
        return None

    def record(self, epoch: int, state: CircuitState, success: bool, slow: bool) -> bool:
        self.records += 1
        return self.takes

    def release(self, epoch: int) -> None:
        return None

    def operate(self, state: CircuitState) -> None:
        return None


class _Store:
    def __init__(self, takes: bool) -> None:
        self.link = _Link(takes)

    def bind(self, breaker: CircuitBreaker) -> _Link:
        return self.link


@pytest.mark.parametrize("takes", [False, True])
def test_item27_a_breaker_judges_an_outcome_its_store_refused(
    flavour: Any, clock: Any, takes: bool
) -> None:
    store = _Store(takes)
    cb = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=2), clock=clock, store=store)
    for _ in range(2):
        with pytest.raises(Boom):
            flavour.breaker(cb, fail_plain)
    assert store.link.records == 2
    # refused: the breaker decides on its own counts; taken: the fleet decides (and is silent)
    assert cb.state is (CircuitState.CLOSED if takes else CircuitState.OPEN)


# -- item 26: what the corrected docstrings say ---------------------------------------------------


def test_item26_the_token_bucket_spends_nothing_when_asked() -> None:
    budget = TokenBucketRetryBudget(max_tokens=10, token_ratio=0.5)
    assert all(budget.try_retry() for _ in range(100))  # asking is free...
    assert budget.tokens == 10.0
    for _ in range(5):
        budget.record_outcome(False)  # ...failures cost
    assert not budget.try_retry()


def test_item26_the_default_policy_raises_mesh_rejections_at_once(clock: Any) -> None:
    policy = RetryPolicy(max_retries=3, sleep=clock.sleep)
    for error in (
        BulkheadFullError("b", 1, "full"),
        CircuitOpenError("c", CircuitState.OPEN, 1.0),
    ):
        calls = []

        def refuse(error: Exception = error) -> None:
            calls.append(1)
            raise error

        with pytest.raises(type(error)):
            policy.execute(refuse)
        assert calls == [1]
    assert "retry after" not in str(CircuitOpenError("c", CircuitState.FORCED_OPEN, math.inf))


def test_a_hedge_not_started_teaches_peak_ewma_nothing(clock: Any) -> None:
    lb = LoadBalancer(LoadBalancerStrategy.PEAK_EWMA, rng=random.Random(0), clock=clock)
    lb.register(ServiceInstance(id="a", host="10.0.0.1", port=80))
    timer = ManualTimer()
    policy = RetryPolicy(sleep=clock.sleep, clock=clock, timer=timer)
    proxy = ServiceProxy("orders", lb, retry_policy=policy, hedging_delay=1.0)

    def measured(inst: ServiceInstance) -> str:
        clock.advance(0.05)
        return inst.id

    assert proxy.call(measured) == "a"
    assert lb.latency_estimate("a") == pytest.approx(0.05)
    gate = Gate(slow="a")
    caller, outcome = in_thread(lambda: proxy.call(gate))
    timer.until_waiting(1)
    timer.advance(1.0)  # a hedge is due; the only instance was tried: it is given back
    timer.until_waiting(1)
    gate.open.set()
    caller.join(WAIT)
    assert outcome == ["a"]
    estimate = lb.latency_estimate("a")
    assert estimate is not None and estimate < 0.051  # no 1000-second "sample"
