"""Overload protection: adaptive concurrency limits and rate limiting (standard library only).

- :class:`ConcurrencyLimiter` admits a call while fewer than its limit are in flight;
  the limit comes from an algorithm -- :class:`AIMDLimit`, :class:`VegasLimit`,
  :class:`Gradient2Limit` (Netflix concurrency-limits' semantics and parameter
  names) or :class:`FixedLimit` -- fed one RTT sample per finished call.
- :class:`RateLimiter` is GCRA (a token bucket as one number): ``rate`` per second,
  ``burst`` at once, thread- and async-safe, on an injected clock.

Both refuse with :class:`~codomyrmex.service_mesh.LimitExceededError`, a
:class:`~codomyrmex.service_mesh.ServiceMeshError` that the default retry policy
does not retry. In a proxy: ``ServiceProxy(..., rate_limit=RateLimiter(...),
concurrency_limit=ConcurrencyLimiter(VegasLimit()))``; the stages run right inside
the fallback: ``fallback -> rate limit -> concurrency limit -> bulkhead -> retry ...``.
"""

from ..errors import LimitExceededError
from .algorithms import AIMDLimit, FixedLimit, Gradient2Limit, Limit, VegasLimit, WindowedLimit
from .limiter import ConcurrencyLimiter, Permit
from .rate import RateLimit, RateLimiter
from .stage import Admission, admission

__all__ = [
    "AIMDLimit",
    "Admission",
    "ConcurrencyLimiter",
    "FixedLimit",
    "Gradient2Limit",
    "Limit",
    "LimitExceededError",
    "Permit",
    "RateLimit",
    "RateLimiter",
    "VegasLimit",
    "WindowedLimit",
    "admission",
]
