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
    {prefix}cb:{<name>}:window   hash: a count window's outcomes in order (o), or a
                                 time window's counts per second (c:<s>, f:<s>, s:<s>)
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

**Layout.** :mod:`.connection` holds the client and outage handling (one
``Backend`` per store or registry: the listener and monitor threads, reconnect,
``on_outage``); :mod:`.store` the breaker store and its per-breaker links;
:mod:`.registry` the service registry and its followers; :mod:`.scripts` loads
the Lua in ``lua/`` and reads the scripts' arguments and replies. The Lua
transitions are checked against the breaker's own state machine and its
``TRANSITIONS`` by a property test (tests/integrations/redis/).
"""

from __future__ import annotations

from .connection import OutageMode, RedisClient
from .registry import RedisRegistry, RegistryFollower, RegistryUnavailableError
from .store import RedisStore

__all__ = [
    "OutageMode",
    "RedisClient",
    "RedisRegistry",
    "RedisStore",
    "RegistryFollower",
    "RegistryUnavailableError",
]
