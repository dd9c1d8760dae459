"""The load-aware strategies: LEAST_CONNECTIONS, POWER_OF_TWO and PEAK_EWMA.

Load is an instance's calls in flight, plus, for LEAST_CONNECTIONS and
POWER_OF_TWO, a penalty of one per recent failure in a row (at most five): an
instance that fails fast must not look least loaded for that reason. PEAK_EWMA
weighs the calls in flight by a decaying estimate of the instance's latency.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from ..buckets import LoadBuckets
from .base import LoadBalancerStrategy, Strategy

if TYPE_CHECKING:
    from ..pool import Entry, Pool

__all__ = ["LeastConnections", "PeakEwma", "PowerOfTwo"]

MAX_LOAD_PENALTY = 5
"""Phantom calls in flight, at most, of an instance that keeps failing."""
_UNMEASURED_PENALTY = 1e12  # PEAK_EWMA cost of a busy instance with no latency sample yet
_FAILURE_LATENCY = 1.0  # PEAK_EWMA: a failed call counts as at least this slow (Finagle)


class _Penalised(Strategy):
    """A strategy that sees a failing instance's penalty as load."""

    observes: ClassVar[bool] = True

    __slots__ = ()

    def observe(
        self, entry: Entry, start: float, now: float, outcome: BaseException | None, aborted: bool
    ) -> None:
        """Raise a failing instance's phantom load by one, or lower it after a success."""
        if aborted:
            return
        penalty = entry.load_penalty
        if outcome is not None:
            if penalty >= MAX_LOAD_PENALTY:
                return
            entry.load_penalty = penalty + 1
            delta = 1
        else:
            if not penalty:
                return
            entry.load_penalty = penalty - 1
            delta = -1
        buckets = self.pool.buckets
        if buckets is not None and entry.listed:
            buckets.shift(entry, delta)


class LeastConnections(_Penalised):
    """The least loaded pooled instance, exactly; ties taken in turn (O(1), by buckets)."""

    kind: ClassVar[LoadBalancerStrategy] = LoadBalancerStrategy.LEAST_CONNECTIONS
    uses_weight: ClassVar[bool] = False
    slow_start_by_rejection: ClassVar[bool] = False  # keeps its exact minimum

    __slots__ = ("buckets",)

    def __init__(self, pool: Pool, rng: random.Random) -> None:
        super().__init__(pool, rng)
        self.buckets = LoadBuckets()

    def load_buckets(self) -> LoadBuckets | None:
        return self.buckets

    def pick(self) -> Entry | None:
        buckets = self.buckets
        by_load = buckets.by_load
        if not by_load:
            return None
        bucket = by_load[buckets.least]
        tick = buckets.tick = buckets.tick + 1
        return bucket[tick % len(bucket)]

    def pick_untried(
        self, picked: Entry, tried: set[str], pick: Callable[[], Entry | None]
    ) -> Entry:
        """The least loaded instance not tried yet."""
        by_load = self.buckets.by_load
        for load in sorted(by_load):
            for entry in by_load[load]:
                if entry.inst.id not in tried:
                    return entry
        return picked


class PowerOfTwo(_Penalised):
    """Two independent uniform draws; the one with fewer connections per weight wins.

    The cost is ``(connections + 1) / weight``, the first draw winning ties. Idle,
    with distinct weights, the k-th heaviest of n gets ``(2(n - k) + 1) / n**2`` of
    the picks (weights 1, 2, 3: 1/9, 3/9, 5/9), so shares are not in proportion to
    weight as with Envoy's weighted least request; WEIGHTED gives those.
    """

    kind: ClassVar[LoadBalancerStrategy] = LoadBalancerStrategy.POWER_OF_TWO

    __slots__ = ()

    def pick(self) -> Entry | None:
        positive = self.pool.positive
        if positive is None:
            positive = self.pool.positive_entries()
        n = len(positive)
        if not n:
            return None
        draw = self.random
        a = positive[int(draw() * n)]
        b = positive[int(draw() * n)]
        if a is b:
            return a
        # (connections + penalty + 1) / weight, cross-multiplied; the first draw wins ties.
        load_a = a.inst.connections + a.load_penalty + 1
        load_b = b.inst.connections + b.load_penalty + 1
        if load_b * a.inst.weight < load_a * b.inst.weight:
            return b
        return a


class PeakEwma(Strategy):
    """Two distinct random instances; the lower ``latency EWMA x (connections + 1) / weight``.

    Distinct, as in Finagle: the costliest instance is never picked, so a stuck
    one gets no calls until its estimate has decayed over ``decay`` seconds.
    """

    kind: ClassVar[LoadBalancerStrategy] = LoadBalancerStrategy.PEAK_EWMA
    observes: ClassVar[bool] = True
    times_calls: ClassVar[bool] = True

    __slots__ = ("clock", "decay")

    def __init__(
        self, pool: Pool, rng: random.Random, clock: Callable[[], float], decay: float
    ) -> None:
        super().__init__(pool, rng)
        self.clock = clock
        self.decay = decay

    def pick(self) -> Entry | None:
        positive = self.pool.positive
        if positive is None:
            positive = self.pool.positive_entries()
        n = len(positive)
        if n < 2:
            return positive[0] if n else None
        draw = self.random
        i = int(draw() * n)
        j = int(draw() * (n - 1))
        a = positive[i]
        b = positive[j + 1 if j >= i else j]
        now = self.clock()
        if self._cost(b, now) < self._cost(a, now):
            return b
        return a

    def _cost(self, entry: Entry, now: float) -> float:
        pending = entry.inst.connections
        if not entry.measured:
            # No latency yet: free while idle, then one call at a time (Finagle's penalty).
            return _UNMEASURED_PENALTY + pending if pending else 0.0
        estimate = entry.ewma
        elapsed = now - entry.ewma_at
        if elapsed > 0.0:
            estimate *= math.exp(-elapsed / self.decay)
        return estimate * (pending + 1) / entry.inst.weight

    def observe(
        self, entry: Entry, start: float, now: float, outcome: BaseException | None, aborted: bool
    ) -> None:
        # A failure or a cut-short call is no evidence of speed: it may raise the estimate
        # only, and a failure counts as slow however fast it came back (Finagle).
        rtt = now - start
        if outcome is not None and not aborted and rtt < _FAILURE_LATENCY:
            rtt = _FAILURE_LATENCY
        self._sample(entry, rtt, now, peak_only=outcome is not None)

    def _sample(self, entry: Entry, rtt: float, now: float, *, peak_only: bool) -> None:
        """Fold one latency sample into the estimate: a slower sample is taken at once."""
        rtt = max(rtt, 0.0)
        if not entry.measured:
            entry.ewma = rtt
            entry.ewma_at = now
            entry.measured = True
            return
        elapsed = max(now - entry.ewma_at, 0.0)
        keep = math.exp(-elapsed / self.decay)
        decayed = entry.ewma * keep
        if rtt > decayed:
            entry.ewma = rtt
        elif peak_only:
            return
        else:
            entry.ewma = decayed + (1.0 - keep) * rtt
        entry.ewma_at = now
