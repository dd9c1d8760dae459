"""Share circuit breakers and a service registry across processes and hosts through Redis.

    store = RedisStore("redis://cache:6379/0")
    breaker = CircuitBreaker("payments", config, store=store)

    registry = RedisRegistry("redis://cache:6379/0", ttl=10.0)
    registry.register("orders", ServiceInstance("orders-1", "10.0.0.5", 8080))
    registry.follow("orders", balancer)     # balancer tracks every process's instances

**Breakers.** Every process that binds a breaker of the same name to a store with
the same prefix shares one state. Transitions are made by Lua scripts, so N
processes open the breaker once and close it once, and no count is lost. The
store is consulted only on slow paths:

- a CLOSED success is never a round trip. A success that must reset the fleet's
  consecutive-failure count, and window-mode outcomes, are batched and sent by a
  background thread every ``flush_interval``;
- a failure is reported at once (with the batched outcomes before it) and the
  breaker adopts the fleet's answer, OPEN included;
- HALF_OPEN probes take *leases*: at most ``half_open_max_calls`` probes run across
  the fleet, and a lease lapses after ``probe_lease`` seconds, so a process that
  dies mid-probe holds its slot no longer than that;
- every fleet transition is published; each process's listener thread makes its
  breakers adopt it (about a millisecond on loopback), and a resync every
  ``resync_interval`` repairs anything pub/sub lost.

Times in Redis come from Redis ``TIME`` (wall clock of the server), never from a
process's monotonic clock. Binding a breaker only reads: it never resets or
overwrites shared state. A missing key is a fresh CLOSED breaker; a corrupt one
(wrong type, unknown state, non-numeric fields) is treated as one and logged, and
the next write repairs it. Values are plain hash fields and JSON, never pickle.

Keys (``prefix`` defaults to ``"mesh:"``; a breaker's keys share one hash tag, so
a Redis Cluster keeps them in one slot for the scripts)::

    {prefix}cb:{<name>}          hash: state, version, failures, open_until (ms), reopens, probe_ok,
                                 last_failure (ms; absent if the fleet never failed)
    {prefix}cb:{<name>}:probes   sorted set: probe lease id -> expiry (ms)
    {prefix}cb:{<name>}:window   hash: window-mode counts
    {prefix}cb:events            pub/sub channel of transitions
    {prefix}svc:{<service>}:instances   hash: instance id -> JSON
    {prefix}svc:{<service>}:deadlines   sorted set: instance id -> expiry (ms)
    {prefix}svc:events           pub/sub channel of registry changes

Every key expires when unused: breaker keys ``key_ttl`` after their last write
(never before an OPEN period ends, never while an operator state holds: FORCED_OPEN,
DISABLED and METRICS_ONLY last until the next operator action), registry keys
with their instances.

**Outages.** When Redis cannot be reached or answers too slowly (``socket_timeout``),
one WARNING is logged for the outage, calls never fail because of the store, and
``on_outage`` decides: ``"local"`` (default) lets each breaker run on its own state,
``"fail_open"`` admits every call (the breaker is DISABLED until Redis returns),
``"fail_closed"`` rejects every call (FORCED_OPEN). A background thread retries
every ``reconnect_interval``; when Redis answers, each breaker reconciles: a
breaker that opened on its own during the outage opens the fleet's breaker if that
is CLOSED, an operator action taken during the outage is applied, and otherwise the
breaker adopts the fleet's state. Slow paths do blocking I/O bounded by
``socket_timeout``, async callers included; keep it small.

**Registry.** :class:`RedisRegistry` registers instances with a TTL and refreshes
them from a heartbeat thread; ``close()`` (also run at interpreter exit) deregisters
them, and an instance whose process crashed expires after its TTL.
:meth:`RedisRegistry.follow` keeps a :class:`LoadBalancer` in step through its
public API (``register``, ``deregister``, ``mark_healthy``): changes are published,
and a resync every ``resync_interval`` catches lost messages and expiries.

**Sentinel and Cluster.** Pass redis-py's own clients; nothing here is specific to a
standalone server::

    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    sentinel = Sentinel([("sentinel-1", 26379), ("sentinel-2", 26379)], socket_timeout=0.25)
    master = sentinel.master_for("mymaster", socket_timeout=0.25, retry=Retry(NoBackoff(), 0))
    store = RedisStore(master)
    registry = RedisRegistry(master)

    from redis.cluster import RedisCluster

    store = RedisStore(RedisCluster.from_url("redis://node-1:7000/", socket_timeout=0.25))

With Sentinel, a failover looks like a short outage: the store falls back to
``on_outage`` and reconciles against the new master. With Cluster, each breaker's
keys live in one slot (hash tags) and pub/sub messages reach every node's
subscribers. Give your own client a short ``socket_timeout`` and few retries: the
store treats a timeout as an outage and stops waiting on Redis until it is back.

A store or registry made before ``os.fork()`` (gunicorn's preload) restarts its
threads in the child on first use (for a breaker, its first slow path: a failure,
a probe, an operator action), under an identity of the child's own.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from ._extras import missing_extra

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisError
    from redis.retry import Retry
except ImportError as exc:
    raise missing_extra(__name__, "redis", exc) from exc

from .._validate import check_number, check_str
from ..circuit_breaker import CircuitBreaker, CircuitState
from ..discovery import Resolver, close_at_shutdown
from ..discovery.codec import instance_from_json, instance_to_json
from ..errors import ServiceMeshError
from ..load_balancer import LoadBalancer, ServiceInstance
from ..store import SharedState

__all__ = [
    "OutageMode",
    "RedisClient",
    "RedisRegistry",
    "RedisStore",
    "RegistryFollower",
    "RegistryUnavailableError",
]

RedisClient = redis.Redis | RedisCluster
"""A redis-py client: ``redis.Redis`` (also from ``Sentinel.master_for``) or ``RedisCluster``."""

OutageMode = Literal["local", "fail_open", "fail_closed"]

T = TypeVar("T")

logger = logging.getLogger("codomyrmex.service_mesh.redis")

_STATES = {state.value: state for state in CircuitState}


class RegistryUnavailableError(ServiceMeshError):
    """A registry query could not reach Redis."""


class _Unavailable(Exception):
    """Redis could not be used for one operation (already logged and accounted for)."""


def _make_client(client: RedisClient | str, socket_timeout: float) -> RedisClient:
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r}")
    return prefix


# -- the connection: outage tracking, a pub/sub listener and a periodic tick --------------


class _Backend:
    """One client, whether Redis is reachable, and the two threads that use it.

    The listener thread delivers pub/sub messages; the monitor thread runs
    ``on_tick`` every ``tick_interval`` while Redis is reachable and, while it is
    not, retries ``on_reconnect`` every ``reconnect_interval``.
    """

    def __init__(
        self,
        client: RedisClient,
        channel: str,
        what: str,
        *,
        on_message: Callable[[Any], None],
        on_outage: Callable[[], None],
        on_reconnect: Callable[[], None],
        on_tick: Callable[[], None],
        tick_interval: float,
        reconnect_interval: float,
        on_fork: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self._what = what
        self._on_message = on_message
        self._on_outage = on_outage
        self._on_reconnect = on_reconnect
        self._on_tick = on_tick
        self._tick_interval = tick_interval
        self._reconnect_interval = reconnect_interval
        self._lock = threading.Lock()
        self._online = True
        self._outage_since = 0.0
        self._pid = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._listening = threading.Event()
        self._resync_wanted = False
        self._threads: list[threading.Thread] = []
        self._on_fork = on_fork
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
        if self._on_fork is not None:
            self._on_fork()

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
                threading.Thread(target=self._listen, name=f"{self._what}-listener", daemon=True),
                threading.Thread(target=self._monitor, name=f"{self._what}-monitor", daemon=True),
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
        """Run ``op``; a Redis error marks an outage and becomes :class:`_Unavailable`."""
        try:
            return op()
        except (RedisError, OSError) as exc:
            self.failed(exc)
            raise _Unavailable from exc

    def failed(self, exc: BaseException) -> None:
        """Note that Redis failed; the first failure of an outage logs one WARNING."""
        with self._lock:
            if not self._online:
                return
            self._online = False
            self._outage_since = time.monotonic()
        logger.warning(
            "%s: Redis unavailable (%s: %s); using the configured fallback until it returns",
            self._what,
            type(exc).__name__,
            exc,
            extra={"redis_outage": True},
        )
        try:
            self._on_outage()
        except Exception:
            logger.exception("%s: outage handler raised", self._what)
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
                    self._on_message(message["data"])
            except (RedisError, OSError) as exc:
                self._listening.set()
                if self._stop.is_set():
                    break
                pubsub = self._close_pubsub(pubsub)
                self.failed(exc)
                self._stop.wait(self._reconnect_interval)
            except Exception:
                logger.exception("%s: pub/sub message handler raised", self._what)
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
                if self._stop.wait(self._reconnect_interval):
                    return
                try:
                    self._on_reconnect()
                except _Unavailable:
                    continue
                except Exception:
                    logger.exception("%s: reconciling after an outage raised", self._what)
                    continue
                with self._lock:
                    if self._stop.is_set():  # closed while reconciling: stay offline
                        return
                    self._online = True
                    since = self._outage_since
                self.request_resync()  # messages dropped while reconciling
                logger.info(
                    "%s: Redis reachable again after %.1f s; state reconciled",
                    self._what,
                    time.monotonic() - since,
                )
                continue
            self._wake.wait(self._tick_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self._online:
                continue
            try:
                self._on_tick()
            except _Unavailable:
                pass
            except Exception:
                logger.exception("%s: periodic work raised", self._what)


# -- shared breaker state -------------------------------------------------------------------

# Every breaker script: KEYS = state hash, probes zset, window hash; ARGV[1..16] as
# built by _RedisLink._config_args, op arguments from ARGV[17]. Times are ms of TIME.
_PRELUDE = """
local CHANNEL, NAME, ORIGIN = ARGV[1], ARGV[2], ARGV[3]
local KEY_TTL = tonumber(ARGV[4])
local FAIL_T, SUCC_T = tonumber(ARGV[5]), tonumber(ARGV[6])
local OPEN_MS, MULT, MAX_OPEN = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local HALF_MAX, LEASE_MS = tonumber(ARGV[10]), tonumber(ARGV[11])
local WINDOW, WSIZE, MIN_CALLS = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
local FAIL_RATE, SLOW_RATE = tonumber(ARGV[15]), tonumber(ARGV[16])
local STATES = {closed=true, open=true, half_open=true, forced_open=true,
                disabled=true, metrics_only=true}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local changed, dirty = false, false

