"""Retry policies beyond plain backoff (issue 5).

Jitter modes against a reference computed from an identically seeded RNG,
``retry_on_result``, delay overrides (Retry-After), retry budgets, the nested
retry guard and the testing switches. Behaviour shared by ``execute`` and
``execute_async`` runs once per flavour; waits go to the ``clock`` fixture.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    PercentageRetryBudget,
    RetryPolicy,
    TokenBucketRetryBudget,
    disable_retries,
    set_testing,
)
from codomyrmex.service_mesh.events import Event, RetryGaveUp, RetryScheduled
from codomyrmex.service_mesh.retry import RetryAfter


class Boom(Exception):
    """The failure our functions raise."""


@dataclass
class Response:
    status: int


class Script:
    """A call that raises or returns the scripted outcomes in turn (the last one repeats)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = outcomes
        self.attempts = 0
        self.raised: list[BaseException] = []

    def __call__(self) -> Any:
        outcome = self.outcomes[min(self.attempts, len(self.outcomes) - 1)]
        self.attempts += 1
        if isinstance(outcome, type) and issubclass(outcome, BaseException):
            outcome = outcome(self.attempts)
        if isinstance(outcome, BaseException):
            self.raised.append(outcome)
            raise outcome
        return outcome


def policy(clock: Any, **options: Any) -> RetryPolicy:
    options.setdefault("sleep", clock.sleep)
    options.setdefault("async_sleep", clock.async_sleep)
    return RetryPolicy(**options)


def run(flavour: Any, retry: RetryPolicy, fn: Callable[[], Any]) -> Any:
    """The call's result, or the exception it ended with."""
    try:
        return flavour.retry(retry, fn)
    except Exception as exc:
        return exc


# -- jitter modes ----------------------------------------------------------------------------


def capped(attempt: int, initial: float = 0.1, cap: float = 2.0, base: float = 2.0) -> float:
    return min(cap, initial * base**attempt)


def test_no_jitter_waits_the_capped_exponential(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=6, initial_delay=0.1, max_delay=2.0, jitter="none")
    assert isinstance(run(flavour, retry, Script(Boom)), Boom)
    assert clock.sleeps == pytest.approx([capped(n) for n in range(6)])
    assert RetryPolicy(jitter=False).jitter_mode == "none"


def test_full_jitter_draws_uniformly_below_the_capped_exponential(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=6, max_delay=2.0, jitter="full", rng=random.Random(42))
    run(flavour, retry, Script(Boom))
    reference = random.Random(42)
    assert clock.sleeps == [reference.uniform(0.0, capped(n)) for n in range(6)]
    assert RetryPolicy(jitter=True).jitter_mode == "full"
    assert RetryPolicy().jitter_mode == "full"


def test_equal_jitter_keeps_half_and_draws_the_other_half(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=6, max_delay=2.0, jitter="equal", rng=random.Random(7))
    run(flavour, retry, Script(Boom))
    reference = random.Random(7)
    expected = [capped(n) / 2 + reference.uniform(0.0, capped(n) / 2) for n in range(6)]
    assert clock.sleeps == expected
    assert all(capped(n) / 2 <= s <= capped(n) for n, s in enumerate(clock.sleeps))


def test_decorrelated_jitter_grows_from_the_previous_wait(flavour: Any, clock: Any) -> None:
    """AWS: ``sleep = min(cap, uniform(base, 3 * sleep))``, starting from ``sleep = base``."""
    retry = policy(
        clock,
        max_retries=12,
        initial_delay=0.1,
        max_delay=2.0,
        jitter="decorrelated",
        rng=random.Random(5),
    )
    run(flavour, retry, Script(Boom))
    reference = random.Random(5)
    expected, sleep = [], 0.1
    for _ in range(12):
        sleep = min(2.0, reference.uniform(0.1, 3 * sleep))
        expected.append(sleep)
    assert clock.sleeps == pytest.approx(expected, rel=1e-12)
    assert 2.0 in clock.sleeps  # it reached the cap...
    assert all(0.1 <= s <= 2.0 for s in clock.sleeps)  # ...and never left [base, cap]


