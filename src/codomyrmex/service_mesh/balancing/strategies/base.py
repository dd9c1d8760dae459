"""The strategy protocol: what a load balancer asks of the strategy that picks for it.

A strategy is a small object over the balancer's :class:`~..pool.Pool`. The
balancer binds its ``pick`` once, when the strategy is set, and calls it with
its lock held, so a pick costs one call and no dispatch. The class attributes
tell the balancer what else to wire: whether the strategy wants each call's
outcome (``observes``) and start time (``times_calls``), whether slow start
thins its picks, and whether it keeps a table over the members (``tabled``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..buckets import LoadBuckets
    from ..pool import Entry, Pool
    from ..tables import Tables

__all__ = ["LoadBalancerStrategy", "Strategy", "TabledStrategy"]


class LoadBalancerStrategy(Enum):
    """How a load balancer chooses among healthy instances.

    The spec's four (ROUND_ROBIN, RANDOM, WEIGHTED, LEAST_CONNECTIONS) plus
    POWER_OF_TWO (least-loaded of two random picks), PEAK_EWMA (Finagle's
    latency-aware pick) and the consistent hashes RING_HASH and MAGLEV.
    """

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    WEIGHTED = "weighted"
    LEAST_CONNECTIONS = "least_connections"
    POWER_OF_TWO = "power_of_two"
    PEAK_EWMA = "peak_ewma"
    RING_HASH = "ring_hash"
    MAGLEV = "maglev"

    @classmethod
    def parse(cls, value: Any, field_name: str = "strategy") -> LoadBalancerStrategy:
        """Accept a member, its value (``"round_robin"``) or its name (``"ROUND_ROBIN"``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if value in (member.value, member.name):
                    return member
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"{field_name} must be one of {choices}; got {value!r}")
        raise TypeError(f"{field_name} must be a LoadBalancerStrategy, got {value!r}")


class Strategy:
    """Picks an entry of the pool (internal API; every call is made with the lock held)."""

    kind: ClassVar[LoadBalancerStrategy]
    uses_weight: ClassVar[bool] = True
    """Instances of weight 0 are never picked."""
    slow_start_by_rejection: ClassVar[bool] = True
    """Slow start keeps a pick of a ramping instance with the chance of its ramp factor."""
    observes: ClassVar[bool] = False
    """:meth:`observe` wants each finished call."""
    times_calls: ClassVar[bool] = False
    """:meth:`observe` needs each call's start time (the balancer's ``observe_clock``)."""
    tabled: ClassVar[bool] = False
    """The strategy picks from a table over the members (see :class:`TabledStrategy`)."""

    __slots__ = ("entries", "pool", "random", "rng")

    def __init__(self, pool: Pool, rng: random.Random) -> None:
        self.pool = pool
        self.entries = pool.entries  # the same list, changed in place
        self.rng = rng
        self.random = rng.random

    def pick(self) -> Entry | None:
        """An entry of the pool, or None when none can be picked."""
        raise NotImplementedError

    def pick_untried(
        self, picked: Entry, tried: set[str], pick: Callable[[], Entry | None]
    ) -> Entry:
        """A retry's pick: an entry not in ``tried`` if a usable one exists, else ``picked``.

        ``pick`` is the balancer's pick (this strategy's, with slow start if on).
        """
        for _ in range(3):
            entry = pick()
            if entry is not None and entry.inst.id not in tried:
                return entry
        weighted = self.uses_weight
        for entry in self.entries:
            if entry.inst.id not in tried and not (weighted and entry.inst.weight <= 0):
                return entry
        return picked

    def observe(
        self, entry: Entry, start: float, now: float, outcome: BaseException | None, aborted: bool
    ) -> None:
        """Learn from one finished call (``outcome`` None: a success); only if ``observes``."""

    def load_buckets(self) -> LoadBuckets | None:
        """The load buckets the pool must keep up to date while this strategy picks."""
        return None

    def table_stale(self, gen: int) -> bool:
        """Whether the table is missing or older than membership generation ``gen``."""
        return False


class TabledStrategy(Strategy):
    """A strategy that picks from a table over the members of positive weight.

    The table is built from a snapshot outside the lock (:meth:`build`, see
    :class:`~..tables.Tables`) and swapped in (:meth:`install`); its last item is
    the membership generation it was built for. Health flips and ejections never
    rebuild it: a pick passes over entries that are not pooled.
    """

    tabled: ClassVar[bool] = True

    __slots__ = ("table", "tables")

    def __init__(self, pool: Pool, rng: random.Random, tables: Tables) -> None:
        super().__init__(pool, rng)
        self.tables = tables
        self.table: tuple[Any, ...] | None = None

    def table_stale(self, gen: int) -> bool:
        table = self.table
        return table is None or table[-1] != gen

    def build(self, members: list[Entry], weights: list[float], gen: int) -> tuple[Any, ...]:
        """The table of ``members`` (of positive weight) for generation ``gen`` (no lock)."""
        raise NotImplementedError

    def install(self, table: tuple[Any, ...]) -> None:
        """Swap a built table in (lock held), unless a newer one is there already."""
        current = self.table
        if current is None or current[-1] <= table[-1]:
            self.table = table
