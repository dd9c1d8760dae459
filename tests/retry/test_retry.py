"""Retry policy: attempts, backoff delays, what is retried, cancellation, deadlines.

Behaviour shared by ``execute`` and ``execute_async`` runs once per flavour (sync,
asyncio, uvloop). Time comes from the ``clock`` fixture; nothing sleeps for real:
``attempt_timeout`` runs on a :class:`ManualTimer` the test advances.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import traceback
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codomyrmex.service_mesh import (
    CircuitOpenError,
    CircuitState,
    NoHealthyInstanceError,
    RetryPolicy,
)
from codomyrmex.service_mesh.retry import RetryAfter
from codomyrmex.service_mesh.timers import ManualTimer


async def driven(timer: ManualTimer, coro: Any, step: float) -> Any:
    """Await ``coro``, moving ``timer`` on by ``step`` whenever the call waits on it."""
    task = asyncio.ensure_future(coro)
    for _ in range(100):
        for _ in range(10_000):
            if task.done() or timer.waiting:
                break
            await asyncio.sleep(0)
        if task.done():
            break
        timer.advance(step)
    return await task


class Boom(Exception):
    """The failure our test functions raise."""


class Abort(BaseException):
    """A non-Exception interruption, like KeyboardInterrupt but safe to raise in tests."""


class Flaky:
    """Fails ``failures`` times (raising fresh ``Boom``s), then returns ``result``."""

    def __init__(self, failures: int, result: Any = "ok", clock: Any = None) -> None:
        self.failures = failures
        self.result = result
        self.clock = clock
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.started_at: list[float] = []
        self.errors: list[BaseException] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        if self.clock is not None:
            self.started_at.append(self.clock())
        if len(self.calls) <= self.failures:
            err = Boom(len(self.calls))
            self.errors.append(err)
            raise err
        return self.result


class Raises:
    """Raises the given exception object on every call."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error


def policy_for(clock: Any, **kwargs: Any) -> RetryPolicy:
    """A policy whose waits go to the fake clock (recorded in ``clock.sleeps``)."""
    kwargs.setdefault("jitter", False)
    return RetryPolicy(sleep=clock.sleep, async_sleep=clock.async_sleep, clock=clock, **kwargs)


def expected_delay(initial: float, cap: float, base: float, attempt: int) -> float:
    """``min(cap, initial * base ** attempt)`` without overflowing for huge attempts."""
    if initial == 0.0:
        return 0.0
    try:
        raw = initial * base**attempt
    except OverflowError:
        return cap
    return min(cap, raw)


# -- attempts -----------------------------------------------------------------------


def test_first_success_returns_without_retrying(flavour: Any, clock: Any) -> None:
    fn = Flaky(0, result=42)
    policy = policy_for(clock)
    assert flavour.retry(policy, fn, 1, 2, key="v") == 42
    assert fn.calls == [((1, 2), {"key": "v"})]
    assert clock.sleeps == []


def test_failures_are_retried_until_success(flavour: Any, clock: Any) -> None:
    fn = Flaky(2, result="done")
    policy = policy_for(clock, max_retries=3, initial_delay=0.1)
    assert flavour.retry(policy, fn, "x") == "done"
    assert len(fn.calls) == 3
    assert all(call == (("x",), {}) for call in fn.calls)
    assert clock.sleeps == [0.1, 0.2]


@pytest.mark.parametrize("max_retries", [0, 1, 3, 7])
def test_at_most_max_retries_plus_one_attempts(flavour: Any, clock: Any, max_retries: int) -> None:
    fn = Flaky(100)
    policy = policy_for(clock, max_retries=max_retries, initial_delay=0.01)
    with pytest.raises(Boom) as caught:
        flavour.retry(policy, fn)
    assert len(fn.calls) == max_retries + 1
    assert caught.value is fn.errors[-1]
    assert len(clock.sleeps) == max_retries


