"""Circuit breakers sharing their state through Redis: :class:`RedisStore` and its links.

A :class:`RedisStore` holds the connection (:class:`.connection.Backend`) and the
breaker scripts; :meth:`RedisStore.bind` gives each breaker a link, the
:class:`~codomyrmex.service_mesh.store.BreakerLink` through which the breaker
reports slow-path outcomes and adopts the fleet's transitions. The link talks to
the breaker only through its store seam (``adopt``, ``announce``, ``stored_state``).
The transitions themselves are made by the Lua scripts in ``lua/`` (see the
package's docstring for the keys and the outage behaviour).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from typing import Any

from ..._validate import check_number
from ...circuit_breaker import CircuitBreaker, CircuitState
from ...store import SharedState
from .connection import (
    Backend,
    BackendOwner,
    OutageMode,
    RedisClient,
    Unavailable,
    check_outage_mode,
    check_prefix,
    logger,
    make_client,
)
from .scripts import breaker_args, lua_source, parse_message, parse_reply

__all__ = ["RedisStore"]

_RECORD = lua_source("prelude", "window", "record")
_ACQUIRE = lua_source("prelude", "acquire")
_SYNC = lua_source("prelude", "sync")


class RedisStore(BackendOwner):
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
        self.prefix = check_prefix(prefix)
        self.key_ttl = check_number("key_ttl", key_ttl, 0.001)
        self.probe_lease = check_number("probe_lease", probe_lease, 0.001)
        self.flush_interval = check_number("flush_interval", flush_interval, 0.001)
        self.resync_interval = check_number("resync_interval", resync_interval, 0.001)
        reconnect = check_number("reconnect_interval", reconnect_interval, 0.001)
        timeout = check_number("socket_timeout", socket_timeout, 0.001)
        self.on_outage: OutageMode = check_outage_mode(on_outage)
        self.client = make_client(client, timeout)
        self.origin = uuid.uuid4().hex[:12]
        self._leases = itertools.count(1)
        self._links: weakref.WeakSet[_RedisLink] = weakref.WeakSet()
        self._links_lock = threading.Lock()
        self._record = self.client.register_script(_RECORD)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._sync = self.client.register_script(_SYNC)
        self._last_resync = time.monotonic()
        self._backend = Backend(
            client=self.client,
            channel=f"{self.prefix}cb:events",
            what="circuit breaker store",
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
                except Unavailable:
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
            name, origin, shared = parse_message(data)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed breaker message on %s: %r", self.prefix, data)
            return
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
        "_codes",
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
        "_window_size",
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
        self._args = breaker_args(store, breaker.name, self.origin, breaker.config)
        config = breaker.config
        self._windowed = config.windowed
        self._window_size = config.sliding_window_size
        # a count window's batched outcomes, in order (the fleet's window keeps them so)
        counted = config.windowed and config.sliding_window_type == "count"
        self._codes = bytearray() if counted else None
        self._io_lock = threading.Lock()
        self._adopt_lock = threading.Lock()
        self._version = 0
        self._fleet_state = CircuitState.CLOSED
        self._leases: dict[int, list[tuple[str, int]]] = {}
        self._pending_reset = False
        self._pending_calls = self._pending_failures = self._pending_slow = 0
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
        except Unavailable:
            return None
        shared, flag, granted = parse_reply(reply)
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
            except Unavailable:
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
                codes = self._codes
                if codes is not None:  # digits as in lua/window.lua
                    codes.append(48 + (not success) + 2 * slow)
                    if len(codes) > 2 * self._window_size:
                        del codes[: -self._window_size]
            elif success:
                self._pending_reset = True
            else:
                self._pending_failures += 1
        if success:
            return True
        try:
            self.flush()
        except Unavailable:
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
        except Unavailable:
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
        """Send batched outcomes (raises :class:`Unavailable`)."""
        store = self._store
        with self._io_lock:
            with self._adopt_lock:
                reset, failures = self._pending_reset, self._pending_failures
                calls, slow = self._pending_calls, self._pending_slow
                codes = "" if self._codes is None else self._codes[-self._window_size :].decode()
                self._drop_pending()
            if not (reset or failures or calls):
                return
            args = [*self._args, "closed", int(reset), failures, calls, slow, codes]
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
        except Unavailable:
            return
        if mode == "operate":
            self._pending_operator = None
        shared, flag, _ = parse_reply(reply)
        self._check_flag(flag)
        if initial:
            with self._adopt_lock:
                self._version = shared.version
                self._fleet_state = shared.state
                self._breaker.adopt(shared)  # a first state is no transition: not announced
            return
        # A key that does not exist has version 0: adopt it only if nothing newer came in.
        self.adopt(shared, force=shared.version == 0 and self._version == version)

    def enter_outage(self) -> None:
        """Redis is unreachable: drop batched outcomes and apply ``on_outage``."""
        with self._adopt_lock:
            self._drop_pending()
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
        shared, flag, _ = parse_reply(reply)
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
        self._drop_pending()
        self._pending_operator = None

    def _drop_pending(self) -> None:
        """Forget the batched outcomes (sent, or lost to an outage). Adopt lock held."""
        self._pending_reset = False
        self._pending_failures = self._pending_calls = self._pending_slow = 0
        if self._codes is not None:
            self._codes.clear()

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
        shared, flag, _ = parse_reply(reply)
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
