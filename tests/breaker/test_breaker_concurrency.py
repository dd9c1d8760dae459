"""The breaker under real concurrency: thread storms, task storms, cancellation storms.

Every loop is bounded; nothing sleeps to move time (a FakeClock does). Tiny real
sleeps inside the protected function only widen race windows.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
THREADS = 16
NEVER_CLOSES = 10**9


class Boom(Exception):
    pass


def run(loop_factory: Any, coro: Any) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads far more often, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class Gauge:
    """A lock-protected count of calls inside the protected function, and its peak."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.total = 0

    def enter(self) -> None:
        with self._lock:
            self.current += 1
            self.total += 1
            self.peak = max(self.peak, self.current)

    def leave(self) -> None:
        with self._lock:
            self.current -= 1


def half_open_breaker(clock: Any, **config: Any) -> CircuitBreaker:
    cfg = {"failure_threshold": 1, "timeout_seconds": 10.0, **config}
    cb = CircuitBreaker("storm", CircuitBreakerConfig(**cfg), clock=clock)
    cb.record_failure()
    clock.advance(10.0)
    assert cb.state is HALF_OPEN
    return cb


def run_threads(target: Callable[[int], None], count: int = THREADS) -> None:
    """Start ``count`` threads on ``target(i)``, all released together; re-raise any error."""
    start = threading.Barrier(count, timeout=10.0)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30.0)
    assert not any(t.is_alive() for t in threads), "a storm thread hung"
    if errors:
        raise errors[0]


# -- thread storms -------------------------------------------------------------------


@pytest.mark.parametrize("max_calls", [1, 3])
def test_thread_storm_never_exceeds_half_open_limit(
    clock: Any, fast_switching: None, max_calls: int
) -> None:
    for _ in range(25):
        cb = half_open_breaker(clock, half_open_max_calls=max_calls, success_threshold=NEVER_CLOSES)
        gauge = Gauge()
        rejected = [0] * THREADS

        def probe() -> None:
            gauge.enter()
            try:
                time.sleep(0)
            finally:
                gauge.leave()

        def worker(i: int) -> None:
            for _ in range(15):
                try:
                    cb.execute(probe)
                except CircuitOpenError as error:
                    assert error.state is HALF_OPEN
                    assert error.retry_after == 0.0
                    rejected[i] += 1

        run_threads(worker)
        assert gauge.peak <= max_calls
        assert gauge.total >= 1
        assert gauge.total + sum(rejected) == THREADS * 15
        assert cb.half_open_in_flight == 0
        assert cb.state is HALF_OPEN


def test_thread_storm_reaches_the_limit_when_probes_overlap(clock: Any) -> None:
    """Probes held open until every thread has tried: exactly the limit gets in."""
    cb = half_open_breaker(clock, half_open_max_calls=4, success_threshold=NEVER_CLOSES)
    gauge = Gauge()
    outcomes: list[str] = []
    lock = threading.Lock()
    all_tried = threading.Event()

    def tried(result: str) -> None:
        with lock:
            outcomes.append(result)
            if len(outcomes) == THREADS:
                all_tried.set()

    def probe() -> None:
        gauge.enter()
        try:
            tried("ran")
            assert all_tried.wait(timeout=10.0)
        finally:
            gauge.leave()

    def worker(i: int) -> None:
        try:
            cb.execute(probe)
        except CircuitOpenError:
            tried("rejected")

    run_threads(worker)
    assert outcomes.count("ran") == 4
    assert outcomes.count("rejected") == THREADS - 4
    assert gauge.peak == 4
    assert cb.half_open_in_flight == 0


def test_thread_storm_mixed_outcomes_keeps_breaker_consistent(
    clock: Any, fast_switching: None
) -> None:
    """Probes succeed, fail and get interrupted while the breaker cycles through its states."""
    rng = random.Random(1234)
    cb = half_open_breaker(clock, half_open_max_calls=2, success_threshold=3)
    plan = [[rng.choice("ssssfi") for _ in range(40)] for _ in range(THREADS)]
    over_limit: list[int] = []

    def worker(i: int) -> None:
        for outcome in plan[i]:

            def probe() -> None:
                in_flight = cb.half_open_in_flight
                if in_flight > 2:
                    over_limit.append(in_flight)
                time.sleep(0)
                if outcome == "f":
                    raise Boom
                if outcome == "i":
                    raise KeyboardInterrupt

            try:
                cb.execute(probe)
            except (Boom, CircuitOpenError, KeyboardInterrupt):
                pass
            if cb.state is OPEN:
                clock.advance(10.0)  # the shared fake clock only ever moves forward

    run_threads(worker)
    assert over_limit == []
    assert cb.half_open_in_flight == 0
    if cb.state is OPEN:
        clock.advance(10.0)
    # Whatever state the storm left, three successes bring it back to CLOSED.
    for _ in range(3):
        cb.execute(lambda: None)
    assert cb.state is CLOSED


