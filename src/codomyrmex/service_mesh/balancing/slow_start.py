"""Slow start: a newly registered or newly healthy instance takes its share gradually."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._checks import check_percent, check_positive

if TYPE_CHECKING:
    from .pool import Entry

__all__ = ["SlowStart", "SlowStartConfig"]

_TRIES = 32  # picks a thinned pick makes before it keeps the last one


@dataclass(frozen=True, slots=True)
class SlowStartConfig:
    """Ramp a newly registered or newly healthy instance's weight up over ``window`` seconds.

    Envoy's formula: the effective weight is ``weight * max(min_weight_percent / 100,
    (elapsed / window) ** (1 / aggression))``. Applies to ROUND_ROBIN, RANDOM,
    WEIGHTED, POWER_OF_TWO and PEAK_EWMA: a pick of a ramping instance is kept
    with the probability of that factor (else the strategy picks again), so its
    share grows with the factor whether or not it wins comparisons. The hash
    strategies keep key affinity and LEAST_CONNECTIONS keeps its exact minimum.
    """

    window: float
    """Seconds until an instance takes its full share."""
    aggression: float = 1.0
    """1.0 ramps linearly; larger values ramp faster at the start."""
    min_weight_percent: float = 10.0
    """The share (percent of the full weight) an instance starts from."""

    def __post_init__(self) -> None:
        check_positive("window", self.window)
        check_positive("aggression", self.aggression)
        check_percent("min_weight_percent", self.min_weight_percent, allow_zero=False)

    def factor(self, elapsed: float) -> float:
        """The fraction of its weight an instance has ``elapsed`` seconds into its ramp."""
        if elapsed >= self.window:
            return 1.0
        ramp: float = (max(elapsed, 0.0) / self.window) ** (1.0 / self.aggression)
        return max(self.min_weight_percent / 100.0, ramp)


@dataclass(frozen=True, slots=True)
class SlowStart:
    """Thins a strategy's picks of ramping instances (internal API; lock held).

    :meth:`pick` is the strategy's pick (``base``) with the ramp applied: a pick
    of an instance whose ramp is under way (``Entry.ramp_start``) is kept with
    the chance of its ramp factor (``draw() < factor``), else ``base`` picks again.
    """

    config: SlowStartConfig
    base: Callable[[], Entry | None]
    clock: Callable[[], float]
    draw: Callable[[], float]

    def pick(self) -> Entry | None:
        """The strategy's pick; a ramping instance is kept with the chance of its ramp factor."""
        pick = self.base
        entry = pick()
        if entry is None or entry.ramp_start is None:
            return entry
        now = self.clock()
        for _ in range(_TRIES):
            if entry.ramp_start is None or self.draw() < self._ramp(entry, now):
                return entry
            retry = pick()
            if retry is None:
                break
            entry = retry
        return entry

    def _ramp(self, entry: Entry, now: float) -> float:
        """The slow-start factor of ``entry`` at ``now`` (ending its ramp when complete)."""
        start = entry.ramp_start
        if start is None:
            return 1.0
        factor = self.config.factor(now - start)
        if factor >= 1.0:
            entry.ramp_start = None
        return factor
