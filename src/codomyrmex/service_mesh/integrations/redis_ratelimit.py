"""A fleet-wide rate limit through Redis: GCRA in one Lua script, one round trip per call.

    limiter = RedisRateLimiter("redis://cache:6379/0", "payments-api", rate=500, burst=50)
    proxy = ServiceProxy("payments", rate_limit=limiter)   # every process shares 500/s

Every process that builds a limiter of the same ``name`` (and ``prefix``) draws on
one budget: ``rate`` units per second on average, ``burst`` at once. The state is
one key holding the theoretical arrival time (see
:class:`~codomyrmex.service_mesh.limits.RateLimiter`), read and moved by one Lua
script on Redis' own clock (``TIME``), so the fleet's processes need no synchronised
clocks and no count is lost between them. Each call is one ``EVAL``: one round trip,
nothing batched, nothing in the background. A refusal takes nothing and says how
long to wait (``LimitExceededError.retry_after`` in a proxy).

Key (``prefix`` defaults to ``"mesh:"``; it expires once idle for as long as a
full burst takes to refill)::

    {prefix}rl:{<name>}    string: theoretical arrival time, microseconds of Redis TIME

**Outages.** As with the breaker store (:mod:`.redis`): when Redis cannot be
reached or answers slower than ``socket_timeout``, one WARNING is logged, calls never
fail because of Redis, and ``on_outage`` decides: ``"local"`` (default) limits each
process on its own with ``local_rate`` and ``local_burst`` (default ``rate`` and
``burst``: give each process its share), ``"fail_open"``
admits every call, ``"fail_closed"`` refuses every call. Redis is not asked again
until ``reconnect_interval`` has passed (so an outage costs one timeout per interval,
not one per call); the first answer ends the outage.

Async callers: pass ``async_client`` (a ``redis.asyncio`` client) and
:meth:`RedisRateLimiter.try_acquire_async` awaits it; without one, the synchronous
call runs in the default executor so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ._extras import missing_extra

try:
    import redis
    import redis.asyncio
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisError, ResponseError
except ImportError as exc:
    raise missing_extra(__name__, "redis", exc) from exc

from .._validate import check_callable, check_number, check_str
from ..errors import LimitExceededError
from ..limits import RateLimiter
from .redis.connection import OutageMode, check_outage_mode, check_prefix, make_client
from .redis.scripts import lua_source

__all__ = ["OutageMode", "RedisRateLimiter"]

logger = logging.getLogger("codomyrmex.service_mesh.redis")

_GCRA = lua_source("gcra")


class RedisRateLimiter:
    """``rate`` units per second, ``burst`` at once, shared by every process using ``name``.

    A :class:`~codomyrmex.service_mesh.limits.RateLimit`: pass it as
    ``ServiceProxy(..., rate_limit=...)``, or call :meth:`try_acquire` / :meth:`acquire`.
    ``clock`` times only the outage back-off (``reconnect_interval``) and the local
    fallback; the budget itself runs on Redis' clock.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster | str,
        name: str,
        rate: float,
        burst: float = 1.0,
        *,
        prefix: str = "mesh:",
        on_outage: OutageMode = "local",
        local_rate: float | None = None,
        local_burst: float | None = None,
        reconnect_interval: float = 0.5,
        socket_timeout: float = 0.25,
        async_client: redis.asyncio.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = check_str("name", name)
        if check_number("rate", rate, 0.0) <= 0.0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        if check_number("burst", burst, 0.0) < 1.0:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.prefix = check_prefix(prefix)
        self.on_outage: OutageMode = check_outage_mode(on_outage)
        self.reconnect_interval = check_number("reconnect_interval", reconnect_interval, 0.0)
        timeout = check_number("socket_timeout", socket_timeout, 0.001)
        self._own_client = isinstance(client, str)
        self.client = make_client(client, timeout)
        if async_client is not None and not isinstance(async_client, redis.asyncio.Redis):
            raise TypeError(f"async_client must be a redis.asyncio.Redis, got {async_client!r}")
        self.async_client = async_client
        self.clock = check_callable("clock", clock)
        self.key = f"{prefix}rl:{{{name}}}"
        self._interval_us = 1e6 / self.rate
        self._args = (repr(self._interval_us), repr(self._interval_us * self.burst))
        self.local = RateLimiter(
            self.rate if local_rate is None else local_rate,
            self.burst if local_burst is None else local_burst,
            name=name,
            clock=clock,
        )
        """The per-process limiter used during an outage with ``on_outage="local"``."""
        self._lock = threading.Lock()
        self._retry_at: float | None = None  # set during an outage: when to ask Redis again

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter({self.name!r}, rate={self.rate}, burst={self.burst}, "
            f"online={self.online})"
        )

    def describe(self) -> str:
        """A label for ``ServiceProxy.describe()``."""
        return f"rate limit({self.rate:g}/s, burst={self.burst:g}, fleet-wide via Redis)"

    @property
    def online(self) -> bool:
        """False from a failed round trip until Redis answers again."""
        return self._retry_at is None

    # -- one decision, two kinds of I/O ----------------------------------------------

    def _checked(self, cost: float) -> str:
        if check_number("cost", cost, 0.0) > self.burst:
            raise ValueError(f"cost must be <= burst ({self.burst:g}), got {cost!r}")
        return repr(float(cost))

    def _offline(self) -> bool:
        """Whether to skip Redis now (an outage, and not yet time to ask again)."""
        retry_at = self._retry_at
        return retry_at is not None and self.clock() < retry_at

    def _fallback(self, cost: float) -> float:
        if self.on_outage == "fail_open":
            return 0.0
        if self.on_outage == "fail_closed":
            retry_at = self._retry_at
            return max(1e-3, (retry_at or 0.0) - self.clock())
        return self.local.try_acquire(cost)

    def _failed(self, error: Exception) -> None:
        with self._lock:
            first = self._retry_at is None
            self._retry_at = self.clock() + self.reconnect_interval
        if first:
            logger.warning(
                "rate limiter %r: Redis unavailable (%s: %s); on_outage=%r until it returns",
                self.name,
                type(error).__name__,
                error,
                self.on_outage,
                extra={"redis_outage": True},
            )

    def _answered(self, reply: Any) -> float:
        if self._retry_at is not None:
            with self._lock:
                self._retry_at = None
            logger.info("rate limiter %r: Redis is back", self.name)
        taken, wait = reply
        return 0.0 if int(taken) else int(wait) / 1e6

    # -- the rate-limit protocol -------------------------------------------------------

    def try_acquire(self, cost: float = 1.0) -> float:
        """Take ``cost`` units of the fleet's budget and return 0.0, or take none and
        return the seconds until they would be admitted. One round trip."""
        units = "1.0" if cost == 1.0 else self._checked(cost)
        if self._offline():
            return self._fallback(cost)
        try:
            reply = self.client.eval(_GCRA, 1, self.key, *self._args, units)
        except ResponseError:
            raise  # a script error is a bug, not an outage
        except RedisError as error:
            self._failed(error)
            return self._fallback(cost)
        return self._answered(reply)

    async def try_acquire_async(self, cost: float = 1.0) -> float:
        """The async twin of :meth:`try_acquire` (awaits ``async_client``, else a thread)."""
        client = self.async_client
        if client is None:
            return await asyncio.get_running_loop().run_in_executor(None, self.try_acquire, cost)
        units = "1.0" if cost == 1.0 else self._checked(cost)
        if self._offline():
            return self._fallback(cost)
        try:
            reply = await client.eval(_GCRA, 1, self.key, *self._args, units)
        except ResponseError:
            raise
        except (RedisError, OSError) as error:
            self._failed(error)
            return self._fallback(cost)
        return self._answered(reply)

    def acquire(self, cost: float = 1.0) -> None:
        """Take ``cost`` units or raise :class:`LimitExceededError` with ``retry_after``."""
        wait = self.try_acquire(cost)
        if wait > 0.0:
            raise LimitExceededError(self.name, "rate_limit", self.rate, wait)

    async def acquire_async(self, cost: float = 1.0) -> None:
        """The async twin of :meth:`acquire`."""
        wait = await self.try_acquire_async(cost)
        if wait > 0.0:
            raise LimitExceededError(self.name, "rate_limit", self.rate, wait)

    def close(self) -> None:
        """Close the client this limiter made from a URL (never one passed in)."""
        if self._own_client:
            self.client.close()