def test_get_delay_decorrelated_uses_the_given_previous_wait() -> None:
    retry = RetryPolicy(initial_delay=1.0, max_delay=100.0, jitter="decorrelated", rng=None)
    for previous in (1.0, 4.0, 30.0):
        for _ in range(50):
            assert 1.0 <= retry.get_delay(5, previous) <= min(100.0, 3 * previous)
    assert retry.get_delay(0, 1e300) <= 100.0


@pytest.mark.parametrize("mode", ["none", "full", "equal", "decorrelated"])
def test_every_mode_stays_within_the_cap_for_huge_attempts(mode: str) -> None:
    retry = RetryPolicy(max_delay=3.0, jitter=mode, rng=random.Random(1))
    for attempt in (0, 10, 1000, 10**6):
        assert 0.0 <= retry.get_delay(attempt) <= 3.0


@pytest.mark.parametrize("bad", ["exponential", "", 1, None])
def test_unknown_jitter_mode_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=bad)


def test_rng_must_be_a_random_instance() -> None:
    with pytest.raises(TypeError, match="rng"):
        RetryPolicy(rng=42)  # type: ignore[arg-type]


# -- retry_on_result ---------------------------------------------------------------------------


def unavailable(result: Any) -> bool:
    return isinstance(result, Response) and result.status == 503


def test_a_rejected_result_is_retried_until_accepted(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=5, retry_on_result=unavailable, jitter=False)
    fn = Script(Response(503), Response(503), Response(200))
    assert run(flavour, retry, fn) == Response(200)
    assert fn.attempts == 3
    assert clock.sleeps == pytest.approx([0.1, 0.2])


def test_the_last_result_is_returned_when_attempts_run_out(flavour: Any, clock: Any) -> None:
    events: list[Event] = []
    retry = policy(clock, max_retries=2, retry_on_result=unavailable, name="orders")
    retry.subscribe(events.append)
    last = Response(503)
    fn = Script(Response(503), Response(503), last)
    assert run(flavour, retry, fn) is last
    assert fn.attempts == 3
    assert events[-1] == RetryGaveUp("orders", 3, None)
    assert [e.error for e in events if isinstance(e, RetryScheduled)] == [None, None]


def test_results_and_exceptions_mix(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=3, retry_on_result=unavailable)
    fn = Script(Boom, Response(503), Boom, "fine")
    assert run(flavour, retry, fn) == "fine"
    assert fn.attempts == 4


def test_a_raising_result_predicate_keeps_the_result(flavour: Any, clock: Any) -> None:
    def broken(result: Any) -> bool:
        raise RuntimeError("predicate bug")

    retry = policy(clock, retry_on_result=broken)
    assert run(flavour, retry, Script("value")) == "value"
    assert clock.sleeps == []


# -- delay overrides (Retry-After) ---------------------------------------------------------------


