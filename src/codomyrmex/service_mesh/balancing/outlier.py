"""Passive outlier detection: eject instances whose calls keep failing, return them later.

Envoy's semantics. Every call a load balancer hands out reports its outcome;
``consecutive_failures`` failures in a row (or, optionally, a failure rate of at
least ``failure_rate_threshold`` percent over ``interval`` seconds) eject the
instance for ``base_ejection_time x multiplier`` seconds, capped at
``max_ejection_time``. The multiplier grows by one per ejection and shrinks by
one for every ``interval`` the instance stays in service, starting
``base_ejection_time`` after its return. At most ``max_ejection_percent`` of
the instances are ejected at once, but one instance may always be -- unless it
is the only one: a sole instance is never ejected (there is nowhere else to go).

Load balancers detect outliers by default, with :data:`DEFAULT_OUTLIER_DETECTION`
(five failures in a row, at most half of the pool out); pass
``outlier_detection=None`` to turn it off.

Failure-rate ejection applies only while at least ``failure_rate_minimum_hosts``
instances have had ``failure_rate_minimum_calls`` calls in their window.
Success-rate ejection (``success_rate_stdev_factor``) runs once per
``interval``: among the instances with at least ``success_rate_request_volume``
calls in it, if there are ``success_rate_minimum_hosts`` of them, those whose
success rate is below ``mean - stdev_factor x stdev`` are ejected. An ejection's
end is also put on the balancer's timer, so the instance returns (and
``InstanceReturned`` is published) even while no call comes.

The detector keeps the per-instance state and decides; the load balancer owns
the lock, applies the decisions (an ejected instance is not picked) and
publishes :class:`~codomyrmex.service_mesh.events.InstanceEjected` and
:class:`~codomyrmex.service_mesh.events.InstanceReturned` events.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from .._validate import check_int, check_number
from ._checks import check_percent, check_positive

__all__ = ["DEFAULT_OUTLIER_DETECTION", "OutlierDetectionConfig", "OutlierDetector"]

logger = logging.getLogger("codomyrmex.service_mesh")

CONSECUTIVE_FAILURES = "consecutive_failures"
FAILURE_RATE = "failure_rate"
SUCCESS_RATE = "success_rate"
EJECTION_TIME_ELAPSED = "ejection_time_elapsed"


@dataclass(frozen=True, slots=True)
class OutlierDetectionConfig:
    """When an instance is ejected, for how long, and how many may be out at once.

    Defaults are Envoy's. Failures are the calls that raised an ``Exception``
    other than the mesh's own rejections (a breaker refusing a call is not the
    instance's fault); ``failure_predicate`` narrows that (e.g. to 5xx errors).
    """

    consecutive_failures: int | None = 5
    """Failures in a row that eject an instance; None disables this check."""
    interval: float = 10.0
    """Seconds of the failure-rate window, and of each step of the multiplier's decay."""
    base_ejection_time: float = 30.0
    """Seconds of the first ejection; later ones last ``base x multiplier``."""
    max_ejection_time: float = 300.0
    """Longest ejection in seconds (``base_ejection_time`` if that is longer)."""
    max_ejection_percent: float = 10.0
    """Most instances (percent of those registered) ejected at once; one may always be."""
    failure_rate_threshold: float | None = None
    """Failure percentage over ``interval`` that ejects an instance; None disables it."""
    failure_rate_minimum_calls: int = 50
    """Calls an instance must have had in the window before its failure rate is judged."""
    failure_predicate: Callable[[BaseException], bool] | None = None
    """If set, decides whether an exception counts as a failure (False: a success)."""
    failure_rate_minimum_hosts: int = 5
    """Instances that must have ``failure_rate_minimum_calls`` calls in their window before
    failure-rate ejection applies (Envoy's ``failure_percentage_minimum_hosts``)."""
    success_rate_stdev_factor: float | None = None
    """Eject instances whose success rate over an ``interval`` is below ``mean -
    factor x stdev`` of the instances' rates (Envoy's 1.9, i.e. 1900 / 1000); None: off."""
    success_rate_minimum_hosts: int = 5
    """Instances with ``success_rate_request_volume`` calls in the interval needed to judge."""
    success_rate_request_volume: int = 100
    """Calls an instance must have had in the interval to take part in success-rate ejection."""

    def __post_init__(self) -> None:
        if self.consecutive_failures is not None:
            check_int("consecutive_failures", self.consecutive_failures, 1)
        check_positive("interval", self.interval)
        check_positive("base_ejection_time", self.base_ejection_time)
        check_number("max_ejection_time", self.max_ejection_time, 0.0)
        check_percent("max_ejection_percent", self.max_ejection_percent)
        if self.failure_rate_threshold is not None:
            check_percent("failure_rate_threshold", self.failure_rate_threshold, allow_zero=False)
        check_int("failure_rate_minimum_calls", self.failure_rate_minimum_calls, 1)
        if self.failure_predicate is not None and not callable(self.failure_predicate):
            raise TypeError(f"failure_predicate must be callable, got {self.failure_predicate!r}")
        check_int("failure_rate_minimum_hosts", self.failure_rate_minimum_hosts, 1)
        if self.success_rate_stdev_factor is not None:
            check_number("success_rate_stdev_factor", self.success_rate_stdev_factor, 0.0)
        check_int("success_rate_minimum_hosts", self.success_rate_minimum_hosts, 1)
        check_int("success_rate_request_volume", self.success_rate_request_volume, 1)
        if (
            self.consecutive_failures is None
            and self.failure_rate_threshold is None
            and self.success_rate_stdev_factor is None
        ):
            raise ValueError(
                "outlier detection needs consecutive_failures, failure_rate_threshold or "
                "success_rate_stdev_factor, all are None"
            )


