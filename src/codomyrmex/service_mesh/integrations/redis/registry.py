"""A service registry in Redis: :class:`RedisRegistry` and the :class:`RegistryFollower`
that keeps a :class:`~codomyrmex.service_mesh.LoadBalancer` in step with it.

Instances are registered with a TTL and refreshed from a heartbeat; changes are
published, and followers resync every ``resync_interval`` (see the package's
docstring for the keys). The scripts are in ``lua/``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from ..._validate import check_number, check_str
from ...discovery import Resolver, close_at_shutdown
from ...discovery.codec import instance_from_json, instance_to_json
from ...errors import ServiceMeshError
from ...load_balancer import LoadBalancer, ServiceInstance
from .connection import (
    Backend,
    BackendOwner,
    RedisClient,
    Unavailable,
    check_prefix,
    logger,
    make_client,
    text,
)
from .scripts import lua_source

__all__ = ["RedisRegistry", "RegistryFollower", "RegistryUnavailableError"]

_REGISTER = lua_source("register")
_DEREGISTER = lua_source("deregister")
_LIST = lua_source("list")


class RegistryUnavailableError(ServiceMeshError):
    """A registry query could not reach Redis."""


def _instance_from_json(data: Any) -> ServiceInstance | None:
    return instance_from_json(data, log=logger)


class RedisRegistry(BackendOwner):
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
        self.prefix = check_prefix(prefix)
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
        self.client = make_client(client, timeout)
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
        self._backend = Backend(
            client=self.client,
            channel=self.channel,
            what="service registry",
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
        except Unavailable as exc:
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
        except Unavailable:
            pass
        return follower

    # -- plumbing ---------------------------------------------------------------------

    def _send(self, service: str, instance_id: str) -> None:
        try:
            self._send_strict(service, instance_id)
        except Unavailable:
            pass

    def _send_strict(self, service: str, instance_id: str) -> None:
        """Write an instance if this process still owns it (raises :class:`Unavailable`)."""
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
        except Unavailable:
            return False
        return True

    def _after_fork_in_child(self) -> None:
        """Locks a parent's thread held at the fork would stay held in the child."""
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()

    def _fetch(self, service: str) -> dict[str, str]:
        keys = self.keys(service)
        flat = self._backend.call(lambda: self._list(keys=keys, args=[self.channel, service]))
        return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}

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
        """Refresh this process's instances (raises :class:`Unavailable`)."""
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
        except Unavailable:
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
        except Unavailable as exc:
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
