"""A service registry in etcd v3: instances as keys under a lease, followers that watch.

    from codomyrmex.service_mesh.integrations.etcd import EtcdRegistry

    registry = EtcdRegistry("http://etcd:2379", ttl=10.0, deregister_on_sigterm=True)
    registry.register("orders", ServiceInstance("orders-1", "10.0.0.5", 8080))
    resolver = registry.follow("orders", balancer)   # a started discovery Resolver

**Registration.** Each registry grants one lease of ``ttl`` seconds and puts every
instance it registers as the key ``{prefix}svc/{service}/{id}`` (JSON value) under
that lease; a thread keeps the lease alive every ``keepalive_interval`` (a third of
``ttl`` by default). The key goes away when the lease expires (the process died or
hung), on :meth:`EtcdRegistry.close` (the lease is revoked; also run at interpreter
exit), and on SIGTERM with ``deregister_on_sigterm=True`` (see
:func:`codomyrmex.service_mesh.discovery.on_sigterm`). A lease etcd no longer knows
is granted afresh and the keys are put again. ``register`` never raises because etcd
is unreachable: the thread keeps trying, one WARNING per outage.

**Following.** :meth:`EtcdRegistry.follow` (or :class:`EtcdSource` with a
:class:`~codomyrmex.service_mesh.discovery.Resolver`) lists the service's keys once,
then *watches* them from the next revision: a put or a delete reaches the balancer as
soon as etcd sends it, and nothing is polled. After a compaction that outran the
watch, or a lost connection, the follower lists again (a full resync) and watches
from there; while etcd is unreachable the balancer keeps its last known instances.
An idle watch is also renewed with a resync every ``resync_interval``.

**Client.** etcd's own gRPC-JSON gateway (``/v3/...``, in every etcd since 3.4),
over httpx: no generated protobuf code, so nothing to break when grpcio or
protobuf move on. (``etcd3`` fails to import with today's protobuf; ``aetcd``
works, but is asyncio-only and brings grpcio with it.)
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ._extras import missing_extra

try:
    import httpx
except ImportError as exc:
    raise missing_extra(__name__, "etcd", exc) from exc

from .._validate import check_bool, check_instance, check_number, check_str
from ..discovery import ClosedOnExit, Resolver, close_at_shutdown
from ..discovery.codec import instance_from_json, instance_to_json
from ..errors import ServiceMeshError
from ..load_balancer import LoadBalancer, ServiceInstance

__all__ = ["EtcdGateway", "EtcdRegistry", "EtcdSource", "EtcdUnavailableError"]

logger = logging.getLogger("codomyrmex.service_mesh.etcd")


class EtcdUnavailableError(ServiceMeshError):
    """etcd could not be reached or refused a request."""


class _Compacted(Exception):
    """The watch's start revision was compacted away: list again."""


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(value: Any) -> str:
    return base64.b64decode(value or "").decode()


def _prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


