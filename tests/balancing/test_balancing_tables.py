"""The WEIGHTED, RING_HASH and MAGLEV tables: built off the lock and the event loop, normalised.

Regression tests for issue 15 items 11 (flips rebuild nothing; builds run outside
the lock, and off the event loop), 12 (RING_HASH normalisation) and 14 (weights
the constructor accepts never break a pick). Builds are observed by wrapping the
module's table builders; nothing here is timed.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    LoadBalancer,
    LoadBalancerStrategy,
    NoHealthyInstanceError,
    ServiceInstance,
)
from codomyrmex.service_mesh.balancing import tables
from codomyrmex.service_mesh.balancing.hashing import build_ring as build_ring_of_points
from codomyrmex.service_mesh.balancing.strategies import consistent_hash, weighted

WEIGHTED = LoadBalancerStrategy.WEIGHTED
RING = LoadBalancerStrategy.RING_HASH
MAGLEV = LoadBalancerStrategy.MAGLEV
P2C = LoadBalancerStrategy.POWER_OF_TWO
EWMA = LoadBalancerStrategy.PEAK_EWMA
TABLED = [WEIGHTED, RING, MAGLEV]
BUILDERS = {  # where each strategy looks its table builder up
    WEIGHTED: (weighted, "alias_table"),
    RING: (consistent_hash, "build_ring"),
    MAGLEV: (consistent_hash, "build_maglev"),
}


def inst(id: str, weight: float = 1) -> ServiceInstance:
    return ServiceInstance(id=id, host="10.0.0.1", port=8080, weight=weight)


def make_lb(
    strategy: LoadBalancerStrategy, weights: dict[str, float], **options: Any
) -> LoadBalancer:
    lb = LoadBalancer(strategy, name="svc", rng=random.Random(0), **options)
    for i, w in weights.items():
        lb.register(inst(i, w))
    return lb


def keys(n: int) -> list[str]:
    return [f"user-{k}" for k in range(n)]


def mapping(lb: LoadBalancer, sample: list[str]) -> dict[str, str]:
    return {k: lb.get_instance(key=k).id for k in sample}  # type: ignore[union-attr]


def shares(lb: LoadBalancer, n: int = 40_000, keyed: bool = False) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for k in range(n):
        picked = lb.get_instance(key=f"user-{k}") if keyed else lb.get_instance()
        assert picked is not None
        counts[picked.id] += 1
    return {i: c / n for i, c in counts.items()}


class BuildSpy:
    """Wraps the strategy's table builder: counts builds, notes the lock and the thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, strategy: LoadBalancerStrategy) -> None:
        self.calls: list[tuple[bool, threading.Thread]] = []
        self.lb: LoadBalancer | None = None
        self.done = threading.Event()
        module, name = BUILDERS[strategy]
        real: Callable[..., Any] = getattr(module, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            lock = self.lb._lock if self.lb is not None else None
            self.calls.append((lock is not None and lock.locked(), threading.current_thread()))
            try:
                return real(*args, **kwargs)
            finally:
                self.done.set()

        monkeypatch.setattr(module, name, spy)


# -- item 11: flips rebuild nothing; builds run off the lock and off the event loop ----


@pytest.mark.parametrize("strategy", TABLED)
def test_health_flips_and_ejections_rebuild_no_table(
    monkeypatch: pytest.MonkeyPatch, strategy: LoadBalancerStrategy
) -> None:
    spy = BuildSpy(monkeypatch, strategy)
    lb = make_lb(strategy, {f"i{k}": 1 + k % 3 for k in range(40)}, maglev_table_size=1021)
    spy.lb = lb
    assert lb.get_instance(key="k") is not None
    assert [locked for locked, _ in spy.calls] == [False]  # built outside the lock
    for step in range(50):
        target = f"i{step % 40}"
        lb.mark_healthy(target, False)
        for k in range(20):
            picked = lb.get_instance(key=f"k{k}")
            assert picked is not None and picked.id != target
        lb.mark_healthy(target, True)
        assert lb.get_instance(key="k") is not None
    assert len(spy.calls) == 1  # no flip rebuilt the table
    lb.register(inst("new"))  # a change of membership does, once, off the lock
    assert lb.get_instance(key="k") is not None
    assert [locked for locked, _ in spy.calls] == [False, False]


@pytest.mark.parametrize("strategy", [RING, MAGLEV])
def test_an_unhealthy_instances_keys_go_elsewhere_and_only_they_move(
    strategy: LoadBalancerStrategy,
) -> None:
    lb = make_lb(strategy, {f"i{k}": 1 for k in range(10)}, maglev_table_size=1021)
    sample = keys(5000)
    before = mapping(lb, sample)
    for down in ("i3", "i7"):
        lb.mark_healthy(down, False)
    during = mapping(lb, sample)
    assert {"i3", "i7"}.isdisjoint(during.values())
    assert all(during[k] == before[k] for k in sample if before[k] not in ("i3", "i7"))
    moved_to = Counter(during[k] for k in sample if before[k] in ("i3", "i7"))
    assert len(moved_to) >= 4  # spread over the others, not all onto one neighbour


@pytest.mark.parametrize("strategy", TABLED)
def test_a_pick_on_an_event_loop_never_builds_on_the_loop(
    monkeypatch: pytest.MonkeyPatch, strategy: LoadBalancerStrategy
) -> None:
    spy = BuildSpy(monkeypatch, strategy)
    lb = make_lb(strategy, {f"i{k}": 1 for k in range(8)}, maglev_table_size=1021)
    spy.lb = lb
    lb.build_tables()  # the first table, built ahead in this thread
    assert len(spy.calls) == 1

    async def main() -> threading.Thread:
        loop_thread = threading.current_thread()
        spy.done.clear()
        lb.register(inst("joined", weight=50))
        assert lb.get_instance(key="k") is not None  # the old table serves meanwhile
        await asyncio.get_running_loop().run_in_executor(None, spy.done.wait)
        return loop_thread

    loop_thread = run(main())
    assert len(spy.calls) == 2
    locked, builder = spy.calls[1]
    assert not locked and builder is not loop_thread and builder.name == "codomyrmex-tables"
    drained = threading.Event()
    tables.BUILDER.submit(drained.set)  # runs after the build has been swapped in
    assert drained.wait(30.0)
    assert "joined" in shares(lb, 4000, keyed=True)  # the new table is in use


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_build_tables_is_a_no_op_for_other_strategies_and_current_tables() -> None:
    lb = make_lb(LoadBalancerStrategy.ROUND_ROBIN, {"a": 1})
    lb.build_tables()
    assert lb.get_instance() is lb.get("a")
    lb.strategy = RING
    lb.build_tables()
    lb.build_tables()
    assert lb.get_instance(key="x") is lb.get("a")


# -- item 12: RING_HASH balance depends on the weights' ratios only ----------------------


def test_ring_hash_balance_does_not_depend_on_the_scale_of_the_weights() -> None:
    sample = keys(20_000)
    small = make_lb(RING, dict.fromkeys("abcd", 0.01))
    got = shares(small, keyed=True)
    assert max(got.values()) < 0.35, got  # was one host with 77%
    assert mapping(small, sample) == mapping(make_lb(RING, dict.fromkeys("abcd", 1000.0)), sample)
    assert mapping(make_lb(RING, {"a": 0.5, "b": 1.5}), sample) == mapping(
        make_lb(RING, {"a": 5.0, "b": 15.0}), sample
    )


def test_ring_hash_growth_moves_no_key_between_the_instances_that_stay() -> None:
    # 20 hosts of weight 100, plus one: the old point cap moved 4.2% between survivors.
    lb = make_lb(RING, {f"h{k}": 100 for k in range(20)})
    sample = keys(20_000)
    before = mapping(lb, sample)
    lb.register(inst("h20", 100))
    after = mapping(lb, sample)
    moved = [k for k in sample if before[k] != after[k]]
    assert all(after[k] == "h20" for k in moved)
    assert 0.6 / 21 < len(moved) / len(sample) < 1.4 / 21


def test_ring_hash_min_and_max_ring_size_scale_every_count_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int] = []
    real = build_ring_of_points

    def build_ring(point_lists: list[list[int]]) -> Any:
        sizes.append(sum(len(points) for points in point_lists))
        return real(point_lists)

    monkeypatch.setattr(consistent_hash, "build_ring", build_ring)
    capped = make_lb(RING, {"a": 1, "b": 999}, max_ring_size=2000)
    got = shares(capped, keyed=True)
    assert got.get("a", 0.0) < 0.01 and got["b"] > 0.99
    assert len(sizes) == 1 and sizes[0] <= 2000
    lifted = make_lb(RING, {"a": 1}, min_ring_size=4096)
    lifted.get_instance(key="x")
    assert sizes[1:] == [4096]
    with pytest.raises(ValueError, match="max_ring_size"):
        LoadBalancer(RING, min_ring_size=10, max_ring_size=5)
    with pytest.raises(TypeError, match="min_ring_size"):
        LoadBalancer(RING, min_ring_size=1.5)  # type: ignore[arg-type]


