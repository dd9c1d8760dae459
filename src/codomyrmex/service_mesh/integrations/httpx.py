"""httpx transports that send ``http://<service>/...`` requests through the mesh.

    mesh.register_service(ServiceProxy("orders", balancer, breaker, policy))
    with httpx.Client(transport=MeshTransport(mesh)) as client:
        client.get("http://orders/items/1")

The URL's host names a service. Each attempt goes to an instance picked by that
service's load balancer (scheme and path kept, host and port rewritten), runs
through the service's circuit breaker with the connection counted, and is
retried by its retry policy (``ServiceProxy.call``). The ``Host`` header keeps
the service name, as a reverse proxy would, unless ``host_header="instance"``.

What fails an attempt: any error of the inner transport (connection refused or
dropped, timeouts) and a response whose status is in ``failure_statuses``
(502, 503, 504 by default). Such a response is read in full (error pages are
small) and raised inside the stack as :class:`FailureStatus`, so the breaker
counts it and the policy retries it, after ``Retry-After`` (seconds or an HTTP
date; the policy caps it at ``max_delay``) when the server sent one. When the
stack gives up, the last such response is returned to the caller as a
response, never turned into an exception; other failures are raised as they are.

Only ``retry_methods`` (GET, HEAD, OPTIONS, PUT, DELETE by default) are retried.
Other methods, and any request whose body is a stream that cannot be sent twice,
get exactly one attempt, still balanced, counted and behind the breaker.

The policy's ``attempt_timeout`` and what is left of its ``max_elapsed`` cap the
httpx timeouts (connect, read, write, pool) of every attempt; the async
transport also bounds each attempt as a whole, and gives httpx 90% of that
limit so that a timeout is normally raised inside the instance breaker.

A host that names no service raises :class:`UnknownServiceError`, unless
``passthrough=True``, which sends such requests unchanged through the inner
transport (one client for mesh services and ordinary URLs). Failing closed is
the default because a mistyped service name would otherwise go out to DNS.

``instance_breaker=CircuitBreakerConfig(...)`` adds a breaker per instance, named
``"<service>/<instance id>"`` (registered in the mesh when the transport was
given one). No attempt is ever sent to an instance whose breaker refuses it: the
attempt moves on to another instance at once (as :class:`InstanceCircuitOpen`,
retried without delay). While an instance's breaker is OPEN the instance is
marked unhealthy in its balancer, and it is marked healthy again once the
breaker admits probes. Give the service's own breaker
``ignore_exceptions=(InstanceCircuitOpen,)`` so such refusals do not count
against the whole service.

A transport owns its inner transport (``httpx.HTTPTransport()`` by default) and
closes it when it is closed, as ``httpx.Client`` does with its transport; closing
also puts back into their balancers the instances it had taken out.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timezone
from typing import Literal, TypeAlias

from ._extras import missing_extra

try:
    import httpx
except ImportError as exc:
    raise missing_extra(__name__, "httpx", exc) from exc

from ..circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState, StateListener
from ..errors import CircuitOpenError, ServiceMeshError
from ..load_balancer import LoadBalancer, ServiceInstance
from ..mesh import Mesh
from ..proxy import ServiceProxy

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "IDEMPOTENT_METHODS",
    "AsyncMeshTransport",
    "FailureStatus",
    "InstanceCircuitOpen",
    "MeshTransport",
    "UnknownServiceError",
    "parse_retry_after",
]

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
"""The methods retried by default: sending them twice has the effect of sending them once."""

DEFAULT_FAILURE_STATUSES: frozenset[int] = frozenset({502, 503, 504})
"""Response statuses that fail an attempt by default: the server side is unavailable."""

Services: TypeAlias = "ServiceProxy | Mesh | Mapping[str, ServiceProxy]"
"""What a transport routes to: one proxy, a mesh's services, or proxies by service name."""

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")
_HTTPX_SHARE = 0.9  # of an async attempt's time limit, for its httpx timeouts


class FailureStatus(httpx.HTTPStatusError):
    """A response whose status fails the attempt; raised inside the stack, never out of it.

    ``retry_after`` is the server's ``Retry-After`` in seconds (None without one):
    the retry policy's default predicate waits that long before the next attempt.
    """

    def __init__(
        self, request: httpx.Request, response: httpx.Response, retry_after: float | None
    ) -> None:
        super().__init__(
            f"{response.status_code} from {request.url}", request=request, response=response
        )
        self.retry_after = retry_after