def test_last_exception_is_reraised_itself_with_its_traceback(flavour: Any, clock: Any) -> None:
    fn = Flaky(100)
    policy = policy_for(clock, max_retries=2)
    with pytest.raises(Boom) as caught:
        flavour.retry(policy, fn)
    err = caught.value
    assert type(err) is Boom, "never a wrapper"
    assert err is fn.errors[-1]
    assert err.args == (3,)
    frames = traceback.extract_tb(err.__traceback__)
    raise_site = frames[-1]
    assert raise_site.name == "__call__"
    assert raise_site.filename == __file__
    assert raise_site.line == "raise err"


# -- what is retried ----------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [CircuitOpenError("payments", CircuitState.OPEN, 5.0), NoHealthyInstanceError("orders")],
    ids=["CircuitOpenError", "NoHealthyInstanceError"],
)
def test_default_retry_on_raises_mesh_rejections_at_once(
    flavour: Any, clock: Any, error: Exception
) -> None:
    fn = Raises(error)
    policy = policy_for(clock, max_retries=5)
    assert policy.retry_on is None
    with pytest.raises(type(error)) as caught:
        flavour.retry(policy, fn)
    assert caught.value is error
    assert fn.calls == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "error", [KeyError("k"), OSError("io"), RuntimeError("r"), TimeoutError("t")]
)
def test_default_retry_on_retries_other_exceptions(
    flavour: Any, clock: Any, error: Exception
) -> None:
    fn = Raises(error)
    policy = policy_for(clock, max_retries=2)
    with pytest.raises(type(error)):
        flavour.retry(policy, fn)
    assert fn.calls == 3


@pytest.mark.parametrize("retry_on", [None, BaseException, lambda exc: True])
def test_base_exceptions_are_never_retried(flavour: Any, clock: Any, retry_on: Any) -> None:
    error = Abort()
    fn = Raises(error)
    policy = policy_for(clock, max_retries=3, retry_on=retry_on)
    with pytest.raises(Abort) as caught:
        flavour.retry(policy, fn)
    assert caught.value is error
    assert fn.calls == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("retry_on", "error", "retried"),
    [
        (ValueError, ValueError("v"), True),
        (ValueError, UnicodeError("subclass"), True),
        (ValueError, KeyError("k"), False),
        ((KeyError, ValueError), KeyError("k"), True),
        ((KeyError, ValueError), TypeError("t"), False),
        (CircuitOpenError, CircuitOpenError("x", CircuitState.OPEN, 1.0), True),
    ],
)
def test_retry_on_exception_types(
    flavour: Any, clock: Any, retry_on: Any, error: Exception, retried: bool
) -> None:
    fn = Raises(error)
    policy = policy_for(clock, max_retries=2, retry_on=retry_on)
    with pytest.raises(type(error)) as caught:
        flavour.retry(policy, fn)
    assert caught.value is error
    assert fn.calls == (3 if retried else 1)


def test_retry_on_predicate_decides_per_exception(flavour: Any, clock: Any) -> None:
    seen: list[BaseException] = []

    def transient(exc: BaseException) -> bool:
        seen.append(exc)
        return "transient" in str(exc)

    outcomes = iter([Boom("transient 1"), Boom("transient 2"), Boom("fatal"), "never"])

    def fn() -> Any:
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    policy = policy_for(clock, max_retries=5, retry_on=transient)
    with pytest.raises(Boom, match="fatal"):
        flavour.retry(policy, fn)
    assert [str(e) for e in seen] == ["transient 1", "transient 2", "fatal"]
    assert next(outcomes) == "never"


# -- waiting between attempts ---------------------------------------------------------


def test_sleep_receives_the_backoff_delays(flavour: Any, clock: Any) -> None:
    policy = policy_for(
        clock, max_retries=5, initial_delay=0.5, exponential_base=3.0, max_delay=4.0
    )
    with pytest.raises(Boom):
        flavour.retry(policy, Flaky(100))
    assert clock.sleeps == [0.5, 1.5, 4.0, 4.0, 4.0]