def test_closed_storm_counts_every_failure(clock: Any, fast_switching: None) -> None:
    cb = CircuitBreaker("count", CircuitBreakerConfig(failure_threshold=NEVER_CLOSES), clock=clock)
    per_thread = 300

    def worker(i: int) -> None:
        for _ in range(per_thread):
            with pytest.raises(Boom):
                cb.execute(_raise_boom)

    run_threads(worker)
    assert cb.failure_count == THREADS * per_thread
    assert cb.state is CLOSED


def test_concurrent_failures_open_exactly_once_at_threshold(clock: Any) -> None:
    """All threads fail together (inside fn at once); the count is exact, one transition."""
    for threshold in (THREADS - 1, THREADS, THREADS + 1):
        events: list[Any] = []
        cb = CircuitBreaker(
            "together",
            CircuitBreakerConfig(failure_threshold=threshold, timeout_seconds=10.0),
            clock=clock,
            on_state_change=lambda b, old, new: events.append((old, new)),
        )
        together = threading.Barrier(THREADS, timeout=10.0)

        def fail_together() -> None:
            together.wait()
            raise Boom

        def worker(i: int) -> None:
            with pytest.raises(Boom):
                cb.execute(fail_together)

        run_threads(worker)
        if threshold <= THREADS:
            assert cb.state is OPEN
            assert events == [(CLOSED, OPEN)]
            assert cb.failure_count == threshold, "failures after opening are stale"
            assert cb.retry_after() == pytest.approx(10.0)
        else:
            assert cb.state is CLOSED
            assert events == []
            assert cb.failure_count == THREADS


def _raise_boom() -> None:
    raise Boom


# -- task storms -------------------------------------------------------------------


def test_thousand_tasks_never_exceed_half_open_limit(loop_factory: Any, clock: Any) -> None:
    cb = half_open_breaker(clock, half_open_max_calls=5, success_threshold=NEVER_CLOSES)
    gauge = Gauge()

    async def probe(hops: int) -> None:
        gauge.enter()
        try:
            for _ in range(hops):
                await asyncio.sleep(0)
        finally:
            gauge.leave()

    async def task(i: int) -> int:
        rejected = 0
        for attempt in range(20):
            try:
                await cb.execute_async(probe, (i + attempt) % 4)
            except CircuitOpenError:
                rejected += 1
            await asyncio.sleep(0)
        return rejected

    async def storm() -> list[int]:
        return list(await asyncio.gather(*(task(i) for i in range(1000))))

    rejected = run(loop_factory, storm())
    assert gauge.peak == 5
    assert gauge.total + sum(rejected) == 1000 * 20
    assert gauge.total > 5
    assert cb.half_open_in_flight == 0
    assert cb.state is HALF_OPEN


def test_thousand_permit_tasks_never_exceed_half_open_limit(loop_factory: Any, clock: Any) -> None:
    cb = half_open_breaker(clock, half_open_max_calls=3, success_threshold=NEVER_CLOSES)
    gauge = Gauge()

    async def task(i: int) -> None:
        for _ in range(5):
            try:
                async with cb.permit():
                    gauge.enter()
                    try:
                        await asyncio.sleep(0)
                        if i % 7 == 0:
                            raise asyncio.CancelledError  # neither success nor failure
                    finally:
                        gauge.leave()
            except (CircuitOpenError, asyncio.CancelledError):
                pass
            await asyncio.sleep(0)

    async def storm() -> None:
        await asyncio.gather(*(task(i) for i in range(1000)))

    run(loop_factory, storm())
    assert gauge.peak == 3
    assert cb.half_open_in_flight == 0
    assert cb.state is HALF_OPEN


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cancellation_storm_leaves_slots_at_rest(loop_factory: Any, clock: Any, seed: int) -> None:
    rng = random.Random(seed)
    cb = half_open_breaker(clock, half_open_max_calls=4, success_threshold=3)
    failures_before = cb.failure_count
    gauge = Gauge()

    async def probe(release: asyncio.Event) -> None:
        gauge.enter()
        try:
            await release.wait()  # only ever ends by cancellation during the storm
        finally:
            gauge.leave()

    async def task(release: asyncio.Event) -> None:
        for _ in range(50):
            try:
                await cb.execute_async(probe, release)
            except CircuitOpenError:
                await asyncio.sleep(0)

    async def storm() -> int:
        release = asyncio.Event()
        tasks = [asyncio.create_task(task(release)) for _ in range(200)]
        cancelled = 0
        while any(not t.done() for t in tasks):
            for _ in range(rng.randrange(1, 4)):
                await asyncio.sleep(0)
            alive = [t for t in tasks if not t.done()]
            for t in rng.sample(alive, k=min(len(alive), rng.randrange(1, 15))):
                t.cancel()
                cancelled += 1
            assert cb.half_open_in_flight <= 4
        await asyncio.gather(*tasks, return_exceptions=True)
        return cancelled

    cancelled = run(loop_factory, storm())
    assert cancelled > 0
    assert gauge.peak == 4
    assert gauge.current == 0
    assert cb.half_open_in_flight == 0
    assert cb.state is HALF_OPEN
    assert cb.failure_count == failures_before, "cancellation is not a failure"
    assert cb.can_execute()

    async def recover() -> None:
        for _ in range(3):
            await cb.execute_async(asyncio.sleep, 0)

    run(loop_factory, recover())
    assert cb.state is CLOSED


