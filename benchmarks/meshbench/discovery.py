"""Discovery churn: picks while a resolver applies 1,000 membership changes per second."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .harness import (
    BenchSetupError,
    Contender,
    LoopRunner,
    Pair,
    Runner,
    Settings,
    Target,
    Workload,
)
from .peers import ours

POOL = 1_000
CHANGES_PER_S = 1_000
BATCHES_PER_S = 100  # 10 changes a batch: 5 instances leave, 5 new ones join
MAX_BATCHES = 10_000_000  # the churn loop's bound (it stops with the runner long before)
STRATEGIES = ("ROUND_ROBIN", "WEIGHTED")


class _ListSource:
    """A do-nothing source: the churn thread hands listings to the resolver itself."""

    description = "churn"

    def start(self, resolver: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def refresh(self, resolver: Any) -> None:
        pass


class Churn:
    """A thread feeding a Resolver listings that change ``rate`` members per second."""

    def __init__(self, strategy: str, *, pool: int = POOL, rate: int = CHANGES_PER_S) -> None:
        sm = ours()
        from codomyrmex.service_mesh.discovery import Resolver

        self.sm = sm
        self.balancer = sm.LoadBalancer(strategy=sm.LoadBalancerStrategy[strategy])
        self.resolver = Resolver(_ListSource(), self.balancer, allow_empty=True)
        self.members = [self._instance(k) for k in range(pool)]
        self.next_id = pool
        self.resolver.replace(self.members)
        self.per_batch = max(2, rate // BATCHES_PER_S)
        self.changes = 0
        self.lag = 0.0  # worst lateness of a batch (seconds): is the churn keeping up?
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _instance(self, k: int) -> Any:
        return self.sm.ServiceInstance(f"i{k}", "127.0.0.1", 1024 + k % 60_000, weight=1 + k % 4)

    def batch(self) -> None:
        half = self.per_batch // 2
        del self.members[:half]  # the oldest leave ...
        for _ in range(half):  # ... and as many new ones join
            self.members.append(self._instance(self.next_id))
            self.next_id += 1
        self.resolver.replace(self.members)
        self.changes += 2 * half

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = 1.0 / BATCHES_PER_S
        due = time.perf_counter()
        for _ in range(MAX_BATCHES):
            wait = due - time.perf_counter()
            if wait > 0 and self._stop.wait(wait):
                return
            if self._stop.is_set():
                return
            self.lag = max(self.lag, -wait)
            self.batch()
            due += period

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class ChurnRunner:
    """ns per get_instance() while (or without) the churn thread runs."""

    def __init__(self, strategy: str, churning: bool) -> None:
        self.churn = Churn(strategy)
        if self.churn.balancer.get_instance() is None:
            raise BenchSetupError("get_instance() returned None with healthy instances")
        self.loop = LoopRunner("lb.get_instance()", {"lb": self.churn.balancer})
        self.churning = churning
        self.n = 0

    def calibrate(self, settings: Settings) -> None:
        self.loop.calibrate(settings)
        self.n = self.loop.n

    def sample(self) -> float:
        if not self.churning:
            return self.loop.sample()
        self.churn.start()
        try:
            return self.loop.sample()
        finally:
            self.churn.stop()

    def close(self) -> None:
        self.churn.stop()
        self.loop.close()


def _build(strategy: str, churning: bool) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        return ChurnRunner(strategy, churning)

    return build


def _label(strategy: str, churning: bool) -> str:
    return f"{strategy} @ {POOL:,}, " + (f"{CHANGES_PER_S:,} changes/s" if churning else "quiet")


def discovery_churn() -> Workload:
    contenders = [
        Contender(_label(s, c), "ours", _build(s, c)) for s in STRATEGIES for c in (False, True)
    ]
    pairs = [Pair(_label(s, True), _label(s, False), Target("<=", 1.5)) for s in STRATEGIES]
    return Workload(
        key="discovery_churn",
        title="9. get_instance() while a discovery Resolver applies membership changes",
        unit="ns/call",
        contenders=contenders,
        pairs=pairs,
        ratio_label="cost with churn / quiet",
        description=(
            f"A pool of {POOL:,}; during each churning sample a thread hands the Resolver a "
            f"listing every {1000 // BATCHES_PER_S} ms in which {CHANGES_PER_S // BATCHES_PER_S} "
            "members changed (half leave, half new), applied with update_members."
        ),
    )