def test_jittered_sleeps_are_get_delay_draws_in_attempt_order(flavour: Any, clock: Any) -> None:
    kwargs: dict[str, Any] = {
        "max_retries": 6,
        "initial_delay": 1.0,
        "max_delay": 20.0,
        "jitter": True,
    }
    policy = policy_for(clock, rng=random.Random(2024), **kwargs)
    twin = RetryPolicy(rng=random.Random(2024), **kwargs)
    with pytest.raises(Boom):
        flavour.retry(policy, Flaky(100))
    assert clock.sleeps == [twin.get_delay(n) for n in range(6)]
    assert len(set(clock.sleeps)) == 6


def test_async_backoff_never_calls_the_blocking_sleep(run_async: Any, clock: Any) -> None:
    def blocking_sleep(seconds: float) -> None:
        raise AssertionError(f"sync sleep({seconds}) called from async code")

    policy = RetryPolicy(
        max_retries=3, jitter=False, sleep=blocking_sleep, async_sleep=clock.async_sleep
    )
    fn = Flaky(2)

    async def afn() -> Any:
        return fn()

    assert run_async(policy.execute_async(afn)) == "ok"
    assert clock.sleeps == [0.1, 0.2]


def test_default_async_sleep_is_asyncio_sleep(run_async: Any) -> None:
    policy = RetryPolicy(max_retries=2, initial_delay=0.001, jitter=False)
    assert policy.async_sleep is asyncio.sleep
    fn = Flaky(2)

    async def afn() -> Any:
        return fn()

    assert run_async(policy.execute_async(afn)) == "ok"
    assert len(fn.calls) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay": 0.0},
        {"initial_delay": 0.0, "jitter": True},
        {"initial_delay": 1.0, "max_delay": 0.0},
        {"initial_delay": 1.0, "max_delay": 0.0, "jitter": True},
    ],
)
def test_zero_delay_does_not_call_sleep_at_all(flavour: Any, kwargs: dict[str, Any]) -> None:
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)

    async def async_sleep(seconds: float) -> None:
        calls.append(seconds)

    policy = RetryPolicy(max_retries=4, sleep=sleep, async_sleep=async_sleep, **kwargs)
    fn = Flaky(100)
    with pytest.raises(Boom):
        flavour.retry(policy, fn)
    assert len(fn.calls) == 5
    assert calls == []


# -- get_delay ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("initial", "cap", "base", "delays"),
    [
        (0.1, 10.0, 2.0, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]),
        (1.0, 5.0, 1.0, [1.0] * 5),
        (0.5, 4.0, 3.0, [0.5, 1.5, 4.0, 4.0]),
        (2.0, 1.0, 2.0, [1.0, 1.0, 1.0]),
        (0.0, 1.0, 2.0, [0.0, 0.0]),
    ],
)
def test_get_delay_without_jitter_is_the_capped_exponential(
    initial: float, cap: float, base: float, delays: list[float]
) -> None:
    policy = RetryPolicy(initial_delay=initial, max_delay=cap, exponential_base=base, jitter=False)
    got = [policy.get_delay(n) for n in range(len(delays))]
    assert got == pytest.approx(delays, rel=1e-12, abs=0)
    assert got == [expected_delay(initial, cap, base, n) for n in range(len(delays))]


def test_get_delay_spec_example_value() -> None:
    policy = RetryPolicy(max_retries=3, initial_delay=0.1, max_delay=10.0, jitter=False)
    assert policy.get_delay(attempt=2) == 0.1 * 2.0**2


