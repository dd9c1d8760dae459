"""The Redis connection of the store and the registry: the client, outages and background threads.

Internal API of the Redis integration (:mod:`.store` and :mod:`.registry` use it):
one :class:`Backend` per store or registry tracks whether Redis answers, logs one
WARNING per outage, runs the ``on_outage`` handler, and keeps two threads: a
pub/sub listener and a monitor that does the periodic work while Redis answers
and retries ``on_reconnect`` every ``reconnect_interval`` while it does not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from .._extras import missing_extra

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisError
    from redis.retry import Retry
except ImportError as exc:
    raise missing_extra("codomyrmex.service_mesh.integrations.redis", "redis", exc) from exc

__all__ = [
    "Backend",
    "BackendOwner",
    "OutageMode",
    "RedisClient",
    "Unavailable",
    "check_outage_mode",
    "check_prefix",
    "logger",
    "make_client",
    "text",
]

RedisClient = redis.Redis | RedisCluster
"""A redis-py client: ``redis.Redis`` (also from ``Sentinel.master_for``) or ``RedisCluster``."""

OutageMode = Literal["local", "fail_open", "fail_closed"]

T = TypeVar("T")

logger = logging.getLogger("codomyrmex.service_mesh.redis")


class Unavailable(Exception):
    """Redis could not be used for one operation (already logged and accounted for)."""


def make_client(client: RedisClient | str, socket_timeout: float) -> RedisClient:
    """``client`` itself, or for a URL a client that gives up after ``socket_timeout``."""
    if isinstance(client, str):
        return redis.Redis.from_url(
            client,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
    if not isinstance(client, (redis.Redis, RedisCluster)):
        raise TypeError(f"client must be a redis URL, redis.Redis or RedisCluster, got {client!r}")
    return client


def text(value: Any) -> str:
    """A reply from Redis (bytes unless the client decodes) as a str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def check_prefix(prefix: Any) -> str:
    """A key prefix, checked to be a str."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r}")
    return prefix


def check_outage_mode(on_outage: Any) -> OutageMode:
    """``on_outage``, checked to be one of :data:`OutageMode`."""
    if on_outage not in ("local", "fail_open", "fail_closed"):
        raise ValueError(
            f"on_outage must be 'local', 'fail_open' or 'fail_closed', got {on_outage!r}"
        )
    return cast(OutageMode, on_outage)


@dataclass(eq=False, kw_only=True)
class Backend:
    """One client, whether Redis is reachable, and the two threads that use it.

    The listener thread delivers pub/sub messages; the monitor thread runs
    ``on_tick`` every ``tick_interval`` while Redis is reachable and, while it is
    not, retries ``on_reconnect`` every ``reconnect_interval``.
    """

    client: RedisClient
    channel: str
    what: str
    """Who uses the connection, for log messages: "circuit breaker store", ..."""
    on_message: Callable[[Any], None]
    on_outage: Callable[[], None]
    on_reconnect: Callable[[], None]
    on_tick: Callable[[], None]
    tick_interval: float
    reconnect_interval: float
    on_fork: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._online = True
        self._outage_since = 0.0
        self._pid = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._listening = threading.Event()
        self._resync_wanted = False
        self._threads: list[threading.Thread] = []
        ref = weakref.ref(self)

        def after_fork_in_child() -> None:
            backend = ref()
            if backend is not None:
                backend._after_fork_in_child()

        os.register_at_fork(after_in_child=after_fork_in_child)

    @property
    def online(self) -> bool:
        return self._online

    def _after_fork_in_child(self) -> None:
        """The parent's threads did not survive the fork; neither may the locks they held."""
        self._lock = threading.Lock()
        stopped = self._stop.is_set()
        self._stop = threading.Event()
        if stopped:
            self._stop.set()
        self._wake = threading.Event()
        self._listening = threading.Event()
        self._threads = []
        if self.on_fork is not None:
            self.on_fork()

    def start(self) -> None:
        """Start the threads (again after a fork); wait briefly for the first subscription."""
        if self._pid == os.getpid() or self._stop.is_set():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._listening.clear()
            self._threads = [
                threading.Thread(target=self._listen, name=f"{self.what}-listener", daemon=True),
                threading.Thread(target=self._monitor, name=f"{self.what}-monitor", daemon=True),
            ]
            for thread in self._threads:
                thread.start()
        self._listening.wait(2.0)

    def stop(self) -> None:
        """Stop the threads for good; from now on Redis counts as unreachable (no warning)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._online = False
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)

    def call(self, op: Callable[[], T]) -> T:
        """Run ``op``; a Redis error marks an outage and becomes :class:`Unavailable`."""
        try:
            return op()
        except (RedisError, OSError) as exc:
            self.failed(exc)
            raise Unavailable from exc

    def failed(self, exc: BaseException) -> None:
        """Note that Redis failed; the first failure of an outage logs one WARNING."""
        with self._lock:
            if not self._online:
                return
            self._online = False
            self._outage_since = time.monotonic()
        logger.warning(
            "%s: Redis unavailable (%s: %s); using the configured fallback until it returns",
            self.what,
            type(exc).__name__,
            exc,
            extra={"redis_outage": True},
        )
        try:
            self.on_outage()
        except Exception:
            logger.exception("%s: outage handler raised", self.what)
        self._wake.set()

    def request_resync(self) -> None:
        self._resync_wanted = True
        self._wake.set()

    def take_resync(self) -> bool:
        wanted, self._resync_wanted = self._resync_wanted, False
        return wanted

    def _listen(self) -> None:
        pubsub: Any = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub(  # type: ignore[no-untyped-call,unused-ignore]
                        ignore_subscribe_messages=True
                    )
                    pubsub.subscribe(self.channel)
                    self.request_resync()
                    self._listening.set()
                message = pubsub.get_message(timeout=0.1)
                if message is not None and message.get("type") == "message":
                    self.on_message(message["data"])
            except (RedisError, OSError) as exc:
                self._listening.set()
                if self._stop.is_set():
                    break
                pubsub = self._close_pubsub(pubsub)
                self.failed(exc)
                self._stop.wait(self.reconnect_interval)
            except Exception:
                logger.exception("%s: pub/sub message handler raised", self.what)
        self._close_pubsub(pubsub)

    @staticmethod
    def _close_pubsub(pubsub: Any) -> None:
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                logger.debug("closing a pub/sub connection failed", exc_info=True)

    def _monitor(self) -> None:
        while not self._stop.is_set():
            if not self._online:
                if self._stop.wait(self.reconnect_interval):
                    return
                if not self._guarded(self.on_reconnect, "reconciling after an outage"):
                    continue
                with self._lock:
                    if self._stop.is_set():  # closed while reconciling: stay offline
                        return
                    self._online = True
                    since = self._outage_since
                self.request_resync()  # messages dropped while reconciling
                logger.info(
                    "%s: Redis reachable again after %.1f s; state reconciled",
                    self.what,
                    time.monotonic() - since,
                )
                continue
            self._wake.wait(self.tick_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self._online:
                continue
            self._guarded(self.on_tick, "periodic work")

    def _guarded(self, work: Callable[[], None], what: str) -> bool:
        """Run background ``work``: False if Redis failed it or it raised (logged)."""
        try:
            work()
        except Unavailable:
            return False
        except Exception:
            logger.exception("%s: %s raised", self.what, what)
            return False
        return True


_Owner = TypeVar("_Owner", bound="BackendOwner")


class BackendOwner:
    """A store or registry over one :class:`Backend`: ``online`` and closing with ``with``."""

    _backend: Backend

    def __enter__(self: _Owner) -> _Owner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    @property
    def online(self) -> bool:
        """Whether Redis is reachable (False during an outage, until reconciled)."""
        return self._backend.online
