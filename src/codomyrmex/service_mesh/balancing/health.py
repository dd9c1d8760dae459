"""Active health checks: probe every instance of a load balancer and mark it healthy or not.

A :class:`HealthChecker` probes each registered instance every ``interval``
seconds (plus up to ``jitter``), with a TCP connect (:class:`TcpProbe`) or an
HTTP GET (:class:`HttpProbe`), and flips an instance's health after
``unhealthy_threshold`` failed or ``healthy_threshold`` passed probes in a row,
through ``LoadBalancer.mark_healthy``. It runs in a background thread
(``start()``/``stop()``, ``with checker:``) or as an asyncio task
(``await start_async()``/``stop_async()``, ``async with checker:``).

The probes of a round run concurrently, each within its own timeout, and each
result counts as soon as it is in: one hung instance delays no other's
detection. Rounds start ``interval`` apart (measured from the start of a round
on the injectable ``clock``; the wait itself is the injectable ``sleep`` /
``async_sleep``). A probe that raises is logged and counts as failed; it never
stops the checker.

Stopping is prompt: the interval wait is a ``threading.Event`` wait, and the
probes in progress are woken through a socket pair instead of running out
their timeouts. Only the standard library is used.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from .._validate import check_callable, check_int, check_number
from ._checks import check_positive
from .balancer import LoadBalancer
from .instance import ServiceInstance
from .probes import HttpProbe, Probe, Stopped, TcpProbe

__all__ = ["HealthCheckConfig", "HealthChecker", "HttpProbe", "Probe", "TcpProbe"]

logger = logging.getLogger("codomyrmex.service_mesh")

_MAX_PROBE_THREADS = 32  # probes of one round run concurrently, at most this many at once
_TIMEOUT_GRACE = 1.0  # seconds an async probe may overrun its own timeout before it is cut


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """How often instances are probed and how many results in a row change their health."""

    interval: float = 10.0
    """Seconds from the start of one round of probes to the start of the next (plus jitter)."""
    jitter: float = 0.0
    """Up to this many seconds, drawn uniformly, are added to each interval."""
    healthy_threshold: int = 2
    """Passed probes in a row that mark an unhealthy instance healthy."""
    unhealthy_threshold: int = 3
    """Failed probes in a row that mark a healthy instance unhealthy."""

    def __post_init__(self) -> None:
        check_positive("interval", self.interval)
        check_number("jitter", self.jitter, 0.0)
        check_int("healthy_threshold", self.healthy_threshold, 1)
        check_int("unhealthy_threshold", self.unhealthy_threshold, 1)


class HealthChecker:
    """Probes one load balancer's instances and keeps their health up to date.

    ``check_once()`` runs one round (what the background thread repeats), its
    probes concurrently; ``streak(id)`` is an instance's run of results
    (positive: passes in a row, negative: failures in a row).

    ``clock`` times the rounds (the next one starts ``interval`` after the start
    of the last); ``sleep`` (thread) and ``async_sleep`` (task) wait between
    rounds. By default the thread's wait is cut short by ``stop()``; an injected
    ``sleep`` is called as is and the stop is seen when it returns.
    """

    def __init__(
        self,
        balancer: LoadBalancer,
        probe: Probe | None = None,
        config: HealthCheckConfig | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if not isinstance(balancer, LoadBalancer):
            raise TypeError(f"balancer must be a LoadBalancer, got {balancer!r}")
        probe = TcpProbe() if probe is None else probe
        if not callable(getattr(probe, "check", None)) or not callable(
            getattr(probe, "check_async", None)
        ):
            raise TypeError(f"probe must have check() and check_async(), got {probe!r}")
        config = HealthCheckConfig() if config is None else config
        if not isinstance(config, HealthCheckConfig):
            raise TypeError(f"config must be a HealthCheckConfig, got {config!r}")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        check_callable("clock", clock)
        if sleep is not None:
            check_callable("sleep", sleep)
        check_callable("async_sleep", async_sleep)
        self._clock = clock
        self._sleep = sleep
        self._async_sleep = async_sleep
        self.balancer = balancer
        self.probe = probe
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._streaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"HealthChecker({self.balancer.name!r}, {self.probe!r}, {state})"

    @property
    def running(self) -> bool:
        """Whether a background thread or task is probing."""
        thread = self._thread
        task = self._task
        return (thread is not None and thread.is_alive()) or (task is not None and not task.done())

    def streak(self, instance_id: str) -> int:
        """Passed (> 0) or failed (< 0) probes in a row of an instance; 0 before any."""
        with self._lock:
            return self._streaks.get(instance_id, 0)

    def next_delay(self) -> float:
        """The wait before the next round: ``interval`` plus a jitter drawn from the rng."""
        jitter = self.config.jitter
        return self.config.interval + (self._rng.uniform(0.0, jitter) if jitter else 0.0)

    # -- one round ------------------------------------------------------------------

    def check_once(self) -> dict[str, bool]:
        """Probe every registered instance now, concurrently; return each result by id."""
        return self._round(None)

    async def check_once_async(self) -> dict[str, bool]:
        """Probe every registered instance now, concurrently; return each result by id."""
        instances = self.balancer.instances
        outcome: dict[str, bool] = {}

        async def one(instance: ServiceInstance) -> None:
            ok = await self._probe_async(instance)
            self._record(instance.id, ok)  # counted at once, whatever the others do
            outcome[instance.id] = ok

        await asyncio.gather(*(one(i) for i in instances))
        self._forget_others(outcome)
        return {i.id: outcome[i.id] for i in instances}

    async def _probe_async(self, instance: ServiceInstance) -> bool:
        """One awaited probe within its own timeout; one that raises is logged as failed."""
        limit = getattr(self.probe, "timeout", None)
        try:
            check = self.probe.check_async(instance)
            if isinstance(limit, (int, float)) and limit > 0:
                return bool(await asyncio.wait_for(check, limit + _TIMEOUT_GRACE))
            return bool(await check)
        except asyncio.TimeoutError:
            return False
        except Exception:
            logger.exception("health probe %r raised on %s", self.probe, instance.address)
            return False

    def _round(self, wake: socket.socket | None) -> dict[str, bool]:
        instances = self.balancer.instances
        outcome: dict[str, bool] = {}
        if not instances:
            self._forget_others(outcome)
            return outcome
        workers = min(len(instances), _MAX_PROBE_THREADS)
        name = f"codomyrmex-health-probe-{self.balancer.name or id(self.balancer)}"
        with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
            pending: dict[Future[bool], ServiceInstance] = {
                pool.submit(self._probe, instance, wake): instance for instance in instances
            }
            stopped = False
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    instance = pending.pop(future)
                    try:
                        ok = future.result()
                    except Stopped:
                        stopped = True
                        continue
                    if not stopped:
                        self._record(instance.id, ok)  # counted at once
                        outcome[instance.id] = ok
            if stopped:
                raise Stopped
        self._forget_others(outcome)
        return {i.id: outcome[i.id] for i in instances}

    def _probe(self, instance: ServiceInstance, wake: socket.socket | None) -> bool:
        """One probe; a probe that raises (a bug, not a sick instance) is logged as failed."""
        if wake is not None and self._stop.is_set():
            raise Stopped
        try:
            return bool(self.probe.check(instance, wake))
        except Stopped:
            raise
        except Exception:
            logger.exception("health probe %r raised on %s", self.probe, instance.address)
            return False

    def _record(self, instance_id: str, ok: bool) -> None:
        """Count one probe result and change the instance's health at a threshold."""
        with self._lock:
            streak = self._streaks.get(instance_id, 0)
            streak = max(streak, 0) + 1 if ok else min(streak, 0) - 1
            self._streaks[instance_id] = streak
        instance = self.balancer.get(instance_id)
        if instance is None:
            return
        config = self.config
        if ok and not instance.healthy and streak >= config.healthy_threshold:
            self.balancer.mark_healthy(instance_id, True)
        elif not ok and instance.healthy and -streak >= config.unhealthy_threshold:
            self.balancer.mark_healthy(instance_id, False)

    def _forget_others(self, seen: dict[str, bool]) -> None:
        with self._lock:
            for gone in [i for i in self._streaks if i not in seen]:
                del self._streaks[gone]

    # -- background thread ------------------------------------------------------------

    def start(self) -> HealthChecker:
        """Start probing in a background thread (first round at once)."""
        with self._lock:
            if self.running:
                raise RuntimeError("the health checker is already running")
            self._stop.clear()
            self._wake = socket.socketpair()
            name = f"codomyrmex-health-{self.balancer.name or id(self.balancer)}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the background thread and wait for it; a probe in progress is cut short."""
        with self._lock:
            thread, wake = self._thread, self._wake
            self._thread = None
            self._wake = None
        self._stop.set()
        if wake is not None:
            try:
                wake[1].send(b"x")
            except OSError:
                pass
        if thread is not None:
            thread.join()
        if wake is not None:
            wake[0].close()
            wake[1].close()

    def _run(self) -> None:
        wake = self._wake
        reader = None if wake is None else wake[0]
        try:
            while not self._stop.is_set():
                began = self._clock()
                self._round(reader)
                delay = max(0.0, began + self.next_delay() - self._clock())
                if self._sleep is None:
                    if self._stop.wait(delay):
                        return
                else:
                    self._sleep(delay)
        except Stopped:
            return

    def __enter__(self) -> HealthChecker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- asyncio task ---------------------------------------------------------------------

    async def start_async(self) -> HealthChecker:
        """Start probing as a task of the running event loop (first round at once)."""
        if self.running:
            raise RuntimeError("the health checker is already running")
        self._task = asyncio.get_running_loop().create_task(self._run_async())
        return self

    async def stop_async(self) -> None:
        """Cancel the probing task and wait until it has ended."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})  # a cancellation of this caller still propagates
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error

    async def _run_async(self) -> None:
        while True:
            began = self._clock()
            try:
                await self.check_once_async()
            except Exception:  # never die silently: log, and go on with the next round
                logger.exception("health check round of %r failed", self.balancer.name)
            await self._async_sleep(max(0.0, began + self.next_delay() - self._clock()))

    async def __aenter__(self) -> HealthChecker:
        return await self.start_async()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_async()