delays = st.floats(0.0, 1e4, allow_nan=False, allow_infinity=False)
bases = st.floats(1.0, 100.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(initial=delays, cap=delays, base=bases, attempt=st.integers(0, 3000))
def test_get_delay_formula_is_exact(initial: float, cap: float, base: float, attempt: int) -> None:
    policy = RetryPolicy(initial_delay=initial, max_delay=cap, exponential_base=base, jitter=False)
    assert policy.get_delay(attempt) == expected_delay(initial, cap, base, attempt)


@settings(max_examples=400, deadline=None)
@given(
    initial=delays,
    cap=delays,
    base=bases,
    attempt=st.one_of(st.integers(0, 3000), st.just(10**6), st.just(10**9)),
    seed=st.integers(0, 2**32),
)
def test_jittered_get_delay_is_within_zero_and_the_cap(
    initial: float, cap: float, base: float, attempt: int, seed: int
) -> None:
    policy = RetryPolicy(
        initial_delay=initial,
        max_delay=cap,
        exponential_base=base,
        jitter=True,
        rng=random.Random(seed),
    )
    delay = policy.get_delay(attempt)
    assert 0.0 <= delay <= expected_delay(initial, cap, base, attempt) <= cap


@pytest.mark.parametrize("jitter", [False, True], ids=["no-jitter", "jitter"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"initial_delay": 0.0},
        {"initial_delay": 0.0, "max_delay": 0.0},
        {"exponential_base": 1.0},
        {"exponential_base": 1.0000001},
        {"exponential_base": 1e6, "max_delay": 1e300},
        {"initial_delay": 1e-300, "max_delay": 1e300, "exponential_base": 2.0},
    ],
    ids=["defaults", "zero-initial", "all-zero", "base-1", "base-near-1", "huge", "tiny-initial"],
)
def test_get_delay_for_huge_attempts_never_raises_or_exceeds_the_cap(
    kwargs: dict[str, Any], jitter: bool
) -> None:
    policy = RetryPolicy(jitter=jitter, rng=random.Random(1), **kwargs)
    for attempt in (10**3, 10**6, 10**9, 10**18):
        delay = policy.get_delay(attempt)
        assert isinstance(delay, float)
        assert math.isfinite(delay)
        assert 0.0 <= delay <= policy.max_delay


def test_jitter_is_roughly_uniform_over_zero_to_cap() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=100.0, jitter=True, rng=random.Random(77))
    cap = 8.0  # 1.0 * 2 ** 3
    n = 20_000
    samples = [policy.get_delay(3) for _ in range(n)]
    assert all(0.0 <= s <= cap for s in samples)
    bins = Counter(min(int(s / cap * 10), 9) for s in samples)
    expected = n / 10
    chi2 = sum((bins[b] - expected) ** 2 / expected for b in range(10))
    assert chi2 < 27.9, (chi2, sorted(bins.items()))  # chi-square, 9 dof, p = 0.001
    assert abs(sum(samples) / n - cap / 2) < 0.1
    assert min(samples) < 0.01 * cap, "full jitter reaches down to 0"
    assert max(samples) > 0.99 * cap


def test_jitter_uses_the_injected_rng() -> None:
    a = RetryPolicy(rng=random.Random(3))
    b = RetryPolicy(rng=random.Random(3))
    c = RetryPolicy(rng=random.Random(4))
    seq_a = [a.get_delay(n % 5) for n in range(20)]
    assert seq_a == [b.get_delay(n % 5) for n in range(20)]
    assert seq_a != [c.get_delay(n % 5) for n in range(20)]


# -- sharing one policy ---------------------------------------------------------------


def test_one_policy_shared_by_16_threads_keeps_attempts_per_call() -> None:
    threads = 16
    local = threading.local()
    barrier = threading.Barrier(threads)
    sleeps: dict[int, list[float]] = {}

    def sleep(seconds: float) -> None:
        sleeps[local.k].append(seconds)
        barrier.wait(timeout=10)  # every thread waits at the same time: maximal overlap

    policy = RetryPolicy(max_retries=3, initial_delay=1.0, jitter=False, sleep=sleep)
    results: dict[int, Any] = {}
    calls: dict[int, int] = {}

    def worker(k: int) -> None:
        local.k = k
        sleeps[k] = []
        calls[k] = 0
        failures = 3 if k % 2 == 0 else 5  # even threads succeed on the last try

        def fn() -> int:
            calls[k] += 1
            if calls[k] <= failures:
                raise Boom(k, calls[k])
            return k

        try:
            results[k] = policy.execute(fn)
        except Boom as exc:
            results[k] = exc

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for k in range(threads):
        assert calls[k] == 4, (k, calls[k])
        assert sleeps[k] == [1.0, 2.0, 4.0], (k, sleeps[k])
        if k % 2 == 0:
            assert results[k] == k
        else:
            assert isinstance(results[k], Boom)
            assert results[k].args == (k, 4)


