"""Overload protection: limit algorithms, the concurrency limiter, GCRA, the proxy stages."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from codomyrmex.service_mesh import (
    AIMDLimit,
    Bulkhead,
    CallRejected,
    ConcurrencyLimiter,
    Event,
    Gradient2Limit,
    LimitChanged,
    LimitExceededError,
    LoadBalancer,
    Mesh,
    RateLimiter,
    RetryPolicy,
    ServiceInstance,
    ServiceMeshError,
    ServiceProxy,
    VegasLimit,
)
from codomyrmex.service_mesh.limits import FixedLimit, WindowedLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- algorithms -------------------------------------------------------------------


def test_aimd_grows_by_one_only_when_half_the_limit_is_used() -> None:
    limit = AIMDLimit(initial_limit=10, min_limit=1, max_limit=12)
    limit.on_sample(0.0, 0.01, 4, False)  # 4 * 2 < 10: application-limited
    assert limit.limit == 10
    limit.on_sample(0.0, 0.01, 5, False)
    assert limit.limit == 11
    for _ in range(5):
        limit.on_sample(0.0, 0.01, 11, False)
    assert limit.limit == 12  # max_limit


def test_aimd_backs_off_on_a_drop_or_a_slow_sample() -> None:
    limit = AIMDLimit(initial_limit=20, min_limit=5, backoff_ratio=0.5, timeout=0.1)
    limit.on_sample(0.0, 0.01, 1, True)
    assert limit.limit == 10
    limit.on_sample(0.0, 0.2, 1, False)  # slower than timeout: a drop
    assert limit.limit == 5
    limit.on_sample(0.0, 0.2, 1, False)
    assert limit.limit == 5  # min_limit


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backoff_ratio": 1.0}, "backoff_ratio"),
        ({"backoff_ratio": 0.4}, "backoff_ratio"),
        ({"initial_limit": 5}, "initial_limit"),  # below the default min_limit 20
        ({"timeout": 0}, "timeout"),
        ({"min_limit": 0}, "min_limit"),
    ],
)
def test_aimd_validates(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AIMDLimit(**kwargs)  # type: ignore[arg-type]


def test_vegas_keeps_the_estimated_queue_between_alpha_and_beta() -> None:
    limit = VegasLimit(initial_limit=10, probe_multiplier=1000, rng=random.Random(1))
    limit.on_sample(0.0, 0.010, 10, False)  # first sample: rtt_noload
    assert limit.rtt_noload == 0.010 and limit.limit == 10
    limit.on_sample(0.0, 0.010, 10, False)  # no queue (<= threshold): + beta (6)
    assert limit.limit == 16
    # queue = ceil(16 * (1 - 10/12)) = 3: not below alpha (3), not above beta (6): hold
    limit.on_sample(0.0, 0.012, 16, False)
    assert limit.limit == 16
    # queue = ceil(16 * (1 - 10/40)) = 12 > beta: decrease by log10 (1)
    limit.on_sample(0.0, 0.040, 16, False)
    assert limit.limit == 15
    limit.on_sample(0.0, 0.010, 15, True)  # a drop: decrease
    assert limit.limit == 14
    limit.on_sample(0.0, 0.010, 3, False)  # less than half in flight: nothing learnt
    assert limit.limit == 14


def test_vegas_reprobes_rtt_noload() -> None:
    limit = VegasLimit(initial_limit=2, probe_multiplier=1, rng=random.Random(3))
    limit.on_sample(0.0, 0.010, 2, False)
    samples = 0
    while limit.rtt_noload == 0.010:
        limit.on_sample(0.0, 0.050, 2, False)
        samples += 1
        assert samples < 10  # jitter in [0.5, 1) times 1 * limit
    assert limit.rtt_noload == 0.050


def test_gradient2_shrinks_when_latency_rises_and_grows_while_it_is_steady() -> None:
    limit = Gradient2Limit(initial_limit=20, min_limit=2, max_concurrency=100, queue_size=4)
    for _ in range(20):
        limit.on_sample(0.0, 0.010, 20, False)
    grown = limit.limit
    assert grown > 20  # gradient 1.0: + queue_size * smoothing per sample
    for _ in range(10):
        limit.on_sample(0.0, 0.050, 100, False)  # 5x the long RTT: gradient 0.5
    assert limit.limit < grown / 2
    low = limit.limit
    limit.on_sample(0.0, 0.010, 0, False)  # application-limited: no change
    assert limit.limit == low


def test_gradient2_validates() -> None:
    with pytest.raises(ValueError, match="smoothing"):
        Gradient2Limit(smoothing=0.0)
    with pytest.raises(ValueError, match="rtt_tolerance"):
        Gradient2Limit(rtt_tolerance=0.9)
    with pytest.raises(TypeError, match="queue_size"):
        Gradient2Limit(queue_size=1.5)  # type: ignore[arg-type]


# -- the concurrency limiter --------------------------------------------------------


def test_limiter_refuses_beyond_the_limit_and_frees_places() -> None:
    limiter = ConcurrencyLimiter(FixedLimit(2), name="db")
    first, second = limiter.acquire(), limiter.acquire()
    with pytest.raises(LimitExceededError) as caught:
        limiter.acquire()
    assert caught.value.kind == "concurrency_limit" and caught.value.limit == 2
    assert "db" in str(caught.value) and not LimitExceededError.retryable
    assert limiter.try_acquire() is None and limiter.rejected == 2
    first.success()
    first.success()  # reporting twice frees one place only
    assert limiter.in_flight == 1
    with limiter.acquire():
        assert limiter.in_flight == 2
    second.ignore()
    assert limiter.in_flight == 0


def test_limiter_classifies_outcomes_and_publishes_limit_changes() -> None:
    clock = Clock()
    limiter = ConcurrencyLimiter(
        AIMDLimit(initial_limit=4, min_limit=1, backoff_ratio=0.5), name="x", clock=clock
    )
    events: list[Event] = []
    limiter.subscribe(events.append)
    with limiter.acquire(), limiter.acquire():  # the second ran with 2 * 2 >= 4: + 1
        clock.now += 0.01
    assert limiter.limit == 5  # the first ran with 1 * 2 < 4: no change
    with pytest.raises(ServiceMeshError), limiter.acquire():
        raise ServiceMeshError  # the mesh's own refusal: ignored
    assert limiter.limit == 5
    with pytest.raises(ValueError), limiter.acquire():
        raise ValueError  # the backend answered: a success sample, but 1 * 2 < 5
    assert limiter.limit == 5
    with pytest.raises(TimeoutError), limiter.acquire():
        raise TimeoutError  # a drop
    assert limiter.limit == 2
    assert [(e.old, e.new) for e in events if isinstance(e, LimitChanged)] == [(4, 5), (5, 2)]
    assert limiter.in_flight == 0


def test_limiter_holds_its_limit_across_threads() -> None:
    limiter = ConcurrencyLimiter(FixedLimit(3))
    inside = threading.Semaphore(0)
    release = threading.Event()
    outcomes: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        permit = limiter.try_acquire()
        with lock:
            outcomes.append(permit is not None)
        inside.release()
        if permit is not None:
            release.wait()
            permit.success()

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for thread in threads:
        thread.start()
    for _ in threads:
        inside.acquire()  # every worker has tried while the admitted ones still hold
    assert sum(outcomes) == 3 and limiter.in_flight == 3
    release.set()
    for thread in threads:
        thread.join()
    assert limiter.in_flight == 0


def test_limiter_validates() -> None:
    with pytest.raises(TypeError, match="limit"):
        ConcurrencyLimiter(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dropped_on"):
        ConcurrencyLimiter(FixedLimit(1), dropped_on=(ValueError, 3))  # type: ignore[arg-type]


# -- the rate limiter ---------------------------------------------------------------


def test_gcra_admits_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, burst=3, name="api", clock=clock)
    assert [limiter.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire() == pytest.approx(0.1)  # refused: nothing taken
    assert limiter.try_acquire() == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() > 0.0
    clock.now += 10.0  # idle time refills to the burst, no further
    assert limiter.available == pytest.approx(3.0)
    assert [limiter.try_acquire() == 0.0 for _ in range(4)] == [True, True, True, False]
    with pytest.raises(LimitExceededError) as caught:
        limiter.acquire()
    assert caught.value.kind == "rate_limit" and caught.value.retry_after == pytest.approx(0.1)


def test_gcra_reserves_within_max_wait_and_sleeps_for_it() -> None:
    clock = Clock()
    slept: list[float] = []
    limiter = RateLimiter(4.0, clock=clock, sleep=slept.append)
    limiter.acquire()
    limiter.acquire(max_wait=0.5)
    limiter.acquire(max_wait=0.5)
    assert slept == pytest.approx([0.25, 0.5])
    with pytest.raises(LimitExceededError):
        limiter.acquire(max_wait=0.5)  # would need 0.75 s
    with pytest.raises(ValueError, match="cost"):
        limiter.acquire(2.0)  # more than the burst could ever admit


def test_gcra_is_exact_across_threads_and_tasks() -> None:
    clock = Clock()  # frozen: exactly the burst may pass, however they interleave
    limiter = RateLimiter(1.0, burst=50, clock=clock)
    admitted: list[bool] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        got = [limiter.try_acquire() == 0.0 for _ in range(25)]
        admitted.extend(got)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 50 and len(admitted) == 200

    async_limiter = RateLimiter(1.0, burst=7, clock=clock)

    async def main() -> list[float]:
        return await asyncio.gather(*(async_limiter.try_acquire_async() for _ in range(30)))

    waits = asyncio.run(main())
    assert sum(w == 0.0 for w in waits) == 7


def test_gcra_validates() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1.0, burst=0.5)


# -- in a proxy ---------------------------------------------------------------------


def _balancer() -> LoadBalancer:
    balancer = LoadBalancer()
    balancer.register(ServiceInstance("a", "127.0.0.1", 1))
    return balancer


def test_proxy_stage_order_is_documented() -> None:
    proxy = ServiceProxy(
        "orders",
        fallback=lambda exc: None,
        bulkhead=Bulkhead(4),
        rate_limit=RateLimiter(100.0),
        concurrency_limit=ConcurrencyLimiter(VegasLimit()),
    )
    assert [stage.split("(")[0] for stage in proxy.describe().split(" -> ")] == [
        "fallback",
        "rate limit",
        "concurrency limit",
        "bulkhead",
        "circuit breaker",
        "retry",
        "pick instance",
        "handler",
    ]
    with pytest.raises(TypeError, match="concurrency_limit"):
        ServiceProxy("x", concurrency_limit=VegasLimit())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rate_limit"):
        ServiceProxy("x", rate_limit=5.0)  # type: ignore[arg-type]


def test_proxy_rate_limit_rejections_are_not_retried_and_reach_the_fallback() -> None:
    clock = Clock()
    calls: list[str] = []
    events: list[Event] = []
    proxy = ServiceProxy(
        "orders",
        _balancer(),
        retry_policy=RetryPolicy(max_retries=3, initial_delay=0.0),
        rate_limit=RateLimiter(1.0, burst=2, clock=clock, name="orders"),
    )
    proxy.subscribe(events.append)
    assert [proxy.call(lambda instance: calls.append(instance.id)) for _ in range(2)] == [
        None,
        None,
    ]
    with pytest.raises(LimitExceededError):
        proxy.call(lambda instance: calls.append(instance.id))
    assert calls == ["a", "a"]
    assert [e.reason for e in events if isinstance(e, CallRejected)] == ["rate_limit"]
    proxy.fallback = lambda exc: type(exc).__name__
    assert proxy.call(lambda instance: "ran") == "LimitExceededError"
    clock.now += 1.0
    assert proxy.call(lambda instance: "ran") == "ran"


def test_proxy_concurrency_limit_is_the_same_sync_and_async() -> None:
    limiter = ConcurrencyLimiter(FixedLimit(1), name="one")
    proxy = ServiceProxy("orders", _balancer(), concurrency_limit=limiter)
    attempts = []

    def nested(instance: ServiceInstance) -> str:
        attempts.append(1)
        try:
            proxy.call(lambda inner: "inner")  # a second call while the first holds the place
        except LimitExceededError as error:
            return error.kind
        return "admitted"

    assert proxy.call(nested) == "concurrency_limit"

    async def main() -> str:
        release = asyncio.Event()

        async def hold(instance: ServiceInstance) -> str:
            await release.wait()
            return "held"

        first = asyncio.ensure_future(proxy.call_async(hold))
        await asyncio.sleep(0)
        try:
            await proxy.call_async(hold)
        except LimitExceededError as error:
            outcome = error.kind
        release.set()
        assert await first == "held"
        return outcome

    assert asyncio.run(main()) == "concurrency_limit"
    assert limiter.in_flight == 0 and limiter.rejected == 2 and len(attempts) == 1


def test_default_retry_policy_does_not_retry_a_limit_rejection() -> None:
    attempts = []

    def refused() -> None:
        attempts.append(1)
        raise LimitExceededError("downstream", "rate_limit", 5.0, 0.2)

    with pytest.raises(LimitExceededError):
        RetryPolicy(max_retries=3, initial_delay=0.0).execute(refused)
    assert attempts == [1]


def test_windowed_limit_feeds_one_aggregated_sample_per_window() -> None:
    inner = AIMDLimit(initial_limit=10, min_limit=1, timeout=0.05)
    limit = WindowedLimit(inner, min_window_time=0.1, max_window_time=0.1, window_size=3)
    # The first sample opens the first window (its deadline was unset): too few samples.
    assert limit.on_sample(0.0, 0.01, 10, False) == 10
    for k in range(5):  # within the window: pooled, the inner limit does not move
        assert limit.on_sample(0.01 + k * 0.01, 0.01, 10, False) == 10
    # The first sample ending after the deadline closes the window: one +1 for six samples.
    assert limit.on_sample(0.2, 0.01, 10, False) == 11
    for k in range(3):
        limit.on_sample(0.22 + k * 0.01, 0.02, 4, k == 1)  # one drop in the window
    assert limit.on_sample(0.5, 0.01, 4, False) == 9  # int(11 * 0.9): any drop counts
    assert limit.limit == inner.limit == 9
    assert limit.on_sample(0.6, 0.00001, 4, True) == 9  # below min_rtt_threshold: dropped
    with pytest.raises(ValueError, match="max_window_time"):
        WindowedLimit(inner, min_window_time=1.0, max_window_time=0.5)


def test_a_mesh_can_watch_a_limiter() -> None:
    mesh = Mesh()
    limiter = ConcurrencyLimiter(AIMDLimit(initial_limit=2, min_limit=1, backoff_ratio=0.5))
    seen: list[Event] = []
    mesh.subscribe(seen.append)
    mesh.watch(limiter)
    with pytest.raises(TimeoutError), limiter.acquire():
        raise TimeoutError
    assert [e for e in seen if isinstance(e, LimitChanged)] == [LimitChanged("", 2, 1, 0)]
