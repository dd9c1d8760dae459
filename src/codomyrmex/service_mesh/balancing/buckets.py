"""Instances bucketed by load, so LEAST_CONNECTIONS finds the least loaded in O(1).

A pooled instance's load is its calls in flight plus its failure penalty; each
bucket holds the entries of one load, and an entry knows its place in its
bucket, so a connection opened or closed moves it in constant time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import Entry

__all__ = ["LoadBuckets"]


class LoadBuckets:
    """The pooled entries by load (internal API; the balancer's lock is held for every call)."""

    __slots__ = ("by_load", "least", "tick")

    def __init__(self) -> None:
        self.by_load: dict[int, list[Entry]] = {}
        self.least = 0  # the lowest load with a bucket (meaningless while empty)
        self.tick = 0  # rotates picks within the least loaded bucket

    def fill(self, entries: Iterable[Entry]) -> None:
        """Start over with ``entries``, each at its current load."""
        self.by_load = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Entry) -> None:
        """Put a newly pooled entry in the bucket of its load."""
        by_load = self.by_load
        load = entry.inst.connections + entry.load_penalty
        if not by_load or load < self.least:
            self.least = load
        self._put(entry, load)

    def remove(self, entry: Entry) -> None:
        """Take an entry that leaves the pool out of its bucket."""
        load = entry.lc_count
        if self._take(entry) and load == self.least and self.by_load:
            self.least = min(self.by_load)

    def shift(self, entry: Entry, delta: int) -> None:
        """Move an entry to the bucket of ``load + delta`` (delta is +1 or -1) in O(1).

        On every acquire and release: written out in full, without helper calls.
        """
        old = entry.lc_count
        new = old + delta
        if new < 0:
            return
        by_load = self.by_load
        source = by_load[old]
        moved = source.pop()
        pos = entry.lc_pos
        if moved is not entry:
            source[pos] = moved
            moved.lc_pos = pos
        emptied = not source
        if emptied:
            del by_load[old]
        target = by_load.get(new)
        if target is None:
            target = by_load[new] = []
        entry.lc_count = new
        entry.lc_pos = len(target)
        target.append(entry)
        if new < self.least or (emptied and old == self.least):
            self.least = new

    def _put(self, entry: Entry, load: int) -> None:
        bucket = self.by_load.get(load)
        if bucket is None:
            bucket = self.by_load[load] = []
        entry.lc_count = load
        entry.lc_pos = len(bucket)
        bucket.append(entry)

    def _take(self, entry: Entry) -> bool:
        """Take ``entry`` out of its bucket; True if that emptied (and dropped) the bucket."""
        load = entry.lc_count
        bucket = self.by_load[load]
        last = bucket.pop()
        if last is not entry:
            bucket[entry.lc_pos] = last
            last.lc_pos = entry.lc_pos
        if bucket:
            return False
        del self.by_load[load]
        return True