def test_one_policy_shared_by_many_tasks_keeps_attempts_per_call(
    run_async: Any, clock: Any
) -> None:
    policy = policy_for(clock, max_retries=4, initial_delay=1.0)

    async def task(k: int) -> Any:
        failures = k % 6
        calls = 0

        async def fn() -> int:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0)
            if calls <= failures:
                raise Boom(k)
            return k

        try:
            result: Any = await policy.execute_async(fn)
        except Boom as exc:
            result = exc
        return k, calls, result

    async def main() -> list[Any]:
        return await asyncio.gather(*(task(k) for k in range(200)))

    for k, calls, result in run_async(main()):
        failures = k % 6
        assert calls == min(failures, 4) + 1
        if failures <= 4:
            assert result == k
        else:
            assert isinstance(result, Boom)
    assert Counter(clock.sleeps) == {
        1.0: sum(1 for k in range(200) if k % 6 >= 1),
        2.0: sum(1 for k in range(200) if k % 6 >= 2),
        4.0: sum(1 for k in range(200) if k % 6 >= 3),
        8.0: sum(1 for k in range(200) if k % 6 >= 4),
    }


# -- async: cancellation ------------------------------------------------------------


@pytest.mark.parametrize("retry_on", [None, BaseException, lambda exc: True])
def test_cancelled_error_from_the_call_is_never_retried(run_async: Any, retry_on: Any) -> None:
    calls = 0
    sleeps: list[float] = []

    async def async_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    policy = RetryPolicy(max_retries=5, retry_on=retry_on, async_sleep=async_sleep)

    async def main() -> str:
        try:
            await policy.execute_async(fn)
        except asyncio.CancelledError:
            return "propagated"
        return "swallowed"

    assert run_async(main()) == "propagated"
    assert calls == 1
    assert sleeps == []


def test_cancelling_the_task_during_an_attempt_propagates_at_once(run_async: Any) -> None:
    calls = 0
    sleeps: list[float] = []

    async def async_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def fn() -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    policy = RetryPolicy(max_retries=5, async_sleep=async_sleep)

    async def main() -> bool:
        task = asyncio.create_task(policy.execute_async(fn))
        while calls == 0:
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait([task])
        return task.cancelled()

    assert run_async(main()) is True
    assert calls == 1
    assert sleeps == []


@pytest.mark.parametrize("injected", [False, True], ids=["asyncio.sleep", "injected-sleep"])
def test_cancellation_during_the_backoff_sleep_propagates_at_once(
    run_async: Any, injected: bool
) -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise Boom(calls)

    async def main() -> tuple[bool, bool]:
        asleep = asyncio.Event()

        async def forever(seconds: float) -> None:
            asleep.set()
            await asyncio.Event().wait()

        if injected:
            policy = RetryPolicy(max_retries=5, async_sleep=forever)
        else:  # a real 1000 s backoff: only cancellation can cut it short
            policy = RetryPolicy(
                max_retries=5, initial_delay=1000.0, max_delay=1000.0, jitter=False
            )
        task = asyncio.create_task(policy.execute_async(fn))
        if injected:
            await asleep.wait()
        else:
            while calls == 0:
                await asyncio.sleep(0)
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait([task], timeout=5)
        return task.done(), task.done() and task.cancelled()

    done, cancelled = run_async(main())
    assert done, "cancellation did not end the backoff wait"
    assert cancelled is True
    assert calls == 1