class InstanceCircuitOpen(ServiceMeshError):
    """An instance's own breaker refused an attempt; nothing was sent, try another instance."""

    retryable = True  # on another instance: unlike the mesh's other rejections

    def __init__(self, error: CircuitOpenError) -> None:
        super().__init__(error)
        self.error = error
        self.retry_after = 0.0  # nothing was sent: the policy retries on another instance at once

    def __str__(self) -> str:
        return f"instance circuit {self.error.name!r} is {self.error.state.value}"


class UnknownServiceError(ServiceMeshError, httpx.TransportError):
    """The request's host names no service of the transport (and passthrough is off)."""

    def __init__(self, host: str, request: httpx.Request) -> None:
        httpx.TransportError.__init__(
            self, f"no mesh service named {host!r} for {request.url}", request=request
        )
        self.host = host


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait for a ``Retry-After`` value (delta seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class _Call:
    """One request's way through the stack: what every attempt needs, and the last bad answer."""

    __slots__ = ("failed", "proxy", "request", "started")

    def __init__(self, request: httpx.Request, proxy: ServiceProxy) -> None:
        self.request = request
        self.proxy = proxy
        policy = proxy.retry_policy
        self.started = None if policy.max_elapsed is None else policy.clock()
        # The last response with a failure status (fully read, so its connection is free).
        self.failed: httpx.Response | None = None

    def attempt_limit(self) -> float | None:
        """Seconds the next attempt may take: ``attempt_timeout`` within the overall deadline."""
        policy = self.proxy.retry_policy
        limit = policy.attempt_timeout
        if self.started is not None and policy.max_elapsed is not None:
            remaining = max(0.001, policy.max_elapsed - (policy.clock() - self.started))
            limit = remaining if limit is None else min(limit, remaining)
        return limit


class _Router:
    """What the sync and async transports share: routing, rewriting, judging, ejecting."""

    __slots__ = (
        "_breakers",
        "_ejected",
        "_failure_statuses",
        "_instance_breaker",
        "_instance_host",
        "_listeners",
        "_lock",
        "_mesh",
        "_proxies",
        "_retry_methods",
    )

    def __init__(
        self,
        services: Services,
        failure_statuses: Iterable[int],
        retry_methods: Iterable[str],
        instance_breaker: CircuitBreakerConfig | None,
        host_header: Literal["service", "instance"],
    ) -> None:
        self._mesh: Mesh | None = None
        self._proxies: dict[str, ServiceProxy] = {}
        if isinstance(services, Mesh):
            self._mesh = services
        elif isinstance(services, ServiceProxy):
            self._proxies[services.service_name.lower()] = services
        elif isinstance(services, Mapping):
            for name, proxy in services.items():
                if not isinstance(name, str) or not isinstance(proxy, ServiceProxy):
                    raise TypeError(
                        f"services must map names to ServiceProxy, got {name!r}: {proxy!r}"
                    )
                self._proxies[name.lower()] = proxy
        else:
            raise TypeError(
                f"services must be a ServiceProxy, a Mesh or a mapping, got {services!r}"
            )
        statuses = frozenset(failure_statuses)
        if not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
            raise ValueError(f"failure_statuses must be HTTP statuses, got {failure_statuses!r}")
        self._failure_statuses = statuses
        methods = frozenset(m.upper() for m in retry_methods)
        self._retry_methods = methods
        if instance_breaker is not None and not isinstance(instance_breaker, CircuitBreakerConfig):
            raise TypeError(
                f"instance_breaker must be a CircuitBreakerConfig, got {instance_breaker!r}"
            )
        self._instance_breaker = instance_breaker
        if host_header not in ("service", "instance"):
            raise ValueError(f"host_header must be 'service' or 'instance', got {host_header!r}")
        self._instance_host = host_header == "instance"
        self._lock = threading.Lock()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        # Instances this transport marked unhealthy, with the breaker that will let them back.
        self._ejected: dict[tuple[str, str], tuple[LoadBalancer, CircuitBreaker]] = {}
        self._listeners: list[tuple[CircuitBreaker, StateListener]] = []

    # -- routing ------------------------------------------------------------------

    def lookup(self, host: str) -> ServiceProxy | None:
        """The proxy of the service named ``host`` (case-insensitive), or None."""
        mesh = self._mesh
        if mesh is None:
            return self._proxies.get(host.lower())
        proxy = mesh.get_service(host)
        if proxy is None:
            for name, candidate in mesh.services().items():
                if name.lower() == host.lower():
                    return candidate
        return proxy

    def may_retry(self, request: httpx.Request) -> bool:
        """Whether the request may be sent more than once (method allowed, body replayable)."""
        if request.method not in self._retry_methods:
            return False
        if isinstance(request.stream, httpx.ByteStream):
            return True
        try:
            request.content  # noqa: B018 - read already: the body is in memory
        except httpx.RequestNotRead:
            return False
        return True

    def attempt_request(
        self, call: _Call, instance: ServiceInstance, share: float = 1.0
    ) -> httpx.Request:
        """The original request aimed at ``instance``, with ``share`` of this attempt's time."""
        request = call.request
        url = request.url.copy_with(host=instance.host, port=instance.port)
        extensions = dict(request.extensions)
        limit = call.attempt_limit()
        if limit is not None:
            limit *= share
            current = extensions.get("timeout") or {}
            extensions["timeout"] = {
                key: limit if current.get(key) is None else min(current[key], limit)
                for key in _TIMEOUT_KEYS
            }
        if url.scheme == "https":
            extensions.setdefault("sni_hostname", request.url.host)
        headers = request.headers
        if self._instance_host:
            headers = headers.copy()
            headers["Host"] = instance.address
        return httpx.Request(
            request.method, url, headers=headers, stream=request.stream, extensions=extensions
        )

    def failure(self, request: httpx.Request, response: httpx.Response) -> FailureStatus | None:
        """The failure a response stands for, or None when its status is not a failure."""
        if response.status_code not in self._failure_statuses:
            return None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        # "Retry now" is left to the policy's backoff: a zero delay reads as "give up" to it.
        return FailureStatus(request, response, retry_after or None)

    @staticmethod
    def settle(exc: Exception, call: _Call) -> httpx.Response:
        """End a call the stack gave up on: the last failing response if any, else raise."""
        failed = call.failed
        if failed is not None and isinstance(exc, (FailureStatus, ServiceMeshError)):
            return failed
        if isinstance(exc, InstanceCircuitOpen):
            raise exc.error from exc.__cause__
        raise exc

    # -- per-instance breakers ----------------------------------------------------

    def instance_breaker(
        self, proxy: ServiceProxy, instance: ServiceInstance
    ) -> CircuitBreaker | None:
        """The breaker of ``instance`` (created on first use), or None when not configured."""
        config = self._instance_breaker
        if config is None:
            return None
        key = (proxy.service_name, instance.id)
        breaker = self._breakers.get(key)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                name = f"{proxy.service_name}/{instance.id}"
                if self._mesh is None:
                    breaker = CircuitBreaker(name, config)
                else:
                    breaker = self._mesh.circuit_breaker(name, config)
                balancer = proxy.load_balancer

                def eject_while_open(
                    cb: CircuitBreaker, old: CircuitState, new: CircuitState
                ) -> None:
                    self._on_transition(key, balancer, cb, new)

                breaker.add_listener(eject_while_open)
                self._breakers[key] = breaker
                self._listeners.append((breaker, eject_while_open))
        return breaker

    def _on_transition(
        self,
        key: tuple[str, str],
        balancer: LoadBalancer,
        breaker: CircuitBreaker,
        new: CircuitState,
    ) -> None:
        instance_id = key[1]
        if new is CircuitState.OPEN or new is CircuitState.FORCED_OPEN:
            instance = balancer.get(instance_id)
            if instance is not None and instance.healthy:
                with self._lock:
                    self._ejected[key] = (balancer, breaker)
                balancer.mark_healthy(instance_id, False)
        elif key in self._ejected:
            with self._lock:
                ejected = self._ejected.pop(key, None)
            if ejected is not None:
                balancer.mark_healthy(instance_id, True)

    def detach(self) -> None:
        """Stop watching the instance breakers and put back every instance this ejected."""
        with self._lock:
            listeners, self._listeners = self._listeners, []
            ejected, self._ejected = self._ejected, {}
        for breaker, listener in listeners:
            breaker.remove_listener(listener)
        for (_, instance_id), (balancer, _) in ejected.items():
            balancer.mark_healthy(instance_id, True)

    def reinstate_due(self) -> None:
        """Mark healthy again the ejected instances whose breaker now admits probes."""
        if not self._ejected:
            return
        with self._lock:
            ejected = list(self._ejected.items())
        for key, (balancer, breaker) in ejected:
            state = breaker.state  # reading it makes a due OPEN -> HALF_OPEN move
            if state is not CircuitState.OPEN and state is not CircuitState.FORCED_OPEN:
                with self._lock:
                    still = self._ejected.pop(key, None)
                if still is not None:
                    balancer.mark_healthy(key[1], True)


class MeshTransport(httpx.BaseTransport):
    """A sync httpx transport that sends each request through its service's proxy.

    ``services`` is a :class:`ServiceProxy` (requests to its service name), a
    :class:`Mesh` (its registered services, looked up per request) or a mapping
    of service name to proxy. See the module docstring for the rules.
    """

    def __init__(
        self,
        services: Services,
        *,
        transport: httpx.BaseTransport | None = None,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        instance_breaker: CircuitBreakerConfig | None = None,
        host_header: Literal["service", "instance"] = "service",
        passthrough: bool = False,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"transport must be an httpx.BaseTransport, got {transport!r}")
        self._router = _Router(
            services, failure_statuses, retry_methods, instance_breaker, host_header
        )
        self._inner = httpx.HTTPTransport() if transport is None else transport
        self._passthrough = bool(passthrough)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        router = self._router
        proxy = router.lookup(request.url.host)
        if proxy is None:
            if self._passthrough:
                return self._inner.handle_request(request)
            raise UnknownServiceError(request.url.host, request)
        router.reinstate_due()
        call = _Call(request, proxy)
        try:
            if router.may_retry(request):
                return proxy.call(self._attempt, call)
            return proxy.call_once(self._attempt, call)
        except Exception as exc:
            return router.settle(exc, call)

    def _attempt(self, instance: ServiceInstance, call: _Call) -> httpx.Response:
        """One attempt on the picked instance, behind its own breaker when there is one."""
        router = self._router
        request = router.attempt_request(call, instance)
        breaker = router.instance_breaker(call.proxy, instance)
        if breaker is None:
            return self._send(request, call)
        try:
            return breaker.execute(self._send, request, call)
        except CircuitOpenError as exc:
            if exc.name != breaker.name:
                raise
            raise InstanceCircuitOpen(exc) from None

    def _send(self, request: httpx.Request, call: _Call) -> httpx.Response:
        response = self._inner.handle_request(request)
        failure = self._router.failure(request, response)
        if failure is None:
            return response
        try:
            response.read()
        except BaseException:
            response.close()
            raise
        call.failed = response
        raise failure

    def close(self) -> None:
        self._router.detach()
        self._inner.close()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`MeshTransport`, for ``httpx.AsyncClient``."""

    def __init__(
        self,
        services: Services,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        instance_breaker: CircuitBreakerConfig | None = None,
        host_header: Literal["service", "instance"] = "service",
        passthrough: bool = False,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(f"transport must be an httpx.AsyncBaseTransport, got {transport!r}")
        self._router = _Router(
            services, failure_statuses, retry_methods, instance_breaker, host_header
        )
        self._inner = httpx.AsyncHTTPTransport() if transport is None else transport
        self._passthrough = bool(passthrough)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        router = self._router
        proxy = router.lookup(request.url.host)
        if proxy is None:
            if self._passthrough:
                return await self._inner.handle_async_request(request)
            raise UnknownServiceError(request.url.host, request)
        router.reinstate_due()
        call = _Call(request, proxy)
        try:
            if router.may_retry(request):
                return await proxy.call_async(self._attempt, call)
            return await proxy.call_once_async(self._attempt, call)
        except Exception as exc:
            return router.settle(exc, call)

    async def _attempt(self, instance: ServiceInstance, call: _Call) -> httpx.Response:
        """One attempt on the picked instance, behind its own breaker when there is one."""
        router = self._router
        limit = call.attempt_limit()
        # The httpx timeouts get a little less than the attempt's limit, so that a timeout is
        # raised here, inside the instance's breaker, before the limit cancels the attempt.
        request = router.attempt_request(call, instance, _HTTPX_SHARE)
        breaker = router.instance_breaker(call.proxy, instance)
        if breaker is None:
            return await self._send(request, call)
        try:
            if limit is None:
                return await breaker.execute_async(self._send, request, call)
            # The attempt's limit, a little early, inside the instance's breaker: running
            # out of time is a TimeoutError there (a failure), while a cancellation from
            # outside stays a cancellation (never a failure).
            return await breaker.execute_async(
                self._send_within, limit * _HTTPX_SHARE, request, call
            )
        except CircuitOpenError as exc:
            if exc.name != breaker.name:
                raise
            raise InstanceCircuitOpen(exc) from None

    async def _send_within(
        self, seconds: float, request: httpx.Request, call: _Call
    ) -> httpx.Response:
        return await asyncio.wait_for(self._send(request, call), seconds)

    async def _send(self, request: httpx.Request, call: _Call) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        failure = self._router.failure(request, response)
        if failure is None:
            return response
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        call.failed = response
        raise failure

    async def aclose(self) -> None:
        self._router.detach()
        await self._inner.aclose()
