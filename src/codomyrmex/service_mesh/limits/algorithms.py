"""Adaptive concurrency limit algorithms: AIMD, Vegas and Gradient2.

Each follows the semantics and the parameter names (in snake case) of Netflix's
concurrency-limits library, so its tuning advice carries over:

- :class:`AIMDLimit` (``initialLimit``, ``minLimit``, ``maxLimit``, ``backoffRatio``,
  ``timeout``): +1 while at least half the limit is in use, times ``backoff_ratio``
  on a drop or a sample slower than ``timeout``;
- :class:`VegasLimit` (``initialLimit``, ``maxConcurrency``, ``smoothing``,
  ``alpha``/``beta``/``threshold``/``increase``/``decrease`` functions,
  ``probeMultiplier``): estimates the queue as ``limit * (1 - rtt_noload / rtt)``
  and keeps it between ``alpha`` and ``beta``; re-probes ``rtt_noload`` now and then;
- :class:`WindowedLimit` (``minWindowTime``, ``maxWindowTime``, ``windowSize``,
  ``minRttThreshold``) wraps any of them: samples are pooled for a window and the
  algorithm sees one per window (the average RTT, the most in flight, any drop);
- :class:`Gradient2Limit` (``initialLimit``, ``minLimit``, ``maxConcurrency``,
  ``smoothing``, ``queueSize``, ``rttTolerance``, ``longWindow``): compares each
  sample's RTT with a long exponential average and scales the limit by the
  gradient, plus a ``queue_size`` allowance.

An algorithm sees one sample per finished call -- ``on_sample(start, rtt, in_flight,
dropped)`` with ``in_flight`` the number running when the call started -- and its
``limit`` is the current concurrency limit. Every update is O(1). Algorithms are not
locked themselves: :class:`~codomyrmex.service_mesh.limits.ConcurrencyLimiter`
serialises the samples it feeds them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from .._validate import check_callable, check_instance, check_int, check_number

__all__ = [
    "AIMDLimit",
    "FixedLimit",
    "Gradient2Limit",
    "Limit",
    "VegasLimit",
    "WindowedLimit",
    "log10_root",
]


def log10_root(limit: int) -> int:
    """``max(1, int(log10(limit)))``: the scale Vegas's default functions use."""
    return max(1, int(math.log10(limit))) if limit >= 1 else 1


class Limit:
    """Base class: an algorithm that sets the concurrency limit from RTT samples."""

    __slots__ = ()

    @property
    def limit(self) -> int:
        """The current concurrency limit (at least 1)."""
        raise NotImplementedError

    def on_sample(self, start: float, rtt: float, in_flight: int, dropped: bool) -> int:
        """A call that started at ``start`` with ``in_flight`` calls running (itself
        included) took ``rtt`` seconds; ``dropped``: it timed out or was shed downstream.
        Returns the limit after the sample (what :attr:`limit` reads)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short label with the main parameters (for ``ServiceProxy.describe()``)."""
        return type(self).__name__


class FixedLimit(Limit):
    """A limit that never changes (a bulkhead that rejects at once)."""

    __slots__ = ("_limit",)

    def __init__(self, limit: int) -> None:
        self._limit = check_int("limit", limit, 1)

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, start: float, rtt: float, in_flight: int, dropped: bool) -> int:
        return self._limit

    def describe(self) -> str:
        return f"fixed {self._limit}"

    def __repr__(self) -> str:
        return f"FixedLimit({self._limit})"


def _check_bounds(initial: int, minimum: int, maximum: int, max_name: str) -> tuple[int, int]:
    """``(minimum, maximum)``, all three whole numbers >= 1 with ``initial`` between them."""
    check_int("initial_limit", initial, 1)
    check_int("min_limit", minimum, 1)
    check_int(max_name, maximum, 1)
    if minimum > maximum:
        raise ValueError(f"min_limit must be <= {max_name}, got {minimum!r} > {maximum!r}")
    if not minimum <= initial <= maximum:
        raise ValueError(
            f"initial_limit must be between min_limit and {max_name}, got {initial!r} "
            f"(min_limit={minimum!r}, {max_name}={maximum!r})"
        )
    return minimum, maximum