class Throttled(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def retry_after_header(exc: BaseException) -> bool | RetryAfter:
    """A ``retry_on`` predicate: honour a Retry-After, otherwise the policy's backoff."""
    if isinstance(exc, Throttled) and exc.retry_after is not None:
        return RetryAfter(exc.retry_after)
    return isinstance(exc, Exception)


def test_a_retry_on_delay_overrides_the_backoff(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=3, jitter=False, retry_on=retry_after_header)
    fn = Script(Throttled(1.5), Throttled(None), Throttled(0.25), "ok")
    assert run(flavour, retry, fn) == "ok"
    assert clock.sleeps == pytest.approx([1.5, 0.2, 0.25])  # the middle one: backoff 0.1 * 2


def test_a_delay_override_is_capped_by_max_delay(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=2, max_delay=5.0, retry_on=retry_after_header)
    assert run(flavour, retry, Script(Throttled(3600.0), Throttled(-4.0), "ok")) == "ok"
    assert clock.sleeps == [5.0]  # 3600 capped; a negative delay means now (no sleep at all)


def test_a_zero_delay_override_retries_at_once(flavour: Any, clock: Any) -> None:
    """``Retry-After: 0`` means "retry now", not "do not retry"."""
    retry = policy(clock, max_retries=2, retry_on=retry_after_header)
    fn = Script(Throttled(0.0), Throttled(0), "ok")
    assert run(flavour, retry, fn) == "ok"
    assert fn.attempts == 3
    assert clock.sleeps == []


def test_default_retry_on_honours_a_failures_retry_after(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=3, max_delay=10.0)
    fn = Script(Throttled(2.0), Throttled(0.0), Throttled(60.0), "ok")
    assert run(flavour, retry, fn) == "ok"
    assert clock.sleeps == [2.0, 10.0]  # 0.0: at once; 60 capped


def test_a_false_verdict_stops_at_once(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=5, retry_on=lambda exc: False)
    fn = Script(Boom)
    assert isinstance(run(flavour, retry, fn), Boom)
    assert fn.attempts == 1


# -- budgets ----------------------------------------------------------------------------------


def test_token_bucket_arithmetic() -> None:
    budget = TokenBucketRetryBudget(max_tokens=4, token_ratio=0.5)
    assert budget.tokens == 4.0
    budget.record_outcome(False)
    assert (budget.tokens, budget.try_retry()) == (3.0, True)
    budget.record_outcome(False)
    assert (budget.tokens, budget.try_retry()) == (2.0, False)  # not above half
    budget.record_outcome(True)
    assert (budget.tokens, budget.try_retry()) == (2.5, True)
    for _ in range(10):
        budget.record_outcome(False)
    assert budget.tokens == 0.0  # never negative
    for _ in range(20):
        budget.record_outcome(True)
    assert budget.tokens == 4.0  # never above the maximum
    assert budget.try_retry() and budget.tokens == 4.0  # asking spends nothing


def test_token_bucket_refusal_raises_the_last_real_failure_at_once(
    flavour: Any, clock: Any
) -> None:
    budget = TokenBucketRetryBudget(max_tokens=4, token_ratio=0.1)
    retry = policy(clock, max_retries=10, budget=budget, jitter=False)
    fn = Script(Boom)
    error = run(flavour, retry, fn)
    # 4 -> 3 (> 2: retry) -> 2 (not > 2: refused)
    assert fn.attempts == 2
    assert error is fn.raised[-1]
    assert clock.sleeps == [0.1]  # no wait before giving up
    assert budget.tokens == 2.0


def test_token_bucket_is_shared_by_every_call_and_refilled_by_successes(
    flavour: Any, clock: Any
) -> None:
    budget = TokenBucketRetryBudget(max_tokens=10, token_ratio=1.0)
    retry = policy(clock, max_retries=3, budget=budget)
    attempts = []
    for _ in range(4):
        fn = Script(Boom)
        run(flavour, retry, fn)
        attempts.append(fn.attempts)
    # 10 -> 6 after the first call's four failures; then 5, 4, 3: never above half again
    assert attempts == [4, 1, 1, 1]
    assert budget.tokens == 3.0
    for _ in range(4):
        assert run(flavour, retry, Script("ok")) == "ok"
    assert budget.tokens == 7.0
    fn = Script(Boom, "ok")
    assert run(flavour, retry, fn) == "ok"  # 7 -> 6: above half, so retried
    assert fn.attempts == 2
    assert budget.tokens == 7.0


def test_percentage_budget_allows_a_share_of_recent_requests(clock: Any) -> None:
    budget = PercentageRetryBudget(
        percent=20.0, min_retries_per_second=0.0, window_seconds=10, clock=clock
    )
    for _ in range(10):
        budget.record_request()
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]
    assert (budget.requests, budget.retries) == (10, 2)
    clock.advance(9.0)
    assert not budget.try_retry()  # still inside the 10-second window
    clock.advance(1.0)
    assert (budget.requests, budget.retries) == (0, 0)  # the window has moved past them
    assert not budget.try_retry()  # nothing left to retry on
    for _ in range(5):
        budget.record_request()
    assert [budget.try_retry() for _ in range(2)] == [True, False]


def test_percentage_budget_spreads_requests_counted_while_quiet_over_their_seconds(
    clock: Any,
) -> None:
    """Requests are counted without the clock; the next read files them evenly over the
    seconds since the last one, so a long quiet stretch cannot inflate the window."""
    budget = PercentageRetryBudget(
        percent=100.0, min_retries_per_second=0.0, window_seconds=10, clock=clock
    )
    assert budget.requests == 0
    for _ in range(100):
        budget.record_request()
    clock.advance(20.0)  # 100 requests over 20 s: half of them fall inside the window
    assert budget.requests == 50
    clock.advance(5.0)  # half of the window's seconds expire: 5 s x 5 per second
    assert budget.requests == 25
    for _ in range(3):
        budget.record_request()
    assert budget.requests == 28  # counted in the current second