DEFAULT_OUTLIER_DETECTION = OutlierDetectionConfig(
    consecutive_failures=5, max_ejection_percent=50.0
)
"""What a :class:`~codomyrmex.service_mesh.balancing.LoadBalancer` uses unless told
otherwise: five failures in a row eject an instance for 30 s (longer each time), and
at most half of the pool is out at once, so one bad instance of three is routed around."""


class HostState:
    """One instance's outlier bookkeeping (read-only outside the detector)."""

    __slots__ = (
        "calls",
        "consecutive",
        "ejected",
        "ejected_until",
        "failures",
        "instance_id",
        "multiplier",
        "returned_at",
        "sr_calls",
        "sr_successes",
        "times_ejected",
        "window_start",
    )

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.consecutive = 0
        self.window_start = -math.inf
        self.calls = 0
        self.failures = 0
        self.ejected = False
        self.ejected_until = 0.0
        self.multiplier = 0
        self.returned_at: float | None = None
        self.times_ejected = 0
        self.sr_calls = 0  # calls and successes in the current success-rate interval
        self.sr_successes = 0

    def __repr__(self) -> str:
        state = f"ejected until {self.ejected_until:g}" if self.ejected else "in service"
        return (
            f"HostState({self.instance_id!r}, {state}, consecutive={self.consecutive}, "
            f"multiplier={self.multiplier}, times_ejected={self.times_ejected})"
        )

    def _reset_counts(self) -> None:
        self.consecutive = 0
        self.window_start = -math.inf
        self.calls = 0
        self.failures = 0