class AIMDLimit(Limit):
    """Additive increase, multiplicative decrease.

    On a sample that was dropped or slower than ``timeout`` seconds the limit becomes
    ``int(limit * backoff_ratio)``; otherwise, when at least half the limit was in
    flight (``in_flight * 2 >= limit``: the limit is really being used), it grows by
    one. Always kept within ``[min_limit, max_limit]``. Defaults are concurrency-limits'.
    """

    __slots__ = ("_limit", "backoff_ratio", "max_limit", "min_limit", "timeout")

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 20,
        max_limit: int = 200,
        backoff_ratio: float = 0.9,
        timeout: float = 5.0,
    ) -> None:
        bounds = _check_bounds(initial_limit, min_limit, max_limit, "max_limit")
        self.min_limit, self.max_limit = bounds
        ratio = check_number("backoff_ratio", backoff_ratio, 0.5)
        if ratio >= 1.0:
            raise ValueError(f"backoff_ratio must be in [0.5, 1.0), got {backoff_ratio!r}")
        self.backoff_ratio = ratio
        if check_number("timeout", timeout, 0.0) <= 0.0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self._limit = initial_limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, start: float, rtt: float, in_flight: int, dropped: bool) -> int:
        limit = self._limit
        if dropped or rtt > self.timeout:
            limit = int(limit * self.backoff_ratio)
        elif in_flight * 2 >= limit:
            limit += 1
        else:
            return limit
        limit = self._limit = min(self.max_limit, max(self.min_limit, limit))
        return limit

    def describe(self) -> str:
        return f"AIMD backoff_ratio={self.backoff_ratio:g} timeout={self.timeout:g}s"

    def __repr__(self) -> str:
        return (
            f"AIMDLimit(limit={self._limit}, min_limit={self.min_limit}, "
            f"max_limit={self.max_limit}, backoff_ratio={self.backoff_ratio}, "
            f"timeout={self.timeout})"
        )


LimitFunction = Callable[[int], float]
"""A Vegas threshold or step: a function of the current (integer) limit."""


def _alpha(limit: int) -> float:
    return 3 * log10_root(limit)


def _beta(limit: int) -> float:
    return 6 * log10_root(limit)


def _threshold(limit: int) -> float:
    return log10_root(limit)


def _increase(limit: int) -> float:
    return limit + log10_root(limit)


def _decrease(limit: int) -> float:
    return limit - log10_root(limit)


class VegasLimit(Limit):
    """TCP Vegas applied to concurrency: keep a small, estimated queue at the server.

    ``rtt_noload`` is the lowest RTT seen (re-sampled every ``probe_multiplier * limit``
    samples, with jitter from ``rng``, so it follows a server that got slower for good).
    Each sample estimates the queue as ``ceil(limit * (1 - rtt_noload / rtt))``; a drop
    applies ``decrease``; when less than half the limit is in flight nothing changes;
    otherwise a queue at most ``threshold`` grows the limit by ``beta``, one below
    ``alpha`` applies ``increase``, one above ``beta`` applies ``decrease``. The result,
    clamped to ``[1, max_concurrency]``, is blended in with ``smoothing``.

    The functions default to concurrency-limits' (``3``, ``6`` and ``1`` times
    ``log10(limit)``, and ``limit +/- log10(limit)``).
    """

    __slots__ = (
        "_bounds",
        "_bounds_for",
        "_estimate",
        "_probe_count",
        "_probe_jitter",
        "_rng",
        "alpha",
        "beta",
        "decrease",
        "increase",
        "max_concurrency",
        "probe_multiplier",
        "rtt_noload",
        "smoothing",
        "threshold",
    )

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        max_concurrency: int = 1000,
        smoothing: float = 1.0,
        alpha: LimitFunction = _alpha,
        beta: LimitFunction = _beta,
        threshold: LimitFunction = _threshold,
        increase: LimitFunction = _increase,
        decrease: LimitFunction = _decrease,
        probe_multiplier: int = 30,
        rng: random.Random | None = None,
    ) -> None:
        bounds = _check_bounds(initial_limit, 1, max_concurrency, "max_concurrency")
        self.max_concurrency = bounds[1]
        self.smoothing = _check_fraction("smoothing", smoothing)
        for field, fn in (
            ("alpha", alpha),
            ("beta", beta),
            ("threshold", threshold),
            ("increase", increase),
            ("decrease", decrease),
        ):
            check_callable(field, fn)
        self.alpha = alpha
        self.beta = beta
        self.threshold = threshold
        self.increase = increase
        self.decrease = decrease
        self.probe_multiplier = check_int("probe_multiplier", probe_multiplier, 1)
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        self._rng = rng if rng is not None else random.Random()
        self._estimate = float(initial_limit)
        self.rtt_noload = 0.0
        self._probe_count = 0
        self._probe_jitter = self._rng.uniform(0.5, 1.0)
        self._bounds_for = 0
        self._bounds = (0.0, 0.0, 0.0)

    def _thresholds(self, limit: int) -> tuple[float, float, float]:
        """(threshold, alpha, beta) at ``limit``, computed once per limit value."""
        if limit != self._bounds_for:
            self._bounds = (self.threshold(limit), self.alpha(limit), self.beta(limit))
            self._bounds_for = limit
        return self._bounds

    @property
    def limit(self) -> int:
        return int(self._estimate)

    def on_sample(self, start: float, rtt: float, in_flight: int, dropped: bool) -> int:
        limit = int(self._estimate)
        if rtt <= 0.0:
            return limit
        self._probe_count += 1
        if self._probe_jitter * self.probe_multiplier * self._estimate <= self._probe_count:
            self._probe_jitter = self._rng.uniform(0.5, 1.0)
            self._probe_count = 0
            self.rtt_noload = rtt
            return limit
        if self.rtt_noload == 0.0 or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return limit
        queue = math.ceil(limit * (1.0 - self.rtt_noload / rtt))
        if dropped:
            new = self.decrease(limit)
        elif in_flight * 2 < limit:
            return limit  # the application is not using the limit: no evidence either way
        else:
            threshold, alpha, beta = self._thresholds(limit)
            if queue <= threshold:
                new = limit + beta
            elif queue < alpha:
                new = self.increase(limit)
            elif queue > beta:
                new = self.decrease(limit)
            else:
                return limit
        new = max(1.0, min(float(self.max_concurrency), new))
        self._estimate = (1.0 - self.smoothing) * self._estimate + self.smoothing * new
        return int(self._estimate)

    def describe(self) -> str:
        return f"Vegas smoothing={self.smoothing:g}"

    def __repr__(self) -> str:
        return (
            f"VegasLimit(limit={self.limit}, rtt_noload={self.rtt_noload}, "
            f"max_concurrency={self.max_concurrency}, smoothing={self.smoothing})"
        )