def test_cancelled_error_raised_by_the_backoff_sleep_propagates(run_async: Any) -> None:
    calls = 0
    waits: list[float] = []

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise Boom(calls)

    async def cancelled_sleep(seconds: float) -> None:
        waits.append(seconds)
        raise asyncio.CancelledError

    policy = RetryPolicy(max_retries=5, async_sleep=cancelled_sleep, retry_on=lambda exc: True)

    async def main() -> str:
        try:
            await policy.execute_async(fn)
        except asyncio.CancelledError:
            return "propagated"
        except Boom:
            return "swallowed into the call's own error"
        return "returned"

    assert run_async(main()) == "propagated"
    assert calls == 1
    assert len(waits) == 1


def test_execute_async_accepts_any_callable_returning_an_awaitable(run_async: Any) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()

        def returns_future() -> asyncio.Future[str]:
            fut = loop.create_future()
            fut.set_result("future")
            return fut

        plain = RetryPolicy()
        timed = RetryPolicy(attempt_timeout=5.0)
        return [
            await plain.execute_async(returns_future),
            await timed.execute_async(returns_future),
            await plain.execute_async(lambda: asyncio.sleep(0, result="coro")),
            await timed.execute_async(lambda: asyncio.sleep(0, result="coro")),
        ]

    assert run_async(main()) == ["future", "future", "coro", "coro"]


# -- async: attempt_timeout --------------------------------------------------------------


def test_attempt_timeout_is_a_retried_failure(run_async: Any, clock: Any) -> None:
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            await asyncio.Event().wait()  # hangs: only the attempt timeout ends it
        return f"attempt {calls}"

    timer = ManualTimer()
    policy = policy_for(clock, max_retries=3, attempt_timeout=5.0, initial_delay=0.5, timer=timer)
    assert run_async(driven(timer, policy.execute_async(fn), 5.0)) == "attempt 3"
    assert calls == 3
    assert clock.sleeps == [0.5, 1.0]


def test_attempt_timeout_on_every_attempt_raises_timeout_error(run_async: Any, clock: Any) -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    timer = ManualTimer()
    policy = policy_for(clock, max_retries=2, attempt_timeout=0.01, timer=timer)
    with pytest.raises(TimeoutError):
        run_async(driven(timer, policy.execute_async(fn), 0.01))
    assert calls == 3


def test_an_attempt_ends_at_its_timeout_not_before(run_async: Any, clock: Any) -> None:
    async def main() -> None:
        timer = ManualTimer()
        policy = policy_for(clock, max_retries=0, attempt_timeout=2.0, timer=timer)
        call = asyncio.ensure_future(policy.execute_async(asyncio.Event().wait))
        await timer.until_waiting_async(1)
        assert timer.deadlines() == [2.0]
        timer.advance(1.999)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not call.done()
        timer.advance(0.001)
        with pytest.raises(TimeoutError):
            await call

    run_async(main())