def test_percentage_budget_minimum_lets_low_traffic_retry(clock: Any) -> None:
    budget = PercentageRetryBudget(
        percent=0.0, min_retries_per_second=0.5, window_seconds=4, clock=clock
    )
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]
    clock.advance(4.0)
    assert budget.try_retry()


def test_percentage_budget_refusal_through_a_policy(flavour: Any, clock: Any) -> None:
    budget = PercentageRetryBudget(
        percent=50.0, min_retries_per_second=0.0, window_seconds=10, clock=clock
    )
    retry = policy(clock, max_retries=5, budget=budget)
    first, second = Script(Boom), Script(Boom)
    run(flavour, retry, first)  # 1 request: 0.5 retries allowed
    assert first.attempts == 1
    run(flavour, retry, second)  # 2 requests: 1 retry allowed
    assert second.attempts == 2
    assert isinstance(second.raised[-1], Boom)
    assert (budget.requests, budget.retries) == (2, 1)


def test_budget_refusal_returns_the_last_rejected_result(flavour: Any, clock: Any) -> None:
    budget = TokenBucketRetryBudget(max_tokens=2, token_ratio=0.1)
    retry = policy(clock, max_retries=5, retry_on_result=unavailable, budget=budget)
    last = Response(503)
    assert run(flavour, retry, Script(last)) is last
    assert clock.sleeps == []  # 2 -> 1: refused before any wait


# -- nested retries ----------------------------------------------------------------------------


def test_nested_retries_add_up_instead_of_multiplying(flavour: Any, clock: Any) -> None:
    """The outer call's first attempt runs the inner policy in full; once the outer call is
    being retried, the inner one makes a single attempt each time."""
    inner_fn = Script(Boom)
    inner = policy(clock, max_retries=4)
    outer = policy(clock, max_retries=2)
    if flavour.is_async:

        async def call_inner() -> Any:
            return await inner.execute_async(flavour.make_async(inner_fn))

        assert isinstance(flavour.run(run_async(outer, call_inner)), Boom)
    else:
        assert isinstance(run(flavour, outer, lambda: inner.execute(inner_fn)), Boom)
    assert inner_fn.attempts == 7  # 5 + 1 + 1 over 3 outer attempts, not 3 x 5


def test_nested_true_multiplies_attempts(flavour: Any, clock: Any) -> None:
    inner_fn = Script(Boom)
    inner = policy(clock, max_retries=1, nested=True)
    outer = policy(clock, max_retries=2)
    if flavour.is_async:

        async def call_inner() -> Any:
            return await inner.execute_async(flavour.make_async(inner_fn))

        flavour.run(run_async(outer, call_inner))
    else:
        run(flavour, outer, lambda: inner.execute(inner_fn))
    assert inner_fn.attempts == 6


def test_the_nested_guard_is_lifted_when_the_outer_call_ends(flavour: Any, clock: Any) -> None:
    inner = policy(clock, max_retries=2)
    outer = policy(clock, max_retries=1)
    run(flavour, outer, lambda: inner.execute(Script(Boom)))
    fn = Script(Boom)
    run(flavour, inner, fn)
    assert fn.attempts == 3


def test_decorated_wrappers_are_guarded_too(clock: Any) -> None:
    inner_fn = Script(Boom)
    inner = policy(clock, max_retries=3).wrap(inner_fn)
    outer = policy(clock, max_retries=3).wrap(inner)
    with pytest.raises(Boom):
        outer()
    assert inner_fn.attempts == 7  # 4, then 1 per outer retry


async def run_async(retry: RetryPolicy, fn: Callable[[], Any]) -> Any:
    try:
        return await retry.execute_async(fn)
    except Exception as exc:
        return exc


# -- testing switches -------------------------------------------------------------------------