def _check_fraction(field: str, value: float) -> float:
    number = check_number(field, value, 0.0)
    if not 0.0 < number <= 1.0:
        raise ValueError(f"{field} must be in (0, 1], got {value!r}")
    return number


class _ExpAverage:
    """An exponential moving average over ``window`` samples after a plain-mean warm-up."""

    __slots__ = ("count", "factor", "sum", "value", "warmup")

    def __init__(self, window: int, warmup: int) -> None:
        self.factor = 2.0 / (window + 1)
        self.warmup = warmup
        self.count = 0
        self.sum = 0.0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self.count < self.warmup:
            self.count += 1
            self.sum += sample
            self.value = self.sum / self.count
        else:
            self.value += (sample - self.value) * self.factor
        return self.value


class Gradient2Limit(Limit):
    """Concurrency-limits' Gradient2: the limit follows the ratio of a long-term RTT to
    the latest one.

    The long-term RTT is an exponential average over ``long_window`` samples (a plain
    mean over the first 10). Each sample computes
    ``gradient = clamp(rtt_tolerance * long_rtt / rtt, 0.5, 1.0)`` -- 1.0 while latency
    stays within ``rtt_tolerance`` of normal, down to 0.5 when it has more than doubled
    -- and moves the limit ``smoothing`` of the way to ``limit * gradient + queue_size``,
    clamped to ``[min_limit, max_concurrency]``. While less than half the limit is in
    flight the limit does not change. When the long-term RTT is more than twice the
    latest sample (load has gone) it decays by 5% per sample, so the limit recovers
    without waiting for the average. ``queue_size`` is a number or a function of the limit.
    """

    __slots__ = (
        "_estimate",
        "_long",
        "last_rtt",
        "long_window",
        "max_concurrency",
        "min_limit",
        "queue_size",
        "rtt_tolerance",
        "smoothing",
    )

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 20,
        max_concurrency: int = 200,
        smoothing: float = 0.2,
        queue_size: int | Callable[[int], float] = 4,
        rtt_tolerance: float = 1.5,
        long_window: int = 600,
    ) -> None:
        bounds = _check_bounds(initial_limit, min_limit, max_concurrency, "max_concurrency")
        self.min_limit, self.max_concurrency = bounds
        self.smoothing = _check_fraction("smoothing", smoothing)
        if callable(queue_size):
            self.queue_size: Callable[[int], float] = queue_size
        else:
            fixed = check_int("queue_size", queue_size, 0)
            self.queue_size = lambda limit: fixed
        self.rtt_tolerance = check_number("rtt_tolerance", rtt_tolerance, 1.0)
        self.long_window = check_int("long_window", long_window, 1)
        self._long = _ExpAverage(long_window, 10)
        self._estimate = float(initial_limit)
        self.last_rtt = 0.0

    @property
    def limit(self) -> int:
        return int(self._estimate)

    @property
    def long_rtt(self) -> float:
        """The long-term average RTT (0.0 before the first sample)."""
        return self._long.value

    def on_sample(self, start: float, rtt: float, in_flight: int, dropped: bool) -> int:
        estimate = self._estimate
        if rtt <= 0.0:
            return int(estimate)
        queue = self.queue_size(int(estimate))
        self.last_rtt = rtt
        long_rtt = self._long.add(rtt)
        if long_rtt / rtt > 2.0:
            self._long.value *= 0.95  # load has gone: let the baseline come down sooner
        if in_flight < estimate / 2.0:
            return int(estimate)
        gradient = max(0.5, min(1.0, self.rtt_tolerance * long_rtt / rtt))
        new = estimate * gradient + queue
        new = estimate * (1.0 - self.smoothing) + new * self.smoothing
        estimate = self._estimate = max(
            float(self.min_limit), min(float(self.max_concurrency), new)
        )
        return int(estimate)

    def describe(self) -> str:
        return f"Gradient2 rtt_tolerance={self.rtt_tolerance:g} long_window={self.long_window}"

    def __repr__(self) -> str:
        return (
            f"Gradient2Limit(limit={self.limit}, long_rtt={self.long_rtt}, "
            f"min_limit={self.min_limit}, max_concurrency={self.max_concurrency}, "
            f"smoothing={self.smoothing}, rtt_tolerance={self.rtt_tolerance})"
        )


