"""Scenario "overload": adaptive concurrency limits against a backend whose capacity halves.

A backend serves ``servers`` requests at once (FIFO queue in front), each taking
about ``service_time``; Poisson arrivals come at ``load`` times its capacity, and
at ``drop_at`` half of its servers go away. A client gives up after ``timeout``
but, as in most servers, the work it queued is still done: without a limit the
queue grows until every request times out and the backend works only for callers
that have left (goodput collapse). A real :class:`ServiceProxy` (breaker disabled,
no retries) runs on the virtual clock with one of the set-ups of :func:`setups`.

Reported per set-up: goodput (answers within the timeout, as a share of the
backend's capacity over the run), p50 and p99 of the answered calls, rejections,
and how long after the drop the latency and goodput were back on target.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._validate import check_instance, check_int, check_number
from ..bulkhead import Bulkhead
from ..circuit_breaker import CircuitBreaker
from ..limits import (
    AIMDLimit,
    ConcurrencyLimiter,
    Gradient2Limit,
    Limit,
    VegasLimit,
    WindowedLimit,
)
from ..load_balancer import LoadBalancer, ServiceInstance
from ..proxy import ServiceProxy
from ..retry import RetryPolicy
from .clock import VirtualTimeLoop
from .engine import percentile

__all__ = [
    "OverloadResult",
    "OverloadScenario",
    "Setup",
    "format_overload_table",
    "main",
    "meets_target",
    "plot_overload",
    "run_overload",
    "setups",
    "simulate_overload",
]


@dataclass(frozen=True, slots=True)
class OverloadScenario:
    """The backend, the load and the capacity drop (times in seconds of virtual time).

    - ``servers`` servers, each taking ``service_time`` per request, uniform within
      ``service_time * (1 +/- jitter)``;
    - ``load``: the offered rate as a multiple of the initial capacity
      (``servers / service_time``), for ``duration``;
    - ``drop_at``: when half of the servers go away;
    - ``timeout``: the client gives up after this long (its queued work is still done);
    - ``warmup``, then ``window``: the width of the time series' windows and of the
      recovery check.
    """

    servers: int = 8
    service_time: float = 0.010
    jitter: float = 0.2
    load: float = 2.0
    duration: float = 20.0
    drop_at: float = 10.0
    timeout: float = 1.0
    warmup: float = 1.0
    window: float = 0.25

    def __post_init__(self) -> None:
        if check_int("servers", self.servers, 2) % 2:
            raise ValueError(f"servers must be even (it halves), got {self.servers!r}")
        for name in ("service_time", "load", "timeout", "window"):  # each must be > 0
            if check_number(name, getattr(self, name), 0.0) <= 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= check_number("jitter", self.jitter, 0.0) < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        check_number("duration", self.duration, 0.0)
        check_number("warmup", self.warmup, 0.0)
        if not self.warmup < check_number("drop_at", self.drop_at, 0.0) < self.duration:
            raise ValueError(
                f"drop_at must be between warmup and duration, got {self.drop_at!r} "
                f"(warmup={self.warmup!r}, duration={self.duration!r})"
            )

    @property
    def capacity(self) -> float:
        """Requests per second the backend can answer before the drop."""
        return self.servers / self.service_time

    @property
    def target_latency(self) -> float:
        """The p99 target: twice the unloaded latency (the mean service time)."""
        return 2.0 * self.service_time


@dataclass(frozen=True, slots=True)
class Setup:
    """A set-up under test: a name and what goes into the proxy."""

    name: str
    limit: Callable[[OverloadScenario], Limit] | None = None
    """Builds the adaptive algorithm (None: no concurrency limiter)."""
    bulkhead: int | None = None
    """A static bulkhead of this many places (no queue)."""


def _windowed(limit: Limit, seconds: float) -> Limit:
    return WindowedLimit(limit, min_window_time=seconds, max_window_time=seconds, window_size=5)


def setups() -> tuple[Setup, ...]:
    """The five set-ups of the report: no limit, a static bulkhead, AIMD, Vegas, Gradient2.

    The bulkhead is sized to the initial capacity, the best a static limit can be.
    The algorithms start at that number, learn in windows of a few round trips
    (:class:`WindowedLimit`), and are tuned for a small backend: AIMD's ``timeout``
    (its latency objective) is 1.2 x the unloaded latency, Vegas keeps 1 to 2 calls
    queued (``alpha``, ``beta``), Gradient2 allows a queue of 1 and an RTT 1.2 x the
    long-term average.
    """
    return (
        Setup("no limit"),
        Setup("static bulkhead", bulkhead=OverloadScenario().servers),
        Setup(
            "AIMD",
            lambda s: _windowed(
                AIMDLimit(
                    initial_limit=s.servers,
                    min_limit=1,
                    max_limit=1000,
                    timeout=1.2 * s.service_time,
                ),
                2 * s.service_time,
            ),
        ),
        Setup(
            "Vegas",
            lambda s: _windowed(
                VegasLimit(
                    initial_limit=s.servers,
                    max_concurrency=1000,
                    alpha=lambda limit: 1,
                    beta=lambda limit: 2,
                    rng=random.Random(7),
                ),
                5 * s.service_time,
            ),
        ),
        Setup(
            "Gradient2",
            lambda s: _windowed(
                Gradient2Limit(
                    initial_limit=s.servers,
                    min_limit=1,
                    max_concurrency=1000,
                    queue_size=1,
                    rtt_tolerance=1.2,
                ),
                5 * s.service_time,
            ),
        ),
    )


@dataclass(frozen=True, slots=True)
class OverloadResult:
    """What one set-up achieved (latencies of the calls answered within the timeout)."""

    setup: str
    offered: int
    succeeded: int
    rejected: int
    timed_out: int
    goodput: float
    """Answers within the timeout per second, as a share of the backend's capacity."""
    p50: float
    p99: float
    recovery: float
    """Seconds from the drop until the first second (sliding by a window) whose answers
    met the p99 target with at least 90% goodput (inf: never)."""
    series: tuple[tuple[float, float, float, float], ...] = field(repr=False)
    """Per window: (end time, limit or nan, goodput per second, p99 or nan)."""


