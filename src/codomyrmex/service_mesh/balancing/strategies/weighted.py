"""WEIGHTED: a draw in proportion to weight, from Walker's alias table over the members."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from ..weights import alias_table, relative_weights
from .base import LoadBalancerStrategy, TabledStrategy

if TYPE_CHECKING:
    from ..pool import Entry

__all__ = ["Weighted"]

_DRAWS = 64  # alias draws before a pick falls back to a walk over the pickable instances


class Weighted(TabledStrategy):
    """O(1) alias draws until one lands on a pooled member; a weighted walk when few are."""

    kind: ClassVar[LoadBalancerStrategy] = LoadBalancerStrategy.WEIGHTED

    __slots__ = ()

    def build(self, members: list[Entry], weights: list[float], gen: int) -> tuple[Any, ...]:
        prob, other = alias_table(weights)
        return prob, other, members, gen

    def pick(self) -> Entry | None:
        table = self.table
        if table is None:
            table = self.tables.build_inline()
        prob, other, entries, _ = table
        n = len(prob)
        if not n or not self.entries:
            return None
        draw = self.random
        for _ in range(_DRAWS):
            u = draw() * n
            i = int(u)
            entry: Entry = entries[i] if u - i < prob[i] else entries[other[i]]
            if entry.listed and entry.inst.weight > 0:
                return entry
        return self._walk()

    def _walk(self) -> Entry | None:
        """A weighted draw by a walk over the pickable instances (when few members are)."""
        positive = self.pool.positive_entries()
        if not positive:
            return None
        relative = relative_weights([e.inst.weight for e in positive])
        target = self.random() * math.fsum(relative)
        for entry, weight in zip(positive, relative, strict=True):
            target -= weight
            if target < 0.0:
                return entry
        return positive[-1]
