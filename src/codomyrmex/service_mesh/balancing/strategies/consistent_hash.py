"""The consistent hashes RING_HASH and MAGLEV: the same routing key, the same instance.

Both pick the owner of the key's place in a table over the members (a hash
ring, or a Maglev lookup table; see :mod:`..hashing`) and, when that instance
cannot be picked, walk on along the table to the next one that can, so only
the keys of an unavailable instance move. A pick with no routing key takes a
random place. Slow start does not thin their picks: that would break key
affinity.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from ..hashing import (
    OWNER_MASK,
    POSITION_BITS,
    build_maglev,
    build_ring,
    key_hash,
    maglev_params,
    ring_counts,
    ring_lookup,
    ring_points,
)
from ..routing import ROUTING_KEY
from .base import LoadBalancerStrategy, TabledStrategy

if TYPE_CHECKING:
    from ..pool import Entry, Pool
    from ..tables import Tables

__all__ = ["Maglev", "RingHash"]

_WALK = 256  # slots a pick walks along a ring or table for a pickable instance
_KEY_SHIFT = 64 - POSITION_BITS  # a 64-bit key hash -> a ring position


class _ConsistentHash(TabledStrategy):
    """What the two hashes share: the walk along the table and the fallbacks.

    A table is a tuple ending ``(..., members, generation)``; ``members[owner]`` is
    the entry that owns a slot.
    """

    slow_start_by_rejection: ClassVar[bool] = False

    __slots__ = ()

    def _start(self, table: tuple[Any, ...], hashed: int) -> int:
        """The index in ``table`` where the key hashed to ``hashed`` belongs (not empty)."""
        raise NotImplementedError

    def _along(self, table: tuple[Any, ...], start: int, first: int) -> Iterator[Entry]:
        """The owners of the table's slots from ``start + first`` on, within the walk."""
        raise NotImplementedError

    def _fallback(self, position: int) -> Entry | None:
        """A pickable entry chosen by the key alone, when a walk found none nearby."""
        positive = self.pool.positive_entries()
        return positive[position % len(positive)] if positive else None

    def _walk_from(self, table: tuple[Any, ...], start: int, position: int) -> Entry | None:
        """The first pickable owner after ``start`` along the table, else the fallback."""
        for entry in self._along(table, start, 1):
            if entry.listed and entry.inst.weight > 0:
                return entry
        return self._fallback(position)

    def pick_untried(
        self, picked: Entry, tried: set[str], pick: Callable[[], Entry | None]
    ) -> Entry:
        """Walk on from the key's place to an instance not tried yet, if a key is set."""
        key = ROUTING_KEY.get()
        table = self.table
        if key is not None and table is not None and table[-2]:  # [-2]: the members
            for entry in self._along(table, self._start(table, key_hash(key)), 0):
                if entry.listed and entry.inst.weight > 0 and entry.inst.id not in tried:
                    return entry
        return super().pick_untried(picked, tried, pick)


class RingHash(_ConsistentHash):
    """The owner of the key's place on a hash ring with points in proportion to weight."""

    kind: ClassVar[LoadBalancerStrategy] = LoadBalancerStrategy.RING_HASH

    __slots__ = ("max_size", "min_size", "replicas")

    def __init__(
        self,
        pool: Pool,
        rng: random.Random,
        tables: Tables,
        *,
        replicas: int,
        min_size: int,
        max_size: int,
    ) -> None:
        super().__init__(pool, rng, tables)
        self.replicas = replicas
        self.min_size = min_size
        self.max_size = max_size

    def build(self, members: list[Entry], weights: list[float], gen: int) -> tuple[Any, ...]:
        counts = ring_counts(weights, self.replicas, self.min_size, self.max_size)
        lists: list[list[int]] = []
        for entry, count in zip(members, counts, strict=True):
            cached = entry.points
            if cached is None or len(cached) < count:
                cached = entry.points = ring_points(entry.inst.id, count)
            lists.append(cached if len(cached) == count else cached[:count])
        return (*build_ring(lists), members, gen)

    def pick(self) -> Entry | None:
        table = self.table
        if table is None:
            table = self.tables.build_inline()
        points, starts, shift, entries, _ = table
        if not entries:
            return None
        key = ROUTING_KEY.get()
        if key is None:
            position = self.rng.getrandbits(POSITION_BITS)
        else:
            position = key_hash(key) >> _KEY_SHIFT
        start = ring_lookup(points, starts, shift, position)
        entry: Entry = entries[points[start] & OWNER_MASK]
        if entry.listed and entry.inst.weight > 0:
            return entry
        return self._walk_from(table, start, position)

    def _start(self, table: tuple[Any, ...], hashed: int) -> int:
        points, starts, shift, _, _ = table
        return ring_lookup(points, starts, shift, hashed >> _KEY_SHIFT)

    def _along(self, table: tuple[Any, ...], start: int, first: int) -> Iterator[Entry]:
        points, _, _, entries, _ = table
        size = len(points)
        for step in range(first, min(size, _WALK)):
            yield entries[points[(start + step) % size] & OWNER_MASK]


class Maglev(_ConsistentHash):
    """The owner of the key's slot in a Maglev lookup table (a prime ``table_size``)."""

    kind: ClassVar[LoadBalancerStrategy] = LoadBalancerStrategy.MAGLEV

    __slots__ = ("size",)

    def __init__(self, pool: Pool, rng: random.Random, tables: Tables, *, size: int) -> None:
        super().__init__(pool, rng, tables)
        self.size = size

    def build(self, members: list[Entry], weights: list[float], gen: int) -> tuple[Any, ...]:
        # Maglev's table depends on the order instances claim slots: use the ids' order, so
        # every balancer with the same instances builds the same table.
        order = sorted(range(len(members)), key=lambda k: members[k].inst.id)
        entries = [members[k] for k in order]
        size = self.size
        params: list[tuple[int, int]] = []
        for entry in entries:
            cached = entry.maglev
            if cached is None:
                cached = entry.maglev = maglev_params(entry.inst.id, size)
            params.append(cached)
        return build_maglev(params, [weights[k] for k in order], size), entries, gen

    def pick(self) -> Entry | None:
        table = self.table
        if table is None:
            table = self.tables.build_inline()
        slots, entries, _ = table
        if not entries:
            return None
        key = ROUTING_KEY.get()
        size = len(slots)
        slot = int(self.random() * size) if key is None else key_hash(key) % size
        entry: Entry = entries[slots[slot]]
        if entry.listed and entry.inst.weight > 0:
            return entry
        return self._walk_from(table, slot, slot)

    def _start(self, table: tuple[Any, ...], hashed: int) -> int:
        return hashed % len(table[0])

    def _along(self, table: tuple[Any, ...], start: int, first: int) -> Iterator[Entry]:
        slots, entries, _ = table
        size = len(slots)
        for step in range(first, min(size, _WALK)):
            yield entries[slots[(start + step) % size]]