class EtcdGateway:
    """The few etcd v3 calls discovery needs, through etcd's JSON gateway (thread-safe)."""

    def __init__(self, endpoint: str, *, timeout: float = 1.0) -> None:
        check_str("endpoint", endpoint)
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self.timeout = check_number("timeout", timeout, 0.001)
        self._client = httpx.Client(timeout=self.timeout)
        self._streams_lock = threading.Lock()
        self._streams: dict[int, Any] = {}  # id(stop event) -> the watch's socket

    def __repr__(self) -> str:
        return f"EtcdGateway({self.endpoint!r})"

    def close(self) -> None:
        self._client.close()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one request; raises :class:`EtcdUnavailableError` on any failure."""
        try:
            response = self._client.post(f"{self.endpoint}/v3/{path}", json=body)
            reply = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise EtcdUnavailableError(f"etcd {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200 or not isinstance(reply, dict) or "error" in reply:
            message = reply.get("message") if isinstance(reply, dict) else reply
            raise EtcdUnavailableError(f"etcd {path}: HTTP {response.status_code}: {message}")
        return reply

    def grant(self, ttl: float) -> int:
        return int(self.call("lease/grant", {"TTL": max(1, round(ttl))})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh a lease; its remaining TTL, 0 when etcd no longer has it."""
        reply = self.call("lease/keepalive", {"ID": str(lease)})
        return int(reply.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.call("lease/revoke", {"ID": str(lease)})

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            body["lease"] = str(lease)
        self.call("kv/put", body)

    def delete(self, key: str) -> bool:
        return int(self.call("kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0

    def compact(self, revision: int) -> None:
        self.call("kv/compaction", {"revision": str(revision)})

    def list_prefix(self, prefix: str) -> tuple[dict[str, str], int]:
        """Every key under ``prefix`` (key -> value) and the store's revision."""
        reply = self.call("kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
        revision = int(reply.get("header", {}).get("revision", 0))
        return {_unb64(kv["key"]): _unb64(kv.get("value")) for kv in reply.get("kvs", [])}, revision

    def watch(
        self, prefix: str, start_revision: int, *, idle: float, stop: threading.Event
    ) -> Iterator[tuple[int, list[tuple[str, str, str]]]]:
        """Yield (revision, [(PUT or DELETE, key, value)]) from ``start_revision`` on.

        Returns after ``idle`` quiet seconds; raises :class:`_Compacted` when the
        start revision is gone, :class:`EtcdUnavailableError` when the stream breaks.
        """
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(_prefix_end(prefix)),
                "start_revision": str(start_revision),
            }
        }
        timeout = httpx.Timeout(self.timeout, read=idle)
        try:
            with (
                httpx.Client(timeout=timeout) as client,
                client.stream("POST", f"{self.endpoint}/v3/watch", json=body) as response,
            ):
                if response.status_code != 200:
                    raise EtcdUnavailableError(f"etcd watch: HTTP {response.status_code}")
                stream = response.extensions.get("network_stream")
                sock = None if stream is None else stream.get_extra_info("socket")
                with self._streams_lock:
                    self._streams[id(stop)] = sock
                if stop.is_set():
                    return
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise EtcdUnavailableError(f"etcd watch: {message['error']}")
                    result = message.get("result", {})
                    if int(result.get("compact_revision", 0) or 0) > 0:
                        raise _Compacted(result["compact_revision"])
                    if result.get("canceled"):
                        raise EtcdUnavailableError(f"etcd watch canceled: {result}")
                    events = [
                        (
                            event.get("type", "PUT"),
                            _unb64(event["kv"]["key"]),
                            _unb64(event["kv"].get("value")),
                        )
                        for event in result.get("events", [])
                    ]
                    revision = int(result.get("header", {}).get("revision", 0))
                    if events:
                        yield revision, events
        except httpx.ReadTimeout:
            return  # idle: the caller resyncs and watches again
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            if stop.is_set():
                return
            raise EtcdUnavailableError(f"etcd watch: {type(exc).__name__}: {exc}") from exc
        finally:
            with self._streams_lock:
                self._streams.pop(id(stop), None)

    def interrupt(self, stop: threading.Event) -> None:
        """End the watch started with ``stop`` (already set) now rather than at its idle timeout."""
        with self._streams_lock:
            sock = self._streams.get(id(stop))
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class EtcdSource:
    """A discovery source: one service's keys in etcd, listed then watched."""

    def __init__(
        self,
        gateway: EtcdGateway,
        service: str,
        *,
        prefix: str = "/mesh/",
        resync_interval: float = 30.0,
        retry_interval: float = 0.5,
    ) -> None:
        check_instance("gateway", gateway, EtcdGateway)
        self.gateway = gateway
        self.service = check_str("service", service)
        self.keys = f"{check_str('prefix', prefix)}svc/{service}/"
        self.resync_interval = check_number("resync_interval", resync_interval, 0.01)
        self.retry_interval = check_number("retry_interval", retry_interval, 0.001)
        self.revision = 0
        """The last revision applied (0: none yet)."""
        self.resyncs = 0
        """Full listings done so far (the first, and one after each compaction or outage)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def description(self) -> str:
        return f"etcd {self.gateway.endpoint} {self.keys}"

    def __repr__(self) -> str:
        return f"EtcdSource({self.description!r})"

    def refresh(self, resolver: Resolver) -> None:
        listed, revision = self.gateway.list_prefix(self.keys)
        instances = []
        for key, value in listed.items():
            instance = instance_from_json(value)
            if instance is not None and instance.id == key[len(self.keys) :]:
                instances.append(instance)
        resolver.replace(instances)
        self.revision = revision
        self.resyncs += 1

    def start(self, resolver: Resolver) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(resolver, self._stop), name=self.description, daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            stop = self._stop
            stop.set()
            thread, self._thread = self._thread, None
        self.gateway.interrupt(stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.resync_interval + 5.0)

    def _run(self, resolver: Resolver, stop: threading.Event) -> None:
        listed = self.revision > 0  # resuming: watch on from the last revision applied
        while not stop.is_set():
            try:
                if not listed:
                    self.refresh(resolver)
                    listed = True
                for revision, events in self.gateway.watch(
                    self.keys, self.revision + 1, idle=self.resync_interval, stop=stop
                ):
                    self._apply(resolver, events)
                    self.revision = max(self.revision, revision)
                listed = False  # idle (or stopping): list again before the next watch
            except _Compacted as exc:
                logger.info("%s: revision compacted (%s); listing again", self.description, exc)
                listed = False
            except EtcdUnavailableError as exc:
                if stop.is_set():
                    return
                resolver.failed(exc)
                listed = False
                stop.wait(self.retry_interval)
            except Exception:
                logger.exception("%s: applying a watch event raised", self.description)
                listed = False
                stop.wait(self.retry_interval)

    def _apply(self, resolver: Resolver, events: list[tuple[str, str, str]]) -> None:
        for kind, key, value in events:
            instance_id = key[len(self.keys) :]
            if kind == "DELETE":
                resolver.remove(instance_id)
                continue
            instance = instance_from_json(value)
            if instance is not None and instance.id == instance_id:
                resolver.upsert(instance)


class EtcdRegistry(ClosedOnExit):
    """This process's instances in etcd under one lease; followers for any service.

    - ``ttl``: seconds an instance outlives its process's last keepalive.
    - ``keepalive_interval``: defaults to a third of ``ttl``.
    - ``timeout``: seconds for one etcd request.
    - ``deregister_at_exit``: revoke the lease at interpreter exit (default).
    - ``deregister_on_sigterm``: revoke it on SIGTERM too, then let the signal do
      what it did before (construct the registry on the main thread).
    """

    def __init__(
        self,
        endpoint: str = "http://127.0.0.1:2379",
        *,
        prefix: str = "/mesh/",
        ttl: float = 10.0,
        keepalive_interval: float | None = None,
        timeout: float = 1.0,
        retry_interval: float = 0.5,
        deregister_at_exit: bool = True,
        deregister_on_sigterm: bool = False,
    ) -> None:
        self.prefix = check_str("prefix", prefix)
        self.ttl = check_number("ttl", ttl, 1.0)
        beat = self.ttl / 3 if keepalive_interval is None else keepalive_interval
        self.keepalive_interval = check_number("keepalive_interval", beat, 0.001)
        if self.keepalive_interval >= self.ttl:
            raise ValueError(
                f"keepalive_interval must be shorter than ttl ({ttl!r}), got {keepalive_interval!r}"
            )
        self.retry_interval = check_number("retry_interval", retry_interval, 0.001)
        check_bool("deregister_at_exit", deregister_at_exit)
        check_bool("deregister_on_sigterm", deregister_on_sigterm)
        self.gateway = EtcdGateway(endpoint, timeout=timeout)
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()  # around lease and key writes, so a removal is last
        self._own: dict[tuple[str, str], str] = {}
        # Writes and deletes that failed (etcd unreachable) while a lease was held: the
        # next keepalive beat redoes them, since the lease it renews would not.
        self._unsynced: set[tuple[str, str]] = set()
        self._lease: int | None = None
        self._online = True
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resolvers: list[Resolver] = []
        self._undo = close_at_shutdown(
            self, at_exit=deregister_at_exit, sigterm=deregister_on_sigterm
        )

    def __repr__(self) -> str:
        return f"EtcdRegistry({self.gateway.endpoint!r}, ttl={self.ttl}, online={self._online})"

    @property
    def online(self) -> bool:
        """Whether etcd answered the last keepalive or write."""
        return self._online

    @property
    def lease(self) -> int | None:
        """The lease this process's keys live under (None until granted)."""
        return self._lease

    def key(self, service: str, instance_id: str) -> str:
        return f"{self.prefix}svc/{service}/{instance_id}"

    # -- this process's instances -------------------------------------------------------

    def register(self, service: str, instance: ServiceInstance) -> None:
        """Put ``instance`` under ``service`` and keep it alive until deregistered."""
        check_str("service", service)
        check_instance("instance", instance, ServiceInstance)
        with self._lock:
            if self._closed:
                raise RuntimeError("this registry is closed")
            self._own[service, instance.id] = instance_to_json(instance)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._keepalive, name="etcd registry keepalive", daemon=True
                )
                self._thread.start()
        self._guarded(lambda: self._write(service, instance.id))

    def deregister(self, service: str, instance_id: str) -> bool:
        """Delete an instance this process registered; False if it had not."""
        with self._lock:
            if self._own.pop((service, instance_id), None) is None:
                return False
        self._guarded(lambda: self._delete(service, instance_id))
        return True

    def close(self) -> None:
        """Revoke the lease (every key of this process goes at once) and stop the threads."""
        with self._lock:
            closed, self._closed = self._closed, True
            if closed:
                return
            self._own.clear()
            resolvers, self._resolvers = self._resolvers, []
        self._stop.set()
        with self._io_lock:
            lease, self._lease = self._lease, None
            if lease is not None:
                try:
                    self.gateway.revoke(lease)
                except EtcdUnavailableError as exc:
                    logger.warning("etcd registry: could not revoke lease on close (%s)", exc)
        for resolver in resolvers:
            resolver.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._undo()
        self.gateway.close()

    # -- everyone's instances ---------------------------------------------------------

    def instances(self, service: str) -> list[ServiceInstance]:
        """The instances listed under ``service`` now (EtcdUnavailableError if unreachable)."""
        prefix = f"{self.prefix}svc/{service}/"
        listed, _ = self.gateway.list_prefix(prefix)
        return [inst for value in listed.values() if (inst := instance_from_json(value))]

    def source(self, service: str, **options: Any) -> EtcdSource:
        """An :class:`EtcdSource` for ``service`` (options: resync_interval, retry_interval)."""
        return EtcdSource(self.gateway, service, prefix=self.prefix, **options)

    def follow(
        self, service: str, balancer: LoadBalancer, *, start: bool = True, **options: Any
    ) -> Resolver:
        """A resolver keeping ``balancer`` in step with ``service`` (stopped by ``close``).

        ``options`` go to the :class:`Resolver`; by default removals wait ``ttl``
        after an outage, an empty service may empty the balancer, and the
        registered ``healthy`` flag is applied.
        """
        options.setdefault("removal_grace", self.ttl)
        options.setdefault("allow_empty", True)
        options.setdefault("update_health", True)
        resolver = Resolver(self.source(service), balancer, **options)
        with self._lock:
            self._resolvers.append(resolver)
        if start:
            resolver.start()
        return resolver

    # -- plumbing ---------------------------------------------------------------------

    def _guarded(self, op: Callable[[], None]) -> None:
        try:
            op()
        except EtcdUnavailableError as exc:
            self._failed(exc)
        else:
            self._recovered()

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            first = self._online
            self._online = False
        if first:
            logger.warning(
                "etcd registry: etcd unavailable (%s); retrying every %.2f s",
                exc,
                self.retry_interval,
                extra={"etcd_outage": True},
            )

    def _recovered(self) -> None:
        with self._lock:
            back = not self._online
            self._online = True
        if back:
            logger.info("etcd registry: etcd reachable again")

    def _ensure_lease(self) -> int:
        """The current lease, granted (and every key put under it) when there is none."""
        if self._lease is not None:
            return self._lease
        lease = self.gateway.grant(self.ttl)
        self._lease = lease
        with self._lock:
            own = list(self._own.items())
        for (service, instance_id), value in own:
            self.gateway.put(self.key(service, instance_id), value, lease)
        return lease

    def _sync(self, service: str, instance_id: str) -> None:
        """Make etcd hold what ``_own`` says of one key (io lock held); on an outage,
        remember the key for the next beat."""
        self._unsynced.add((service, instance_id))
        with self._lock:
            value = self._own.get((service, instance_id))
        if value is not None:
            self.gateway.put(self.key(service, instance_id), value, self._ensure_lease())
        else:  # deregistered (meanwhile): writing it would bring it back
            self.gateway.delete(self.key(service, instance_id))
        self._unsynced.discard((service, instance_id))

    def _write(self, service: str, instance_id: str) -> None:
        with self._io_lock:
            if not self._closed:
                self._sync(service, instance_id)

    def _delete(self, service: str, instance_id: str) -> None:
        with self._io_lock:
            self._sync(service, instance_id)

    def _beat(self) -> None:
        with self._io_lock:
            if self._closed:
                return
            if self._lease is None or self.gateway.keepalive(self._lease) <= 0:
                if self._lease is not None:
                    logger.warning("etcd registry: lease %x expired; putting back", self._lease)
                self._lease = None
                self._ensure_lease()  # every key put again under the new lease
                with self._lock:
                    self._unsynced = {key for key in self._unsynced if key not in self._own}
            for service, instance_id in list(self._unsynced):
                self._sync(service, instance_id)

    def _keepalive(self) -> None:
        while True:
            interval = self.keepalive_interval if self._online else self.retry_interval
            if self._stop.wait(interval):
                return
            self._guarded(self._beat)