class WindowedLimit(Limit):
    """Feed ``delegate`` one sample per window instead of one per call.

    Samples faster than ``min_rtt_threshold`` are discarded. A window closes with
    the first sample that ends after its deadline; the deadline is set, when the
    previous window closes, to ``clamp(2 * its lowest RTT, min_window_time,
    max_window_time)`` later. A window with at least ``window_size`` samples is passed
    on as one sample: its average RTT, the highest in-flight count and whether any
    call dropped. Per-call algorithms then adapt per round trip, as TCP does, rather
    than per call (AIMD's +1 per call would otherwise grow the limit by the limit
    every round trip). Defaults are concurrency-limits' (1 s windows, 10 samples).
    """

    __slots__ = (
        "_count",
        "_deadline",
        "_dropped",
        "_last",
        "_max_in_flight",
        "_min_rtt",
        "_sum",
        "delegate",
        "max_window_time",
        "min_rtt_threshold",
        "min_window_time",
        "window_size",
    )

    def __init__(
        self,
        delegate: Limit,
        *,
        min_window_time: float = 1.0,
        max_window_time: float = 1.0,
        window_size: int = 10,
        min_rtt_threshold: float = 0.0001,
    ) -> None:
        check_instance("delegate", delegate, Limit)
        self.delegate = delegate
        if check_number("min_window_time", min_window_time, 0.0) <= 0.0:
            raise ValueError(f"min_window_time must be > 0, got {min_window_time!r}")
        if check_number("max_window_time", max_window_time, 0.0) < min_window_time:
            raise ValueError(
                f"max_window_time must be >= min_window_time, got {max_window_time!r} "
                f"< {min_window_time!r}"
            )
        self.min_window_time = float(min_window_time)
        self.max_window_time = float(max_window_time)
        self.window_size = check_int("window_size", window_size, 1)
        self.min_rtt_threshold = check_number("min_rtt_threshold", min_rtt_threshold, 0.0)
        self._deadline = -math.inf
        self._last = delegate.limit
        self._reset()

    def _reset(self) -> None:
        self._count = 0
        self._sum = 0.0
        self._min_rtt = math.inf
        self._max_in_flight = 0
        self._dropped = False

    @property
    def limit(self) -> int:
        return self._last

    def on_sample(self, start: float, rtt: float, in_flight: int, dropped: bool) -> int:
        if rtt < self.min_rtt_threshold:
            return self._last
        self._count += 1
        self._sum += rtt
        self._min_rtt = min(self._min_rtt, rtt)
        self._max_in_flight = max(self._max_in_flight, in_flight)
        self._dropped = self._dropped or dropped
        end = start + rtt
        if end <= self._deadline:
            return self._last
        count, total, lowest = self._count, self._sum, self._min_rtt
        most, drop = self._max_in_flight, self._dropped
        self._reset()
        self._deadline = end + min(max(2.0 * lowest, self.min_window_time), self.max_window_time)
        if count >= self.window_size:
            self._last = self.delegate.on_sample(start, total / count, most, drop)
        return self._last

    def describe(self) -> str:
        return f"{self.delegate.describe()} windowed {self.min_window_time:g}s"

    def __repr__(self) -> str:
        return (
            f"WindowedLimit({self.delegate!r}, min_window_time={self.min_window_time}, "
            f"max_window_time={self.max_window_time}, window_size={self.window_size})"
        )