def test_attempt_timeout_does_not_cut_short_a_fast_attempt(run_async: Any, clock: Any) -> None:
    policy = policy_for(clock, max_retries=0, attempt_timeout=10.0)

    async def fn(x: int, *, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    assert run_async(policy.execute_async(fn, 1, y=2)) == 3


# -- max_elapsed ------------------------------------------------------------------------


def test_max_elapsed_stops_before_an_attempt_would_start_after_the_deadline(
    flavour: Any, clock: Any
) -> None:
    fn = Flaky(100, clock=clock)
    policy = policy_for(clock, max_retries=10, initial_delay=1.0, max_elapsed=5.0)
    t0 = clock()
    with pytest.raises(Boom) as caught:
        flavour.retry(policy, fn)
    # waits 1, 2, then the next (4) would start the attempt at 7 > 5: stop
    assert [t - t0 for t in fn.started_at] == [0.0, 1.0, 3.0]
    assert caught.value is fn.errors[-1]


def test_max_elapsed_counts_the_attempts_own_time(flavour: Any, clock: Any) -> None:
    started: list[float] = []
    errors: list[Boom] = []

    def slow_failure() -> None:
        started.append(clock())
        clock.advance(2.0)
        err = Boom(len(started))
        errors.append(err)
        raise err

    policy = policy_for(clock, max_retries=10, initial_delay=1.0, max_elapsed=5.5)
    t0 = clock()
    with pytest.raises(Boom) as caught:
        flavour.retry(policy, slow_failure)
    # attempt [0, 2], wait 1, attempt [3, 5], wait 2 would start at 7 > 5.5: stop
    assert [t - t0 for t in started] == [0.0, 3.0]
    assert caught.value is errors[-1]


def test_max_elapsed_returns_a_success_before_the_deadline(flavour: Any, clock: Any) -> None:
    fn = Flaky(2, clock=clock)
    policy = policy_for(clock, max_retries=10, initial_delay=1.0, max_elapsed=5.0)
    assert flavour.retry(policy, fn) == "ok"
    assert len(fn.calls) == 3


def test_without_max_elapsed_time_does_not_limit_attempts(flavour: Any, clock: Any) -> None:
    fn = Flaky(100, clock=clock)
    policy = policy_for(clock, max_retries=6, initial_delay=1000.0, max_delay=1e6)
    with pytest.raises(Boom):
        flavour.retry(policy, fn)
    assert len(fn.calls) == 7


def test_max_elapsed_holds_when_the_backoff_wait_overruns(flavour: Any, clock: Any) -> None:
    """A wait may last longer than asked (a loaded machine): still no attempt after the deadline.

    The call then ends with the last attempt's own error.
    """
    fn = Flaky(100, clock=clock)

    def slow_sleep(seconds: float) -> None:
        clock.sleep(seconds + 10.0)

    async def slow_async_sleep(seconds: float) -> None:
        await clock.async_sleep(seconds + 10.0)

    policy = RetryPolicy(
        max_retries=10,
        initial_delay=1.0,
        jitter=False,
        max_elapsed=5.0,
        clock=clock,
        sleep=slow_sleep,
        async_sleep=slow_async_sleep,
    )
    t0 = clock()
    with pytest.raises(Exception) as caught:
        flavour.retry(policy, fn)
    assert [t - t0 for t in fn.started_at if t - t0 > 5.0] == [], "attempt started after deadline"
    assert caught.value is fn.errors[-1], f"expected the last attempt's error, got {caught.value!r}"


def test_max_elapsed_bounds_a_hanging_async_attempt(run_async: Any) -> None:
    """Async: the overall deadline also bounds an attempt in progress (TimeoutError if no error)."""
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    timer = ManualTimer()
    policy = RetryPolicy(
        max_retries=5, max_elapsed=3.0, initial_delay=0.0, clock=timer, timer=timer
    )
    with pytest.raises(TimeoutError):
        run_async(driven(timer, policy.execute_async(fn), 3.0))
    assert calls == 1
    assert timer.now == 3.0


def test_max_elapsed_zero_is_rejected() -> None:
    """Issue 15 item 6: it meant one attempt in sync and none (TimeoutError) in async."""
    with pytest.raises(ValueError, match="max_elapsed"):
        RetryPolicy(max_elapsed=0)
    with pytest.raises(ValueError, match="max_elapsed"):
        RetryPolicy(max_elapsed=0.0)


def test_no_attempt_starts_exactly_at_the_max_elapsed_deadline(flavour: Any, clock: Any) -> None:
    """Issue 15 item 27: the boundary itself. A retry due at exactly the deadline is not
    made; one due just before it is."""
    exact = policy_for(
        clock, max_retries=5, initial_delay=1.0, exponential_base=1.0, max_elapsed=2.0
    )
    fn = Flaky(100, clock=clock)
    with pytest.raises(Boom):
        flavour.retry(exact, fn)
    t0 = fn.started_at[0]
    assert [t - t0 for t in fn.started_at] == [0.0, 1.0]  # the third would start at 2.0

    early = policy_for(
        clock,
        max_retries=5,
        initial_delay=1.0,
        exponential_base=1.0,
        max_elapsed=2.0 + 1e-6,
        timer=ManualTimer(),  # async: the last attempt's 1e-6 s are virtual, not real
    )
    fn = Flaky(100, clock=clock)
    with pytest.raises(Boom):
        flavour.retry(early, fn)
    t0 = fn.started_at[0]
    assert [t - t0 for t in fn.started_at] == [0.0, 1.0, 2.0]


# -- retry_on verdicts (issue 15 item 4) ----------------------------------------------------


def test_a_truthy_non_number_verdict_retries(flavour: Any, clock: Any) -> None:
    """A predicate returning a ``re.Match`` crashed with TypeError after one attempt."""
    import re

    policy = policy_for(clock, max_retries=2, retry_on=lambda exc: re.search("transient", str(exc)))
    fn = Raises(Boom("transient glitch"))
    with pytest.raises(Boom) as caught:
        flavour.retry(policy, fn)
    assert caught.value is fn.error  # the caller's own exception, not a TypeError
    assert fn.calls == 3
    assert clock.sleeps == [0.1, 0.2]  # the policy's backoff, not a delay taken from the verdict


def test_falsy_verdicts_stop_and_numbers_are_truthiness_only(flavour: Any, clock: Any) -> None:
    for verdict, calls in [(None, 1), ("", 1), (0, 1), ([], 1), (3, 3), ("yes", 3), (0.5, 3)]:
        clock.sleeps.clear()
        policy = policy_for(clock, max_retries=2, retry_on=lambda exc, v=verdict: v)
        fn = Raises(Boom())
        with pytest.raises(Boom):
            flavour.retry(policy, fn)
        assert fn.calls == calls, verdict
        assert clock.sleeps == ([0.1, 0.2] if calls == 3 else []), verdict


def test_retry_after_is_the_delay_override(flavour: Any, clock: Any) -> None:
    policy = policy_for(clock, max_retries=2, retry_on=lambda exc: RetryAfter(4.0))
    fn = Raises(Boom())
    with pytest.raises(Boom):
        flavour.retry(policy, fn)
    assert clock.sleeps == [4.0, 4.0]


def test_a_verdict_whose_truth_raises_ends_the_call_with_the_callers_error(
    flavour: Any, clock: Any
) -> None:
    class Undecided:
        def __bool__(self) -> bool:
            raise ValueError("no truth value")

    policy = policy_for(clock, max_retries=2, retry_on=lambda exc: Undecided())
    fn = Raises(Boom())
    with pytest.raises(Boom) as caught:
        flavour.retry(policy, fn)
    assert caught.value is fn.error
    assert fn.calls == 1


@pytest.mark.parametrize("seconds", ["1", None, True, float("nan")])
def test_retry_after_validates_its_seconds(seconds: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="seconds"):
        RetryAfter(seconds)


def test_a_subnormal_initial_delay_with_a_huge_power_gives_the_cap() -> None:
    # Found by hypothesis: base ** attempt overflows although initial * base ** attempt
    # would be below the cap's attempt threshold only by rounding.
    policy = RetryPolicy(
        initial_delay=2.225073858507203e-309, max_delay=2.0, exponential_base=90.0, jitter=False
    )
    assert policy.get_delay(158) == 2.0


def test_replace_keeps_every_setting_but_the_changes() -> None:
    from codomyrmex.service_mesh import PercentageRetryBudget

    budget = PercentageRetryBudget()
    base = RetryPolicy(max_retries=2, initial_delay=0.3, jitter="equal", budget=budget, name="x")
    copy = base.replace(max_retries=5)
    assert (copy.max_retries, base.max_retries) == (5, 2)
    assert (copy.initial_delay, copy.jitter_mode, copy.name) == (0.3, "equal", "x")
    assert copy.budget is budget and copy.timer is base.timer and copy.clock is base.clock
    with pytest.raises(ValueError, match="max_retries"):
        base.replace(max_retries=-1)
    with pytest.raises(TypeError, match="unknown"):
        base.replace(retries=1)