local function load()
  local raw = redis.pcall('HGETALL', KEYS[1])
  if raw.err then return nil, 'corrupt' end
  if #raw == 0 then return nil, 'missing' end
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  local st = {state = h.state, version = tonumber(h.version), failures = tonumber(h.failures),
              open_until = tonumber(h.open_until), reopens = tonumber(h.reopens),
              probe_ok = tonumber(h.probe_ok), last_failure = tonumber(h.last_failure) or 0}
  if not STATES[st.state] or not st.version or not st.failures or not st.open_until
     or not st.reopens or not st.probe_ok then
    return nil, 'corrupt'
  end
  return st, 'ok'
end

local st, flag = load()
if not st then
  st = {state='closed', version=0, failures=0, open_until=0, reopens=0, probe_ok=0,
        last_failure=0}
end

local function open_ms()
  local ms = OPEN_MS
  if st.reopens > 0 and MULT > 1 then ms = ms * MULT ^ st.reopens end
  if MAX_OPEN >= 0 then ms = math.min(ms, math.max(MAX_OPEN, OPEN_MS)) end
  if ms > 1e12 then ms = 1e12 end
  return math.floor(ms)
end

local function enter(new)
  st.version = math.max(st.version + 1, now)
  st.probe_ok = 0
  redis.call('DEL', KEYS[2])
  if new == 'open' then
    st.open_until = now + open_ms()
  elseif new == 'closed' then
    st.failures = 0
    st.reopens = 0
    redis.call('DEL', KEYS[3])
  end
  st.state = new
  changed, dirty = true, true