# -- item 14: extreme weights never break a pick ------------------------------------------


@pytest.mark.parametrize("strategy", [WEIGHTED, RING, MAGLEV, P2C, EWMA])
def test_huge_weights_pick_in_proportion(strategy: LoadBalancerStrategy) -> None:
    lb = make_lb(strategy, {"a": 1e308, "b": 1e308, "c": 5e307}, maglev_table_size=10007)
    got = shares(lb, 20_000, keyed=strategy in (RING, MAGLEV))
    if strategy in (WEIGHTED, RING, MAGLEV):
        expected = {"a": 0.4, "b": 0.4, "c": 0.2}
        assert all(abs(got.get(i, 0.0) - p) < 0.03 for i, p in expected.items()), got
    else:
        assert set(got) == {"a", "b", "c"}


@pytest.mark.parametrize("strategy", [WEIGHTED, RING, MAGLEV])
def test_vanishing_weights_build_and_pick(strategy: LoadBalancerStrategy) -> None:
    lb = make_lb(strategy, {"a": 1.0, "b": 1e-30}, maglev_table_size=1021)
    got = shares(lb, 5000, keyed=strategy is not WEIGHTED)
    assert got["a"] > 0.99
    lb.mark_healthy("a", False)
    assert lb.get_instance(key="x") is lb.get("b")  # the light one still serves alone