class _Backend:
    """``servers`` FIFO servers; abandoned requests are still served (their time wasted)."""

    __slots__ = ("busy", "loop", "queue", "servers")

    def __init__(self, servers: int, loop: asyncio.AbstractEventLoop) -> None:
        self.servers = servers
        self.loop = loop
        self.busy = 0
        self.queue: deque[tuple[asyncio.Future[None], float]] = deque()

    def submit(self, duration: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()
        if self.busy < self.servers:
            self._start(future, duration)
        else:
            self.queue.append((future, duration))
        return future

    def _start(self, future: asyncio.Future[None], duration: float) -> None:
        self.busy += 1
        self.loop.call_later(duration, self._done, future)

    def _done(self, future: asyncio.Future[None]) -> None:
        self.busy -= 1
        if not future.done():
            future.set_result(None)
        while self.busy < self.servers and self.queue:
            self._start(*self.queue.popleft())


def simulate_overload(scenario: OverloadScenario, setup: Setup, seed: int = 1) -> OverloadResult:
    """Run ``setup`` through ``scenario`` once; deterministic for a given seed."""
    check_instance("scenario", scenario, OverloadScenario)
    check_instance("setup", setup, Setup)
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(_run(scenario, setup, seed, loop))
    finally:
        loop.close()


async def _run(
    scenario: OverloadScenario, setup: Setup, seed: int, loop: VirtualTimeLoop
) -> OverloadResult:
    clock = loop.time
    balancer = LoadBalancer(name="overload", clock=clock)
    balancer.register(ServiceInstance("backend", "simulated", 1))
    breaker = CircuitBreaker("overload", clock=clock)
    breaker.disable()  # measure the limits alone
    retry = RetryPolicy(max_retries=0, attempt_timeout=scenario.timeout, clock=clock)
    limiter = None
    if setup.limit is not None:
        limiter = ConcurrencyLimiter(setup.limit(scenario), name=setup.name, clock=clock)
    bulkhead = Bulkhead(setup.bulkhead) if setup.bulkhead is not None else None
    proxy = ServiceProxy(
        "overload", balancer, breaker, retry, bulkhead=bulkhead, concurrency_limit=limiter
    )
    backend = _Backend(scenario.servers, loop)
    service = random.Random(f"{seed}:service")
    low = scenario.service_time * (1.0 - scenario.jitter)
    high = scenario.service_time * (1.0 + scenario.jitter)

    async def handler(instance: ServiceInstance) -> None:
        await backend.submit(service.uniform(low, high))

    answered: list[tuple[float, float]] = []  # (finished, latency) of answers
    counts = {"offered": 0, "rejected": 0, "timed_out": 0}
    limits: list[tuple[float, int]] = []

    async def request() -> None:
        arrived = clock()
        measured = arrived >= scenario.warmup
        counts["offered"] += measured
        try:
            await proxy.call_async(handler)
        except TimeoutError:
            counts["timed_out"] += measured
        except Exception:
            counts["rejected"] += measured
        else:
            if measured:
                answered.append((clock(), clock() - arrived))

    def drop() -> None:
        backend.servers = scenario.servers // 2

    def sample_limit() -> None:
        if limiter is not None:
            limits.append((clock(), limiter.limit))
        if clock() + scenario.window <= scenario.duration + 1e-9:
            loop.call_later(scenario.window, sample_limit)

    loop.call_later(scenario.drop_at, drop)
    loop.call_later(scenario.window, sample_limit)
    arrivals = random.Random(f"{seed}:arrivals")
    rate = scenario.load * scenario.capacity
    tasks: list[asyncio.Task[None]] = []
    while True:
        gap = arrivals.expovariate(rate)
        if clock() + gap >= scenario.duration:
            break
        await asyncio.sleep(gap)
        tasks.append(loop.create_task(request()))
    await asyncio.gather(*tasks)
    return _summarise(scenario, setup, counts, answered, limits)


def _summarise(
    scenario: OverloadScenario,
    setup: Setup,
    counts: dict[str, int],
    answered: list[tuple[float, float]],
    limits: list[tuple[float, int]],
) -> OverloadResult:
    within = [(t, lat) for t, lat in answered if lat <= scenario.timeout]
    latencies = sorted(lat for _, lat in within)
    served_capacity = scenario.capacity * (
        (scenario.drop_at - scenario.warmup) + (scenario.duration - scenario.drop_at) / 2.0
    )
    width = scenario.window
    windows = math.ceil(scenario.duration / width - 1e-9)
    buckets: list[list[float]] = [[] for _ in range(windows)]
    for finished, latency in within:
        index = min(windows - 1, int(finished / width))
        buckets[index].append(latency)
    limit_at = {round(t / width): value for t, value in limits}
    series = []
    for index, bucket in enumerate(buckets):
        bucket.sort()
        series.append(
            (
                (index + 1) * width,
                float(limit_at.get(index + 1, math.nan)),
                len(bucket) / width,
                percentile(bucket, 99.0),
            )
        )
    return OverloadResult(
        setup=setup.name,
        offered=counts["offered"],
        succeeded=len(within),
        rejected=counts["rejected"],
        timed_out=counts["timed_out"],
        goodput=len(within) / served_capacity,
        p50=percentile(latencies, 50.0),
        p99=percentile(latencies, 99.0),
        recovery=_recovery(scenario, buckets),
        series=tuple(series),
    )


def _recovery(scenario: OverloadScenario, buckets: Sequence[list[float]]) -> float:
    """Seconds from the drop to the start of the first second (in steps of a window)
    whose answers have a p99 within the target and a goodput of 90% of the new capacity."""
    width = scenario.window
    span = max(1, round(1.0 / width))
    first = math.ceil(scenario.drop_at / width - 1e-9)
    capacity = scenario.capacity / 2.0
    for index in range(first, len(buckets) - span + 1):
        pooled = sorted(lat for bucket in buckets[index : index + span] for lat in bucket)
        if (
            len(pooled) >= 0.9 * capacity * span * width
            and percentile(pooled, 99.0) <= scenario.target_latency
        ):
            return index * width - scenario.drop_at
    return math.inf


def meets_target(scenario: OverloadScenario, result: OverloadResult, within: float = 3.0) -> bool:
    """p99 within twice the unloaded latency, goodput at least 90% of capacity, and back
    on target within ``within`` seconds of the drop."""
    return (
        result.p99 <= scenario.target_latency
        and result.goodput >= 0.9
        and result.recovery <= within
    )


def run_overload(
    scenario: OverloadScenario | None = None, seed: int = 1
) -> tuple[OverloadScenario, list[OverloadResult]]:
    """Every set-up of :func:`setups` through ``scenario`` (default: the report's)."""
    scenario = scenario if scenario is not None else OverloadScenario()
    return scenario, [simulate_overload(scenario, setup, seed) for setup in setups()]


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.1f} ms"