end

local function retry_after()
  if st.state ~= 'open' then return 0 end
  return math.max(0, st.open_until - now) / 1000
end

local function failure_age()
  if st.last_failure <= 0 then return -1 end
  return math.max(0, now - st.last_failure) / 1000
end

local function finish(granted, announce)
  if dirty then
    if flag == 'corrupt' then redis.call('DEL', KEYS[1]) end
    if flag == 'missing' then flag = 'created' end
    if st.version == 0 then st.version = now end
    redis.call('HSET', KEYS[1], 'state', st.state, 'version', st.version,
               'failures', st.failures, 'open_until', st.open_until,
               'reopens', st.reopens, 'probe_ok', st.probe_ok,
               'last_failure', st.last_failure)
    if st.state == 'forced_open' or st.state == 'disabled' or st.state == 'metrics_only' then
      redis.call('PERSIST', KEYS[1])  -- an operator's decision lasts until the next one
    else
      local ttl = KEY_TTL
      if st.state == 'open' then ttl = math.max(ttl, st.open_until - now + KEY_TTL) end
      redis.call('PEXPIRE', KEYS[1], ttl)
    end
    if changed or announce then
      redis.call('PUBLISH', CHANNEL, cjson.encode({b=NAME, s=st.state, v=st.version,
                 f=st.failures, r=retry_after(), n=st.reopens, o=ORIGIN, l=failure_age()}))
    end
  end
  return {st.state, st.version, st.failures, string.format('%.3f', retry_after()),
          st.reopens, flag, granted, string.format('%.3f', failure_age())}
