"""The strategy protocol: one strategy object per LoadBalancerStrategy, wired by its flags.

The balancer reads a strategy's class flags to wire its pick path once (slow start,
outcome observation, start times, tables); these tests pin which strategy says what,
and that the wiring follows the flags.
"""

from __future__ import annotations

import random
import threading

import pytest

from codomyrmex.service_mesh import LoadBalancer, LoadBalancerStrategy, ServiceInstance
from codomyrmex.service_mesh.balancing.pool import Pool
from codomyrmex.service_mesh.balancing.slow_start import SlowStartConfig
from codomyrmex.service_mesh.balancing.strategies import (
    Strategy,
    StrategySettings,
    TabledStrategy,
    create,
)
from codomyrmex.service_mesh.balancing.tables import Tables

LBS = LoadBalancerStrategy
SLOW_START_BY_REJECTION = {LBS.ROUND_ROBIN, LBS.RANDOM, LBS.WEIGHTED, LBS.POWER_OF_TWO}
SLOW_START_BY_REJECTION |= {LBS.PEAK_EWMA}
OBSERVES = {LBS.LEAST_CONNECTIONS, LBS.POWER_OF_TWO, LBS.PEAK_EWMA}
TABLED = {LBS.WEIGHTED, LBS.RING_HASH, LBS.MAGLEV}
IGNORES_WEIGHT = {LBS.ROUND_ROBIN, LBS.RANDOM, LBS.LEAST_CONNECTIONS}


def make(kind: LoadBalancerStrategy) -> Strategy:
    pool = Pool(0.0)
    tables = Tables(threading.Lock(), pool, lambda: None)
    settings = StrategySettings(10.0, 100, 256, 1 << 20, 65537)
    strategy = create(kind, pool, random.Random(0), tables, lambda: 0.0, settings)
    tables.use(strategy)  # as the balancer does when the strategy becomes its own
    return strategy


@pytest.mark.parametrize("kind", list(LBS))
def test_every_member_has_its_own_strategy_with_the_documented_flags(
    kind: LoadBalancerStrategy,
) -> None:
    strategy = make(kind)
    assert strategy.kind is kind
    assert strategy.slow_start_by_rejection is (kind in SLOW_START_BY_REJECTION)
    assert strategy.observes is (kind in OBSERVES)
    assert strategy.times_calls is (kind is LBS.PEAK_EWMA)
    assert strategy.tabled is (kind in TABLED) is isinstance(strategy, TabledStrategy)
    assert strategy.uses_weight is (kind not in IGNORES_WEIGHT)
    assert (strategy.load_buckets() is not None) is (kind is LBS.LEAST_CONNECTIONS)
    assert strategy.pick() is None  # an empty pool


def test_the_strategies_are_distinct_classes() -> None:
    assert len({type(make(kind)) for kind in LBS}) == len(LBS)


@pytest.mark.parametrize("kind", list(LBS))
def test_the_balancer_wires_the_pick_path_by_the_flags(kind: LoadBalancerStrategy) -> None:
    lb = LoadBalancer(kind, slow_start=SlowStartConfig(window=10.0), outlier_detection=None)
    for k in range(3):
        lb.register(ServiceInstance(f"i{k}", "10.0.0.1", 8000 + k))
    assert (lb.observe_clock is not None) is (kind is LBS.PEAK_EWMA)
    picked = lb.acquire()
    assert picked is not None and picked.connections == 1
    lb.release(picked, 0.0 if lb.observe_clock is None else lb.observe_clock(), None)
    assert picked.connections == 0


def test_a_strategy_switch_keeps_a_built_table() -> None:
    lb = LoadBalancer(LBS.RING_HASH)
    for k in range(4):
        lb.register(ServiceInstance(f"i{k}", "10.0.0.1", 8000 + k))
    before = {key: lb.get_instance(key=key) for key in ("a", "b", "c", "d")}
    lb.strategy = LBS.ROUND_ROBIN
    lb.strategy = LBS.RING_HASH
    assert {key: lb.get_instance(key=key) for key in before} == before