@pytest.mark.parametrize("strategy", TABLED)
def test_membership_churn_from_a_thread_while_an_event_loop_picks(
    strategy: LoadBalancerStrategy,
) -> None:
    lb = make_lb(strategy, {f"i{k}": 1 + k % 3 for k in range(30)}, maglev_table_size=1021)
    stop = threading.Event()

    def churn() -> None:
        rng = random.Random(5)
        for step in range(400):
            target = f"i{rng.randrange(40)}"
            roll = rng.random()
            if roll < 0.3:
                lb.deregister(target)
            elif roll < 0.6:
                lb.register(inst(target, rng.choice([0, 1, 2])))
            else:
                lb.mark_healthy(target, step % 2 == 0)
        stop.set()

    async def main() -> int:
        picks = 0
        worker = threading.Thread(target=churn, daemon=True)
        worker.start()
        while not stop.is_set() or picks < 200:
            try:
                async with lb.connection():
                    pass
            except NoHealthyInstanceError:
                pass
            picks += 1
            await asyncio.sleep(0)
        worker.join(30.0)
        return picks

    assert run(main()) >= 200
    assert all(i.connections == 0 for i in lb.instances)
    lb.build_tables()
    survivors = {i.id for i in lb.healthy_instances if i.weight > 0}
    for k in range(200):
        picked = lb.get_instance(key=f"k{k}")
        assert (picked is None and not survivors) or (picked is not None and picked.id in survivors)