end
"""

_WINDOW_LUA = """
local function window_add(calls, fails, slow)
  local c, f, s = 0, 0, 0
  if WINDOW == 'count' then
    local w = redis.pcall('HMGET', KEYS[3], 'c', 'f', 's')
    if w.err then redis.call('DEL', KEYS[3]); w = {} end
    c = (tonumber(w[1]) or 0) + calls
    f = (tonumber(w[2]) or 0) + fails
    s = (tonumber(w[3]) or 0) + slow
    if c > WSIZE then
      local k = WSIZE / c
      c, f, s = WSIZE, f * k, s * k
    end
    redis.call('HSET', KEYS[3], 'c', c, 'f', f, 's', s)
  else
    local sec = math.floor(now / 1000)
    local ok = redis.pcall('HINCRBY', KEYS[3], 'c:' .. sec, calls)
    if type(ok) == 'table' and ok.err then
      redis.call('DEL', KEYS[3])
      redis.call('HINCRBY', KEYS[3], 'c:' .. sec, calls)
    end
    redis.call('HINCRBY', KEYS[3], 'f:' .. sec, fails)
    redis.call('HINCRBY', KEYS[3], 's:' .. sec, slow)
    local raw = redis.call('HGETALL', KEYS[3])
    local old = {}
    for i = 1, #raw, 2 do
      local kind, at = string.match(raw[i], '^(%a):(%d+)$')
      local n = tonumber(raw[i + 1]) or 0
      if not at or tonumber(at) <= sec - WSIZE then
        old[#old + 1] = raw[i]
      elseif kind == 'c' then c = c + n
      elseif kind == 'f' then f = f + n
      else s = s + n end
    end
    if #old > 0 then redis.call('HDEL', KEYS[3], unpack(old)) end
  end
  redis.call('PEXPIRE', KEYS[3], KEY_TTL)
  return c, f, s
end
"""

_RECORD = (
    _PRELUDE
    + _WINDOW_LUA
    + """
local kind = ARGV[17]
local announce = false
if kind == 'closed' then
  local reset, nfail = tonumber(ARGV[18]), tonumber(ARGV[19])
  local ncalls, nslow = tonumber(ARGV[20]), tonumber(ARGV[21])
  if st.state == 'closed' then
    if nfail > 0 then st.last_failure = now; dirty = true end
    if WINDOW == 'none' then
      local before = st.failures
      if reset == 1 then st.failures = 0 end
      st.failures = st.failures + nfail
      if st.failures ~= before then dirty = true end
      if st.failures >= FAIL_T then
        enter('open')
      elseif before == 0 and st.failures > 0 then
        announce = true
      end
    elseif ncalls > 0 then
      local c, f, s = window_add(ncalls, nfail, nslow)
      if c >= MIN_CALLS and ((FAIL_RATE >= 0 and 100 * f / c >= FAIL_RATE)
                             or (SLOW_RATE >= 0 and 100 * s / c >= SLOW_RATE)) then
        enter('open')
      end
    end
  end
else
  local lease, lease_version, outcome = ARGV[18], tonumber(ARGV[19]), ARGV[20]
  if lease ~= '' then redis.pcall('ZREM', KEYS[2], lease) end
  if st.state == 'half_open' and st.version == lease_version then
    if ARGV[21] == '1' then st.last_failure = now; dirty = true end
    if outcome == 'ok' then
      st.probe_ok = st.probe_ok + 1
      dirty = true
      if st.probe_ok >= SUCC_T then enter('closed') end
    else
      st.reopens = st.reopens + 1
      enter('open')
    end
  end
end
return finish(0, announce)
"""
)

_ACQUIRE = (
    _PRELUDE
    + """
local granted = 0
if st.state == 'open' and now >= st.open_until then enter('half_open') end
if st.state == 'half_open' then
  local gone = redis.pcall('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if type(gone) == 'table' and gone.err then redis.call('DEL', KEYS[2]) end
  if redis.call('ZCARD', KEYS[2]) < HALF_MAX then
    redis.call('ZADD', KEYS[2], now + LEASE_MS, ARGV[17])
    redis.call('PEXPIRE', KEYS[2], LEASE_MS + KEY_TTL)
    granted = 1
  end
end
return finish(granted, false)
"""
)

_SYNC = (
    _PRELUDE
    + """
local mode = ARGV[17]
if mode == 'operate' then
  st.failures = 0
  st.reopens = 0
  redis.call('DEL', KEYS[3])
  enter(ARGV[18])
elseif mode == 'open_if_closed' and st.state == 'closed' then
  enter('open')
  st.open_until = now + tonumber(ARGV[18])
end
return finish(0, false)
"""
)


def _failure_age(value: Any) -> float | None:
    """A script's or message's failure age: seconds, or None (negative: never failed)."""
    age = float(_text(value))
    return None if age < 0 else age


def _parse_shared(reply: Any) -> tuple[SharedState, str, bool]:
    state, version, failures, retry_after, reopens, flag, granted, age = reply
    shared = SharedState(
        state=_STATES[_text(state)],
        version=int(version),
        failures=int(failures),
        retry_after=float(_text(retry_after)),
        reopens=int(reopens),
        last_failure_age=_failure_age(age),
    )
    return shared, _text(flag), bool(int(granted))


class RedisStore:
    """Circuit breaker state shared through Redis; pass as ``CircuitBreaker(..., store=)``.

    ``client`` is a redis URL (a client with ``socket_timeout`` and no retries is
    made) or a redis-py client of your own. ``prefix`` namespaces every key and
    channel; ``key_ttl`` is how long unused breaker keys live; ``probe_lease`` bounds
    how long one HALF_OPEN probe may hold its fleet-wide slot; ``flush_interval``
    is the delay of batched outcomes; ``resync_interval`` how often each breaker is
    compared with Redis; ``on_outage`` what breakers do while Redis is unreachable.
    """

    def __init__(
        self,
        client: RedisClient | str,
        *,
        prefix: str = "mesh:",
        key_ttl: float = 86400.0,
        probe_lease: float = 30.0,
        flush_interval: float = 0.05,
        resync_interval: float = 1.0,
        reconnect_interval: float = 0.5,
        socket_timeout: float = 0.25,
        on_outage: OutageMode = "local",
    ) -> None:
        self.prefix = _check_prefix(prefix)
        self.key_ttl = check_number("key_ttl", key_ttl, 0.001)
        self.probe_lease = check_number("probe_lease", probe_lease, 0.001)
        self.flush_interval = check_number("flush_interval", flush_interval, 0.001)
        self.resync_interval = check_number("resync_interval", resync_interval, 0.001)
        reconnect = check_number("reconnect_interval", reconnect_interval, 0.001)
        timeout = check_number("socket_timeout", socket_timeout, 0.001)
        if on_outage not in ("local", "fail_open", "fail_closed"):
            raise ValueError(
                f"on_outage must be 'local', 'fail_open' or 'fail_closed', got {on_outage!r}"
            )
        self.on_outage: OutageMode = on_outage
        self.client = _make_client(client, timeout)
        self.origin = uuid.uuid4().hex[:12]
        self._leases = itertools.count(1)
        self._links: weakref.WeakSet[_RedisLink] = weakref.WeakSet()
        self._links_lock = threading.Lock()
        self._record = self.client.register_script(_RECORD)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._sync = self.client.register_script(_SYNC)
        self._last_resync = time.monotonic()
        self._backend = _Backend(
            self.client,
            f"{self.prefix}cb:events",
            "circuit breaker store",
            on_message=self._on_message,
            on_outage=self._on_outage,
            on_reconnect=self._on_reconnect,
            on_tick=self._on_tick,
            tick_interval=self.flush_interval,
            reconnect_interval=reconnect,
            on_fork=self._after_fork_in_child,
        )

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r}, online={self.online})"

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def online(self) -> bool:
        """Whether Redis is reachable (False during an outage, until reconciled)."""
        return self._backend.online

    def bind(self, breaker: CircuitBreaker) -> _RedisLink:
        """Join ``breaker`` to the shared state of its name (reads only; see :mod:`.store`)."""
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker must be a CircuitBreaker, got {breaker!r}")
        link = _RedisLink(self, breaker)
        with self._links_lock:
            self._links.add(link)
        self._backend.start()
        if self.online:
            link.sync("none", initial=True)
        elif self.on_outage != "local":
            link.enter_outage()
        return link

    def close(self) -> None:
        """Flush batched outcomes and stop the background threads (the client stays open).

        Breakers bound to a closed store run on their local state from then on.
        """
        if self.online:
            for link in self._snapshot():
                try:
                    link.flush()
                except _Unavailable:
                    break
        self._backend.stop()

    def keys(self, name: str) -> list[str]:
        """The Redis keys of the breaker called ``name``: state, probe leases, window."""
        base = f"{self.prefix}cb:{{{name}}}"
        return [base, f"{base}:probes", f"{base}:window"]

    def _snapshot(self) -> list[_RedisLink]:
        with self._links_lock:
            return list(self._links)

    def _new_id(self) -> str:
        """A fleet-wide unique id: of a probe lease, or of a link (its messages' origin)."""
        return f"{self.origin}:{os.getpid()}:{next(self._leases)}"

    def _after_fork_in_child(self) -> None:
        """A forked child is a process of its own: new origins, so each hears the other."""
        self.origin = uuid.uuid4().hex[:12]
        self._links_lock = threading.Lock()
        for link in list(self._links):
            link._after_fork_in_child()

    # -- background work --------------------------------------------------------------

    def _on_message(self, data: Any) -> None:
        try:
            message = json.loads(data)
            name = message["b"]
            shared = SharedState(
                state=_STATES[message["s"]],
                version=int(message["v"]),
                failures=int(message["f"]),
                retry_after=float(message["r"]),
                reopens=int(message["n"]),
                last_failure_age=_failure_age(message.get("l", -1)),
            )
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed breaker message on %s: %r", self.prefix, data)
            return
        origin = message.get("o")
        for link in self._snapshot():
            if link.name == name and link.origin != origin:  # a link adopts its own replies
                link.adopt(shared)

    def _on_outage(self) -> None:
        for link in self._snapshot():
            link.enter_outage()

    def _on_reconnect(self) -> None:
        self._backend.call(self.client.ping)
        for link in self._snapshot():
            link.reconcile()
        self._last_resync = time.monotonic()

    def _on_tick(self) -> None:
        links = self._snapshot()
        for link in links:
            link.flush()
        now = time.monotonic()
        if self._backend.take_resync() or now - self._last_resync >= self.resync_interval:
            self._last_resync = now
            for link in links:
                link.sync("none")


class _RedisLink:
    """One breaker's connection to a :class:`RedisStore` (the :class:`BreakerLink`)."""

    __slots__ = (
        "__weakref__",
        "_adopt_lock",
        "_args",
        "_breaker",
        "_corrupt",
        "_fleet_state",
        "_io_lock",
        "_leases",
        "_pending_calls",
        "_pending_failures",
        "_pending_operator",
        "_pending_reset",
        "_pending_slow",
        "_store",
        "_version",
        "_windowed",
        "keys",
        "name",
        "origin",
    )

    def __init__(self, store: RedisStore, breaker: CircuitBreaker) -> None:
        self._store = store
        self._breaker = breaker
        self.name = breaker.name
        self.keys = store.keys(breaker.name)
        self.origin = store._new_id()
        config = breaker.config
        window = config.sliding_window_type if config.windowed else "none"
        self._windowed = config.windowed
        slow = config.slow_call_duration_threshold
        self._args: list[str | int | float] = [
            f"{store.prefix}cb:events",
            breaker.name,
            self.origin,
            max(1, round(store.key_ttl * 1000)),
            config.failure_threshold,
            config.success_threshold,
            round(config.timeout_seconds * 1000),
            config.open_backoff_multiplier,
            -1 if config.max_open_seconds is None else round(config.max_open_seconds * 1000),
            config.half_open_max_calls,
            max(1, round(store.probe_lease * 1000)),
            window,
            config.sliding_window_size,
            config.minimum_calls,
            config.window_failure_rate,
            -1 if slow is None else config.slow_call_rate_threshold,
        ]
        self._io_lock = threading.Lock()
        self._adopt_lock = threading.Lock()
        self._version = 0
        self._fleet_state = CircuitState.CLOSED
        self._leases: dict[int, list[tuple[str, int]]] = {}
        self._pending_reset = False
        self._pending_calls = 0
        self._pending_failures = 0
        self._pending_slow = 0
        self._pending_operator: CircuitState | None = None
        self._corrupt = False

    def __repr__(self) -> str:
        return f"_RedisLink({self.name!r}, version={self._version}, online={self.online})"

    @property
    def online(self) -> bool:
        return self._store._backend.online

    # -- the BreakerLink protocol ------------------------------------------------------

    def acquire_probe(self, epoch: int) -> bool | None:
        store = self._store
        store._backend.start()  # after a fork: this process's threads
        if not self.online:
            return None
        lease = store._new_id()
        try:
            reply = store._backend.call(
                lambda: store._acquire(keys=self.keys, args=[*self._args, lease])
            )
        except _Unavailable:
            return None
        shared, flag, granted = _parse_shared(reply)
        self._check_flag(flag)
        if granted:
            with self._adopt_lock:
                self._leases.setdefault(epoch, []).append((lease, shared.version))
        self.adopt(shared)
        return granted

    def record(self, epoch: int, state: CircuitState, success: bool, slow: bool) -> bool:
        store = self._store
        store._backend.start()
        if state is CircuitState.HALF_OPEN:
            lease, version = self._take_lease(epoch)
            if not self.online:
                return False  # the lease lapses in Redis after probe_lease
            outcome = "ok" if success and not slow else "fail"
            try:
                reply = store._backend.call(
                    lambda: store._record(
                        keys=self.keys,
                        args=[*self._args, "probe", lease, version, outcome, int(not success)],
                    )
                )
            except _Unavailable:
                return False
            self._adopt_reply(reply)
            return True
        if not self.online:
            return False
        with self._adopt_lock:
            if self._windowed:
                self._pending_calls += 1
                self._pending_failures += not success
                self._pending_slow += slow
            elif success:
                self._pending_reset = True
            else:
                self._pending_failures += 1
        if success:
            return True
        try:
            self.flush()
        except _Unavailable:
            return False
        return True

    def release(self, epoch: int) -> None:
        lease, _ = self._take_lease(epoch)
        if not lease:
            return
        store = self._store
        store._backend.start()
        if not self.online:
            return
        try:
            store._backend.call(lambda: store.client.zrem(self.keys[1], lease))
        except _Unavailable:
            pass

    def operate(self, state: CircuitState) -> None:
        self._pending_operator = state
        self._store._backend.start()
        if self.online:
            self.sync("operate", state.value)

    # -- the store's side --------------------------------------------------------------

    def adopt(self, shared: SharedState, *, force: bool = False) -> None:
        """Make the breaker take ``shared`` unless it is older than what it has."""
        breaker = self._breaker
        with self._adopt_lock:
            if not force and (shared.version < self._version or not self.online):
                return  # during an outage the fallback holds until reconcile() forces
            if (
                shared.state is CircuitState.OPEN
                and shared.version == self._version
                and breaker.stored_state is CircuitState.HALF_OPEN
            ):
                return  # the same OPEN period; this process's clock already let it expire
            self._version = shared.version
            self._fleet_state = shared.state
            changes = breaker.adopt(shared)
        if changes:
            breaker.announce(changes)

    def flush(self) -> None:
        """Send batched outcomes (raises :class:`_Unavailable`)."""
        store = self._store
        with self._io_lock:
            with self._adopt_lock:
                reset, failures = self._pending_reset, self._pending_failures
                calls, slow = self._pending_calls, self._pending_slow
                self._pending_reset = False
                self._pending_failures = self._pending_calls = self._pending_slow = 0
            if not (reset or failures or calls):
                return
            args = [*self._args, "closed", int(reset), failures, calls, slow]
            reply = store._backend.call(lambda: store._record(keys=self.keys, args=args))
        self._adopt_reply(reply)

    def sync(self, mode: str, value: str | int = "", *, initial: bool = False) -> None:
        """Read the fleet's state, applying ``mode`` first (see ``_SYNC``), and adopt it."""
        store = self._store
        version = self._version
        try:
            reply = store._backend.call(
                lambda: store._sync(keys=self.keys, args=[*self._args, mode, value])
            )
        except _Unavailable:
            return
        if mode == "operate":
            self._pending_operator = None
        shared, flag, _ = _parse_shared(reply)
        self._check_flag(flag)
        if initial:
            with self._adopt_lock:
                self._version = shared.version
                self._fleet_state = shared.state
                self._breaker._adopt(shared)  # a breaker's first state is not a transition
            return
        # A key that does not exist has version 0: adopt it only if nothing newer came in.
        self.adopt(shared, force=shared.version == 0 and self._version == version)

    def enter_outage(self) -> None:
        """Redis is unreachable: drop batched outcomes and apply ``on_outage``."""
        with self._adopt_lock:
            self._pending_reset = False
            self._pending_failures = self._pending_calls = self._pending_slow = 0
        mode = self._store.on_outage
        if mode == "local":
            return
        state = CircuitState.DISABLED if mode == "fail_open" else CircuitState.FORCED_OPEN
        breaker = self._breaker
        with self._adopt_lock:
            changes = breaker.adopt(SharedState(state, self._version))
        if changes:
            breaker.announce(changes)

    def reconcile(self) -> None:
        """Redis is back: push what the fleet must learn from this process, then adopt.

        Probe leases stay: a probe that outlived the outage still gives its slot back.
        """
        operator = self._pending_operator
        breaker = self._breaker
        value: str | int
        if operator is not None:
            mode, value = "operate", operator.value
        elif (
            self._store.on_outage == "local"
            and breaker.stored_state is CircuitState.OPEN
            and self._fleet_state is not CircuitState.OPEN
        ):
            mode, value = "open_if_closed", max(1, round(breaker.retry_after() * 1000))
        else:
            mode, value = "none", ""
        store = self._store
        reply = store._backend.call(
            lambda: store._sync(keys=self.keys, args=[*self._args, mode, value])
        )
        self._pending_operator = None
        shared, flag, _ = _parse_shared(reply)
        self._check_flag(flag)
        self.adopt(shared, force=True)

    # -- helpers ----------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """In a forked child: an origin of its own; the parent keeps its calls and leases."""
        self._io_lock = threading.Lock()
        self._adopt_lock = threading.Lock()
        self.origin = self._store._new_id()
        self._args[2] = self.origin
        self._leases.clear()
        self._pending_reset = False
        self._pending_failures = self._pending_calls = self._pending_slow = 0
        self._pending_operator = None

    def _take_lease(self, epoch: int) -> tuple[str, int]:
        with self._adopt_lock:
            held = self._leases.get(epoch)
            if held:
                lease = held.pop()
                if not held:
                    del self._leases[epoch]
                return lease
            return "", self._version

    def _adopt_reply(self, reply: Any) -> None:
        shared, flag, _ = _parse_shared(reply)
        self._check_flag(flag)
        self.adopt(shared)

    def _check_flag(self, flag: str) -> None:
        if flag == "corrupt":
            if not self._corrupt:
                self._corrupt = True
                logger.warning(
                    "circuit %s: shared state at %s is corrupt; treated as a fresh CLOSED "
                    "breaker (repaired by the next write)",
                    self.name,
                    self.keys[0],
                )
        elif flag == "missing":
            self._corrupt = False
            logger.log(
                logging.INFO if self._version else logging.DEBUG,
                "circuit %s: no shared state at %s; treated as a fresh CLOSED breaker",
                self.name,
                self.keys[0],
            )
        else:
            self._corrupt = False


# -- the service registry -------------------------------------------------------------------

_REGISTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local channel, service, id, data, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local old = redis.pcall('HGET', KEYS[1], id)
if type(old) == 'table' and old.err then redis.call('DEL', KEYS[1]); old = false end
local deadline = redis.pcall('ZSCORE', KEYS[2], id)
if type(deadline) == 'table' and deadline.err then redis.call('DEL', KEYS[2]); deadline = false end
local alive = deadline and tonumber(deadline) > now
redis.call('HSET', KEYS[1], id, data)
redis.call('ZADD', KEYS[2], now + ttl, id)
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
if not alive or old ~= data then
  redis.call('PUBLISH', channel, cjson.encode({op='up', s=service, id=id, inst=data}))
  return 1
end
return 0
"""

_DEREGISTER = """
local removed = redis.pcall('ZREM', KEYS[2], ARGV[3])
redis.pcall('HDEL', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], cjson.encode({op='down', s=ARGV[2], id=ARGV[3]}))
if type(removed) == 'table' then return 0 end
return removed
"""

_LIST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.pcall('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if expired.err then redis.call('DEL', KEYS[1], KEYS[2]); return {} end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, id in ipairs(expired) do
    redis.pcall('HDEL', KEYS[1], id)
    redis.call('PUBLISH', ARGV[1], cjson.encode({op='down', s=ARGV[2], id=id}))
  end
end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
local out = {}
for _, id in ipairs(live) do
  local data = redis.pcall('HGET', KEYS[1], id)
  if type(data) == 'string' then
    out[#out + 1] = id
    out[#out + 1] = data
  end
end
return out
"""


def _instance_from_json(data: Any) -> ServiceInstance | None:
    return instance_from_json(data, log=logger)


class RedisRegistry:
    """Service instances in Redis: registered with a TTL, kept alive by a heartbeat.

    ``ttl`` is how long an instance outlives its last heartbeat (a crashed
    process's instances vanish after it); ``heartbeat_interval`` defaults to a
    third of it. Followers (:meth:`follow`) resync every ``resync_interval``.
    """

    def __init__(
        self,
        client: RedisClient | str,
        *,
        prefix: str = "mesh:",
        ttl: float = 10.0,
        heartbeat_interval: float | None = None,
        resync_interval: float = 0.5,
        reconnect_interval: float = 0.5,
        socket_timeout: float = 0.25,
        deregister_at_exit: bool = True,
        deregister_on_sigterm: bool = False,
    ) -> None:
        self.prefix = _check_prefix(prefix)
        self.ttl = check_number("ttl", ttl, 0.01)
        if not isinstance(deregister_on_sigterm, bool):
            raise TypeError(f"deregister_on_sigterm must be a bool, got {deregister_on_sigterm!r}")
        beat = ttl / 3 if heartbeat_interval is None else heartbeat_interval
        self.heartbeat_interval = check_number("heartbeat_interval", beat, 0.001)
        if self.heartbeat_interval >= self.ttl:
            raise ValueError(
                f"heartbeat_interval must be shorter than ttl ({ttl!r}), got {heartbeat_interval!r}"
            )
        self.resync_interval = check_number("resync_interval", resync_interval, 0.001)
        reconnect = check_number("reconnect_interval", reconnect_interval, 0.001)
        timeout = check_number("socket_timeout", socket_timeout, 0.001)
        self.client = _make_client(client, timeout)
        self.channel = f"{self.prefix}svc:events"
        self._lock = threading.Lock()
        # Held around every write of this process's instances, so a removal is the last word.
        self._io_lock = threading.Lock()
        self._own: dict[tuple[str, str], str] = {}
        self._followers: set[RegistryFollower] = set()
        self._run_id: str | None = None
        self._register = self.client.register_script(_REGISTER)
        self._deregister = self.client.register_script(_DEREGISTER)
        self._list = self.client.register_script(_LIST)
        tick = min(self.heartbeat_interval, self.resync_interval)
        self._last_beat = self._last_resync = time.monotonic()
        self._closed = False
        self._backend = _Backend(
            self.client,
            self.channel,
            "service registry",
            on_message=self._on_message,
            on_outage=self._on_outage,
            on_reconnect=self._on_reconnect,
            on_tick=self._on_tick,
            tick_interval=tick,
            reconnect_interval=reconnect,
            on_fork=self._after_fork_in_child,
        )
        self._undo_shutdown = close_at_shutdown(
            self, at_exit=deregister_at_exit, sigterm=deregister_on_sigterm
        )

    def __repr__(self) -> str:
        return f"RedisRegistry(prefix={self.prefix!r}, ttl={self.ttl}, online={self.online})"

    def __enter__(self) -> RedisRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def online(self) -> bool:
        """Whether Redis is reachable."""
        return self._backend.online

    def keys(self, service: str) -> list[str]:
        """The Redis keys of ``service``: instance data and deadlines."""
        base = f"{self.prefix}svc:{{{service}}}"
        return [f"{base}:instances", f"{base}:deadlines"]

    # -- this process's instances -------------------------------------------------------

    def register(self, service: str, instance: ServiceInstance) -> None:
        """Register ``instance`` under ``service`` and keep it alive until deregistered.

        Never raises for Redis: while Redis is unreachable the heartbeat keeps
        trying, and the instance appears when Redis answers.
        """
        check_str("service", service)
        if not isinstance(instance, ServiceInstance):
            raise TypeError(f"instance must be a ServiceInstance, got {instance!r}")
        data = instance_to_json(instance)
        with self._lock:
            if self._closed:
                raise RuntimeError("this registry is closed")
            self._own[service, instance.id] = data
        self._backend.start()
        self._send(service, instance.id)

    def set_health(self, service: str, instance_id: str, healthy: bool) -> bool:
        """Mark one of this process's instances healthy or not; False if it is not registered."""
        if not isinstance(healthy, bool):
            raise TypeError(f"healthy must be a bool, got {healthy!r}")
        with self._lock:
            data = self._own.get((service, instance_id))
            if data is None:
                return False
            fields = json.loads(data)
            fields["healthy"] = healthy
            data = json.dumps(fields, sort_keys=True, separators=(",", ":"))
            self._own[service, instance_id] = data
        self._send(service, instance_id)
        return True

    def deregister(self, service: str, instance_id: str) -> bool:
        """Remove an instance this process registered; False if it had not."""
        with self._lock:
            if self._own.pop((service, instance_id), None) is None:
                return False
        self._remove(service, instance_id)
        return True

    def close(self) -> None:
        """Deregister this process's instances and stop the background threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            own, self._own = list(self._own), {}
        for service, instance_id in own:
            if not self._remove(service, instance_id):
                break
        self._backend.stop()
        self._undo_shutdown()

    # -- everyone's instances ---------------------------------------------------------

    def instances(self, service: str) -> list[ServiceInstance]:
        """The live instances of ``service`` (RegistryUnavailableError if Redis is unreachable)."""
        try:
            listed = self._fetch(service)
        except _Unavailable as exc:
            raise RegistryUnavailableError(f"cannot list {service!r}: Redis unavailable") from exc
        return [inst for data in listed.values() if (inst := _instance_from_json(data))]

    def follow(self, service: str, balancer: LoadBalancer) -> RegistryFollower:
        """Keep ``balancer`` in step with ``service``'s instances until ``stop()``."""
        check_str("service", service)
        if not isinstance(balancer, LoadBalancer):
            raise TypeError(f"balancer must be a LoadBalancer, got {balancer!r}")
        follower = RegistryFollower(self, service, balancer)
        with self._lock:
            self._followers.add(follower)
        self._backend.start()
        self._restarted()  # note the run_id
        try:
            follower.resync(self._fetch(service))
        except _Unavailable:
            pass
        return follower

    # -- plumbing ---------------------------------------------------------------------

    def _send(self, service: str, instance_id: str) -> None:
        try:
            self._send_strict(service, instance_id)
        except _Unavailable:
            pass

    def _send_strict(self, service: str, instance_id: str) -> None:
        """Write an instance if this process still owns it (raises :class:`_Unavailable`)."""
        keys = self.keys(service)
        with self._io_lock:
            with self._lock:
                data = self._own.get((service, instance_id))
            if data is None:
                return  # deregistered meanwhile: writing it would bring it back
            args: list[str | int] = [
                self.channel,
                service,
                instance_id,
                data,
                max(1, round(self.ttl * 1000)),
            ]
            self._backend.call(lambda: self._register(keys=keys, args=args))

    def _remove(self, service: str, instance_id: str) -> bool:
        keys = self.keys(service)
        args = [self.channel, service, instance_id]
        try:
            with self._io_lock:
                self._backend.call(lambda: self._deregister(keys=keys, args=args))
        except _Unavailable:
            return False
        return True

    def _after_fork_in_child(self) -> None:
        """Locks a parent's thread held at the fork would stay held in the child."""
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()

    def _fetch(self, service: str) -> dict[str, str]:
        keys = self.keys(service)
        flat = self._backend.call(lambda: self._list(keys=keys, args=[self.channel, service]))
        return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}

    def _unfollow(self, follower: RegistryFollower) -> None:
        with self._lock:
            self._followers.discard(follower)

    def _followers_of(self, service: str) -> list[RegistryFollower]:
        with self._lock:
            return [f for f in self._followers if f.service == service and f.active]

    def _on_message(self, data: Any) -> None:
        try:
            message = json.loads(data)
            op, service, instance_id = message["op"], message["s"], message["id"]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed registry message: %r", data)
            return
        for follower in self._followers_of(service):
            if op == "up":
                follower.apply_up(instance_id, message.get("inst"))
            elif op == "down":
                follower.apply_down(instance_id)

    def _heartbeat(self) -> None:
        """Refresh this process's instances (raises :class:`_Unavailable`)."""
        with self._lock:
            own = list(self._own)
        for service, instance_id in own:
            self._send_strict(service, instance_id)

    def _resync(self) -> None:
        with self._lock:
            followers = [f for f in self._followers if f.active]
        for follower in followers:
            follower.resync(self._fetch(follower.service))

    def _restarted(self) -> bool:
        """Whether Redis restarted (a new ``run_id``) since this registry last looked."""
        try:
            info = self._backend.call(lambda: self.client.info("server"))
        except _Unavailable:
            return False
        run_id = info.get("run_id") if isinstance(info, dict) else None
        if not isinstance(run_id, str):
            return False  # a cluster answers per node: no single run_id to compare
        with self._lock:
            previous, self._run_id = self._run_id, run_id
        return previous is not None and previous != run_id

    def _on_outage(self) -> None:
        with self._lock:
            followers = [f for f in self._followers if f.active]
        for follower in followers:
            follower.failed("Redis unavailable")

    def _on_reconnect(self) -> None:
        self._backend.call(self.client.ping)
        self._heartbeat()
        self._resync()

    def _on_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self.heartbeat_interval:
            self._last_beat = now
            self._heartbeat()
        if self._backend.take_resync() or now - self._last_resync >= self.resync_interval:
            self._last_resync = now
            self._resync()


class _RegistrySource:
    """A registry's service as a discovery source: fed by the registry's own threads."""

    def __init__(self, registry: RedisRegistry, service: str) -> None:
        self.registry = registry
        self.service = service

    @property
    def description(self) -> str:
        return f"redis {self.registry.keys(self.service)[0]}"

    def start(self, resolver: Resolver) -> None:
        pass  # the registry's listener and monitor threads deliver

    def stop(self) -> None:
        pass

    def refresh(self, resolver: Resolver) -> None:
        try:
            listed = self.registry._fetch(self.service)
        except _Unavailable as exc:
            raise RegistryUnavailableError(f"cannot list {self.service!r}") from exc
        if isinstance(resolver, RegistryFollower):
            resolver.resync(listed)


class RegistryFollower(Resolver):
    """Keeps one :class:`LoadBalancer` in step with one service in a :class:`RedisRegistry`.

    A discovery :class:`~codomyrmex.service_mesh.discovery.Resolver` (``status()``
    shows its staleness). Only instances the follower added are ever removed
    from the balancer, so instances registered there by hand stay. While Redis
    is unreachable the balancer keeps the instances it last knew. After an
    outage, or when Redis restarted (its ``run_id`` changed) even unnoticed, an
    instance that a resync no longer finds stays for the registry's ``ttl``,
    time for its owner's heartbeat to register it again; deregistrations apply
    at once.
    """

    def __init__(self, registry: RedisRegistry, service: str, balancer: LoadBalancer) -> None:
        super().__init__(
            _RegistrySource(registry, service),
            balancer,
            removal_grace=registry.ttl,
            allow_empty=True,
            update_health=True,
        )
        self.registry = registry
        self.service = service
        self.start()

    def __repr__(self) -> str:
        return f"RegistryFollower({self.service!r}, instances={len(self.known)})"

    @property
    def active(self) -> bool:
        return self.running

    def stop(self) -> None:
        """Stop following (the balancer keeps its instances)."""
        super().stop()
        self.registry._unfollow(self)

    close = stop

    def apply_up(self, instance_id: str, data: Any) -> None:
        """An instance was registered or changed."""
        if not self.active or not isinstance(data, str):
            return
        instance = _instance_from_json(data)
        if instance is not None and instance.id == instance_id:
            self.upsert(instance)  # a known id is updated in place, health included

    def apply_down(self, instance_id: str) -> None:
        """An instance was deregistered or expired."""
        if self.active:
            self.remove(instance_id)

    def resync(self, listed: dict[str, str]) -> None:
        """Make the balancer match ``listed`` (id -> JSON), as read from Redis."""
        if not self.active:
            return
        if any(i not in listed for i in self.known) and self.registry._restarted():
            self.failed("Redis restarted with no data")  # the next listing is held
        instances = []
        for instance_id, data in listed.items():
            instance = _instance_from_json(data)
            if instance is not None and instance.id == instance_id:
                instances.append(instance)
        self.replace(instances)