def format_overload_table(scenario: OverloadScenario, results: Sequence[OverloadResult]) -> str:
    """A Markdown table of the results, with the scenario in one line above it."""
    head = (
        f"overload: {scenario.servers} servers x {scenario.service_time * 1000:g} ms "
        f"(capacity {scenario.capacity:,.0f}/s), offered {scenario.load:g}x, half the servers "
        f"gone at {scenario.drop_at:g} s of {scenario.duration:g} s, {scenario.timeout:g} s "
        f"client timeout; target p99 <= {scenario.target_latency * 1000:g} ms, goodput >= 90%"
    )
    rows = [
        "| set-up | goodput | p50 | p99 | rejected | timed out | back on target after drop |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        recovery = "never" if math.isinf(r.recovery) else f"{r.recovery:.2f} s"
        rows.append(
            f"| {r.setup} | {100 * r.goodput:.1f}% | {_ms(r.p50)} | {_ms(r.p99)} | "
            f"{100 * r.rejected / max(1, r.offered):.1f}% | "
            f"{100 * r.timed_out / max(1, r.offered):.1f}% | {recovery} |"
        )
    return "\n".join([head, "", *rows])


def plot_overload(
    scenario: OverloadScenario, results: Sequence[OverloadResult], path: str | Path
) -> str | None:
    """Write a PNG (goodput, p99 and limit over time); a note instead without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'codomyrmex-service-mesh[bench]'): no plot"
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    colours = ("#8c8c8c", "#dd8452", "#55a868", "#c44e52", "#4c72b0", "#8172b3", "#937860")
    for k, r in enumerate(results):
        style = {"label": r.setup, "linewidth": 1.2, "color": colours[k % len(colours)]}
        series = [s for s in r.series if s[0] > scenario.warmup]
        times = [s[0] for s in series]
        top.plot(times, [s[2] for s in series], **style)
        middle.plot(times, [s[3] * 1000 for s in series], **style)
        if not all(math.isnan(s[1]) for s in series):
            bottom.plot(times, [s[1] for s in series], **style)
    capacity = [
        scenario.capacity if t <= scenario.drop_at else scenario.capacity / 2
        for t in (s[0] for s in results[0].series)
    ]
    top.plot([s[0] for s in results[0].series], capacity, "k--", linewidth=0.8, label="capacity")
    top.set_ylabel("goodput (answers/s)")
    middle.set_yscale("log")
    middle.axhline(scenario.target_latency * 1000, color="k", linestyle="--", linewidth=0.8)
    middle.set_ylabel("p99 of answers (ms, log; dashed: target)")
    bottom.axhline(scenario.servers, color="k", linestyle=":", linewidth=0.8)
    bottom.axhline(scenario.servers / 2, color="k", linestyle=":", linewidth=0.8)
    bottom.set_ylabel("concurrency limit (dotted: servers)")
    bottom.set_xlabel("virtual time (s)")
    top.legend(fontsize=8, ncol=3)
    top.set_title(
        f"{scenario.servers} servers x {scenario.service_time * 1000:g} ms, offered "
        f"{scenario.load:g}x capacity, half the servers gone at {scenario.drop_at:g} s",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m codomyrmex.service_mesh.simulation.overload [--out PNG]``: the report."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m codomyrmex.service_mesh.simulation.overload",
        description="Scenario 'overload': no limit, a static bulkhead, AIMD, Vegas and "
        "Gradient2 against a backend driven at twice its capacity that loses half of it.",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="virtual seconds (20)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--out", metavar="PNG", help="write the plot to this file")
    args = parser.parse_args(argv)
    try:
        scenario = OverloadScenario(duration=args.duration, drop_at=args.duration / 2)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    scenario, results = run_overload(scenario, args.seed)
    print(format_overload_table(scenario, results))
    if args.out:
        note = plot_overload(scenario, results, args.out)
        print(note if note is not None else f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
