"""The picking strategies, one module per family, behind the protocol in :mod:`.base`.

- :mod:`.uniform`: ROUND_ROBIN and RANDOM;
- :mod:`.weighted`: WEIGHTED (an alias table over the members);
- :mod:`.least_loaded`: LEAST_CONNECTIONS, POWER_OF_TWO and PEAK_EWMA;
- :mod:`.consistent_hash`: RING_HASH and MAGLEV.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import LoadBalancerStrategy, Strategy, TabledStrategy
from .consistent_hash import Maglev, RingHash
from .least_loaded import LeastConnections, PeakEwma, PowerOfTwo
from .uniform import RandomPick, RoundRobin
from .weighted import Weighted

if TYPE_CHECKING:
    from ..pool import Pool
    from ..tables import Tables

__all__ = [
    "LeastConnections",
    "LoadBalancerStrategy",
    "Maglev",
    "PeakEwma",
    "PowerOfTwo",
    "RandomPick",
    "RingHash",
    "RoundRobin",
    "Strategy",
    "StrategySettings",
    "TabledStrategy",
    "Weighted",
    "create",
]


@dataclass(frozen=True, slots=True)
class StrategySettings:
    """The balancer's options the strategies read (validated by the balancer)."""

    ewma_decay: float
    ring_replicas: int
    min_ring_size: int
    max_ring_size: int
    maglev_table_size: int


def create(
    kind: LoadBalancerStrategy,
    pool: Pool,
    rng: random.Random,
    tables: Tables,
    clock: Callable[[], float],
    settings: StrategySettings,
) -> Strategy:
    """A new strategy of ``kind`` over ``pool``."""
    LBS = LoadBalancerStrategy
    if kind is LBS.ROUND_ROBIN:
        return RoundRobin(pool, rng)
    if kind is LBS.RANDOM:
        return RandomPick(pool, rng)
    if kind is LBS.WEIGHTED:
        return Weighted(pool, rng, tables)
    if kind is LBS.LEAST_CONNECTIONS:
        return LeastConnections(pool, rng)
    if kind is LBS.POWER_OF_TWO:
        return PowerOfTwo(pool, rng)
    if kind is LBS.PEAK_EWMA:
        return PeakEwma(pool, rng, clock, settings.ewma_decay)
    if kind is LBS.RING_HASH:
        return RingHash(
            pool,
            rng,
            tables,
            replicas=settings.ring_replicas,
            min_size=settings.min_ring_size,
            max_size=settings.max_ring_size,
        )
    if kind is LBS.MAGLEV:
        return Maglev(pool, rng, tables, size=settings.maglev_table_size)
    raise ValueError(f"no strategy for {kind!r}")