def test_cancellation_storm_while_closed_counts_nothing(loop_factory: Any, clock: Any) -> None:
    cb = CircuitBreaker("cancel", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    rng = random.Random(99)

    async def storm() -> None:
        never = asyncio.Event()
        tasks = [asyncio.create_task(cb.execute_async(never.wait)) for _ in range(300)]
        while any(not t.done() for t in tasks):
            await asyncio.sleep(0)
            for t in rng.sample(tasks, k=25):
                t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)

    run(loop_factory, storm())
    assert cb.state is CLOSED
    assert cb.failure_count == 0


# -- threads and an event loop sharing one breaker -------------------------------------


def test_breaker_shared_by_threads_and_event_loop(loop_factory: Any, clock: Any) -> None:
    """Threads and tasks probe one HALF_OPEN breaker at the same time; the limit holds."""
    cb = half_open_breaker(clock, half_open_max_calls=3, success_threshold=NEVER_CLOSES)
    gauge = Gauge()
    start = threading.Barrier(THREADS // 2 + 1, timeout=10.0)
    admitted = {"thread": 0, "task": 0}
    target = 50  # admissions each side needs; both sides run until both have them
    count_lock = threading.Lock()
    errors: list[BaseException] = []

    def enough() -> bool:
        return admitted["thread"] >= target and admitted["task"] >= target

    def sync_probe() -> None:
        gauge.enter()
        try:
            time.sleep(0.0002)
        finally:
            gauge.leave()
        with count_lock:
            admitted["thread"] += 1

    async def async_probe() -> None:
        gauge.enter()
        try:
            await asyncio.sleep(0.0002)
        finally:
            gauge.leave()
        with count_lock:
            admitted["task"] += 1

    def thread_worker() -> None:
        try:
            start.wait()
            for _ in range(3000):
                if enough():
                    break
                try:
                    cb.execute(sync_probe)
                except CircuitOpenError:
                    pass
                time.sleep(0.0005)
        except BaseException as exc:
            errors.append(exc)

    async def loop_side() -> None:
        async def task(i: int) -> None:
            await asyncio.sleep(0.0001 * (i % 7))  # stagger the tasks
            for _ in range(3000):
                if enough():
                    break
                try:
                    await cb.execute_async(async_probe)
                except CircuitOpenError:
                    pass
                await asyncio.sleep(0.0003)

        start.wait()
        await asyncio.gather(*(task(i) for i in range(50)))

    def loop_worker() -> None:
        try:
            run(loop_factory, loop_side())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_worker) for _ in range(THREADS // 2)]
    threads.append(threading.Thread(target=loop_worker))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30.0)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert gauge.peak <= 3
    assert admitted["thread"] >= target
    assert admitted["task"] >= target
    assert cb.half_open_in_flight == 0
    assert cb.state is HALF_OPEN


def test_closed_failures_from_threads_and_loop_all_count(loop_factory: Any, clock: Any) -> None:
    cb = CircuitBreaker("mixed", CircuitBreakerConfig(failure_threshold=NEVER_CLOSES), clock=clock)
    errors: list[BaseException] = []

    async def afail() -> None:
        await asyncio.sleep(0)
        raise Boom

    async def loop_side() -> None:
        async def task() -> None:
            for _ in range(20):
                with pytest.raises(Boom):
                    await cb.execute_async(afail)

        await asyncio.gather(*(task() for _ in range(50)))

    def thread_worker() -> None:
        try:
            for _ in range(200):
                with pytest.raises(Boom):
                    cb.execute(_raise_boom)
        except BaseException as exc:
            errors.append(exc)

    def loop_worker() -> None:
        try:
            run(loop_factory, loop_side())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_worker) for _ in range(8)]
    threads.append(threading.Thread(target=loop_worker))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30.0)
    assert errors == []
    assert cb.failure_count == 8 * 200 + 50 * 20