class OutlierDetector:
    """The ejection state machine of one load balancer.

    Not thread-safe on its own: the load balancer calls it under its lock.
    ``next_due`` is the earliest scheduled return (``inf`` when none), so the
    balancer checks for returns with one comparison per pick.
    """

    __slots__ = (
        "_heap",
        "_hosts",
        "_judged",
        "_order",
        "config",
        "ejected_count",
        "ejections_overflow",
        "ejections_total",
        "next_due",
        "next_sweep",
    )

    def __init__(self, config: OutlierDetectionConfig) -> None:
        if not isinstance(config, OutlierDetectionConfig):
            raise TypeError(f"config must be an OutlierDetectionConfig, got {config!r}")
        self.config = config
        self._heap: list[tuple[float, int, HostState]] = []
        self._order = 0
        self.next_due = math.inf
        self.next_sweep = math.inf  # when success-rate ejection next judges (inf: not yet)
        self._hosts: dict[int, HostState] = {}
        self._judged = (-math.inf, 0)  # (when, count) of the last _judged_hosts scan
        self.ejected_count = 0
        self.ejections_total = 0
        self.ejections_overflow = 0

    def __repr__(self) -> str:
        return (
            f"OutlierDetector(ejected={self.ejected_count}, "
            f"ejections_total={self.ejections_total}, "
            f"ejections_overflow={self.ejections_overflow})"
        )

    def stats(self) -> dict[str, int]:
        """Counters: instances ejected now, ejections so far, ejections refused by the cap."""
        return {
            "ejected": self.ejected_count,
            "ejections_total": self.ejections_total,
            "ejections_overflow": self.ejections_overflow,
        }

    def is_failure(self, error: BaseException) -> bool:
        """Whether a call that raised ``error`` counts as a failure.

        A ``failure_predicate`` that raises is a bug in the predicate, not news about
        the instance nor the caller's business: it is logged, the call counts as a
        failure (it did raise), and the caller still gets its own exception.
        """
        predicate = self.config.failure_predicate
        if predicate is None:
            return True
        try:
            return bool(predicate(error))
        except Exception:
            logger.exception("outlier failure_predicate %r raised on %r", predicate, error)
            return True

    def host(self, instance_id: str) -> HostState:
        """A new instance's state, tracked until :meth:`forget`."""
        host = HostState(instance_id)
        self._hosts[id(host)] = host
        return host

    def record(self, host: HostState, failed: bool, now: float) -> str | None:
        """Count one call's outcome; return the reason to eject the instance, or None."""
        if host.ejected:
            return None  # a call that started before the ejection
        config = self.config
        if config.success_rate_stdev_factor is not None:
            host.sr_calls += 1
            if not failed:
                host.sr_successes += 1
            if self.next_sweep == math.inf:
                self.next_sweep = now + config.interval
        if failed:
            host.consecutive += 1
        else:
            host.consecutive = 0
        if config.failure_rate_threshold is not None:
            if now - host.window_start >= config.interval:
                host.window_start = now
                host.calls = 0
                host.failures = 0
                self._judged = (-math.inf, 0)
            host.calls += 1
            if host.calls == config.failure_rate_minimum_calls:
                self._judged = (-math.inf, 0)
            if failed:
                host.failures += 1
                if (
                    host.calls >= config.failure_rate_minimum_calls
                    and host.failures * 100.0 >= config.failure_rate_threshold * host.calls
                    and self._judged_hosts(now) >= config.failure_rate_minimum_hosts
                ):
                    return FAILURE_RATE
        limit = config.consecutive_failures
        if failed and limit is not None and host.consecutive >= limit:
            return CONSECUTIVE_FAILURES
        return None

    def _judged_hosts(self, now: float) -> int:
        """Instances in service with enough calls in their current failure-rate window.

        A scan of every instance, so its count is reused until an instance reaches
        the minimum calls, a window starts over, an ejection begins or ends, or a
        tenth of ``interval`` has passed (windows also run out with no call).
        """
        config = self.config
        when, count = self._judged
        if 0.0 <= now - when < config.interval / 10.0:
            return count
        count = sum(
            1
            for h in self._hosts.values()
            if not h.ejected
            and now - h.window_start < config.interval
            and h.calls >= config.failure_rate_minimum_calls
        )
        self._judged = (now, count)
        return count

    def sweep(self, now: float) -> list[HostState]:
        """End a success-rate interval: the instances to eject for their low success rate.

        Envoy's rule: among the instances in service with at least
        ``success_rate_request_volume`` calls in the interval, if there are
        ``success_rate_minimum_hosts`` of them, those whose success rate is below
        ``mean - success_rate_stdev_factor x stdev`` (population stdev).
        """
        config = self.config
        factor = config.success_rate_stdev_factor
        if factor is None:
            self.next_sweep = math.inf
            return []
        self.next_sweep = now + config.interval
        judged: list[tuple[HostState, float]] = []
        for h in self._hosts.values():
            if not h.ejected and h.sr_calls >= config.success_rate_request_volume:
                judged.append((h, h.sr_successes * 100.0 / h.sr_calls))
            h.sr_calls = 0
            h.sr_successes = 0
        if len(judged) < config.success_rate_minimum_hosts:
            return []
        rates = [rate for _, rate in judged]
        mean = math.fsum(rates) / len(rates)
        stdev = math.sqrt(math.fsum((r - mean) ** 2 for r in rates) / len(rates))
        threshold = mean - factor * stdev
        return [h for h, rate in judged if rate < threshold]

    def may_eject(self, instances: int) -> bool:
        """Whether one more ejection stays within ``max_ejection_percent`` of ``instances``.

        The first ejection is always allowed, except of a sole instance.
        """
        ejected = self.ejected_count
        if ejected == 0:
            return instances > 1
        return (ejected + 1) * 100.0 <= self.config.max_ejection_percent * instances

    def eject(self, host: HostState, now: float) -> float:
        """Eject ``host`` from ``now``; return how many seconds it stays out."""
        config = self.config
        base = config.base_ejection_time
        multiplier = host.multiplier
        if host.returned_at is not None and multiplier > 0:
            served = now - host.returned_at
            if served >= base:
                multiplier = max(0, multiplier - 1 - int((served - base) // config.interval))
        if multiplier * base < config.max_ejection_time:
            multiplier += 1
        host.multiplier = multiplier
        duration = min(base * multiplier, max(config.max_ejection_time, base))
        host.ejected = True
        self._judged = (-math.inf, 0)
        host.ejected_until = now + duration
        host.times_ejected += 1
        host._reset_counts()
        self.ejected_count += 1
        self.ejections_total += 1
        self._order += 1
        heapq.heappush(self._heap, (host.ejected_until, self._order, host))
        self.next_due = self._heap[0][0]
        return duration

    def refused(self) -> None:
        """Count an ejection the ``max_ejection_percent`` cap did not allow."""
        self.ejections_overflow += 1

    def pop_due(self, now: float) -> list[HostState]:
        """Return to service every host whose ejection has ended by ``now``; return them."""
        heap = self._heap
        back: list[HostState] = []
        while heap and heap[0][0] <= now:
            until, _, host = heapq.heappop(heap)
            if host.ejected and host.ejected_until == until:
                host.ejected = False
                self._judged = (-math.inf, 0)
                host.returned_at = until
                host._reset_counts()
                self.ejected_count -= 1
                back.append(host)
        self.next_due = heap[0][0] if heap else math.inf
        return back

    def forget(self, host: HostState) -> None:
        """Drop a deregistered instance (it no longer counts as ejected)."""
        self._hosts.pop(id(host), None)
        self._judged = (-math.inf, 0)
        if host.ejected:
            host.ejected = False
            self.ejected_count -= 1