def test_set_testing_makes_waits_zero_and_caps_attempts(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=5, initial_delay=30.0)
    with set_testing(attempts=2):
        fn = Script(Boom)
        assert isinstance(run(flavour, retry, fn), Boom)
        assert fn.attempts == 2
        assert clock.sleeps == []
    fn = Script(Boom)
    run(flavour, retry, fn)  # restored on exit
    assert fn.attempts == 6
    assert len(clock.sleeps) == 5


def test_set_testing_can_keep_each_policys_attempts(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=3, initial_delay=30.0)
    with set_testing(True, attempts=None):
        fn = Script(Boom, Boom, Boom, "ok")
        assert run(flavour, retry, fn) == "ok"
    assert clock.sleeps == []


def test_set_testing_takes_effect_without_a_with_block(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=3)
    set_testing(True, attempts=1)
    try:
        fn = Script(Boom)
        run(flavour, retry, fn)
        assert fn.attempts == 1
    finally:
        set_testing(False)
    fn = Script(Boom)
    run(flavour, retry, fn)
    assert fn.attempts == 4


def test_disable_retries_makes_exactly_one_attempt(flavour: Any, clock: Any) -> None:
    retry = policy(clock, max_retries=3, retry_on_result=unavailable)
    with disable_retries():
        fn = Script(Boom, "ok")
        assert isinstance(run(flavour, retry, fn), Boom)
        assert fn.attempts == 1
        assert run(flavour, retry, Script(Response(503))) == Response(503)
    assert run(flavour, retry, Script(Boom, "ok")) == "ok"


def test_switches_nest_and_restore_in_order(clock: Any) -> None:
    retry = policy(clock, max_retries=4)

    def attempts() -> int:
        fn = Script(Boom)
        with pytest.raises(Boom):
            retry.execute(fn)
        return fn.attempts

    with set_testing(attempts=3):
        assert attempts() == 3
        with disable_retries():
            assert attempts() == 1
        assert attempts() == 3
    assert attempts() == 5


def test_set_testing_validates(clock: Any) -> None:
    with pytest.raises(TypeError, match="testing"):
        set_testing("yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempts"):
        set_testing(True, attempts=0)


def test_a_retry_inside_a_proxy_handler_is_guarded(flavour: Any, clock: Any) -> None:
    """The proxy's own retries are the outer call: the handler's policy doesn't multiply them."""
    from codomyrmex.service_mesh import LoadBalancer, ServiceInstance, ServiceProxy

    lb = LoadBalancer()
    lb.register(ServiceInstance("a", "127.0.0.1", 8001))
    lb.register(ServiceInstance("b", "127.0.0.1", 8002))
    breaker = CircuitBreaker("nested-proxy", CircuitBreakerConfig(failure_threshold=100))
    proxy = ServiceProxy("nested", lb, breaker, policy(clock, max_retries=2))
    inner_fn = Script(Boom)
    inner = policy(clock, max_retries=4)
    with pytest.raises(Boom):
        flavour.proxy(proxy, lambda instance: inner.execute(inner_fn))
    assert inner_fn.attempts == 7  # 5, then 1 per proxy retry


def test_a_sync_retry_inside_an_async_retried_call_is_guarded(clock: Any) -> None:
    inner_fn = Script(Boom)
    inner = policy(clock, max_retries=4)
    outer = policy(clock, max_retries=2)

    async def call_inner() -> Any:
        return inner.execute(inner_fn)

    with pytest.raises(Boom):
        asyncio.run(outer.execute_async(call_inner))
    assert inner_fn.attempts == 7


def test_tasks_started_inside_a_retried_call_inherit_the_guard(clock: Any) -> None:
    """Fan-out: retries in tasks that a call being retried starts make one attempt each."""
    fns = [Script(Boom), Script(Boom)]
    inner = policy(clock, max_retries=4)
    outer = policy(clock, max_retries=1)

    async def fan_out() -> Any:
        tasks = [asyncio.ensure_future(inner.execute_async(_async(fn))) for fn in fns]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    with pytest.raises(Boom):
        asyncio.run(outer.execute_async(fan_out))
    assert [fn.attempts for fn in fns] == [6, 6]  # 5 in the first outer attempt, then 1


def _async(fn: Callable[[], Any]) -> Callable[[], Any]:
    async def call() -> Any:
        return fn()

    return call
