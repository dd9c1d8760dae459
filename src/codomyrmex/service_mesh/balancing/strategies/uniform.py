"""ROUND_ROBIN and RANDOM: every pooled instance alike, whatever its weight or load."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .base import LoadBalancerStrategy, Strategy

if TYPE_CHECKING:
    from ..pool import Entry

__all__ = ["RandomPick", "RoundRobin"]


class _Uniform(Strategy):
    """A strategy that ignores weights: instances of weight 0 are picked too."""

    uses_weight: ClassVar[bool] = False

    __slots__ = ()


class RoundRobin(_Uniform):
    """The pool in registration order, one after the other (the pool keeps the cursor)."""

    kind: ClassVar[LoadBalancerStrategy] = LoadBalancerStrategy.ROUND_ROBIN

    __slots__ = ()

    def pick(self) -> Entry | None:
        entries = self.entries
        if not entries:
            return None
        pool = self.pool
        i = pool.cursor
        if i >= len(entries):
            i = 0
        pool.cursor = i + 1
        entry = entries[i]
        pool.cursor_seq = entry.seq
        return entry


class RandomPick(_Uniform):
    """A uniform draw from the pool."""

    kind: ClassVar[LoadBalancerStrategy] = LoadBalancerStrategy.RANDOM

    __slots__ = ()

    def pick(self) -> Entry | None:
        entries = self.entries
        return entries[int(self.random() * len(entries))] if entries else None
