"""httpx transports that send ``http://<service>/...`` requests through the mesh.

    mesh.register_service(ServiceProxy("orders", balancer, breaker, policy))
    with httpx.Client(transport=MeshTransport(mesh)) as client:
        client.get("http://orders/items/1")

The URL's host names a service. Each attempt goes to an instance picked by that
service's load balancer (scheme and path kept, host and port rewritten), runs
through the service's circuit breaker with the connection counted, and is
retried by its retry policy (``ServiceProxy.call``). The ``Host`` header keeps
the service name, as a reverse proxy would, unless ``host_header="instance"``.

The protocol semantics (what fails an attempt, what is retried, Retry-After,
timeouts, per-instance ejection) are those of :mod:`.protocol`, shared by every
client integration. What fails an attempt: any error of the inner transport
(connection refused or dropped, timeouts) and a response whose status is in
``failure_statuses`` (500, 502, 503, 504 by default: ``DEFAULT_FAILURE_STATUSES``).
Such a response is read in full (error pages are small) and raised inside the
stack as :class:`FailureStatus`, so the breaker counts it and the policy retries
it, after ``Retry-After`` (seconds or an HTTP date; the policy caps it at
``max_delay``) when the server sent one. When the
stack gives up, the last such response is returned to the caller as a
response, never turned into an exception; other failures are raised as they are.

Only ``retry_methods`` (GET, HEAD, OPTIONS, TRACE, PUT, DELETE by default) are retried.
Other methods, and any request whose body is a stream that cannot be sent twice,
get exactly one attempt, still balanced, counted and behind the breaker.

Every call has an attempt timeout and an overall deadline (:class:`.protocol.Timeouts`):
by default the attempt gets the request's httpx timeout (the longest of connect,
read, write and pool; httpx's default is 5 s) and the call three times that; the
policy's ``attempt_timeout`` / ``max_elapsed`` or ``timeouts=Timeouts(...)`` set
them instead. The attempt's limit caps the httpx timeouts (connect, read, write,
pool) of every attempt, which httpx enforces; the async transport gives httpx 90%
of it, so that a timeout is raised inside the instance breaker before a policy's
``attempt_timeout`` would cancel the attempt from outside (with such a policy, each
async attempt is also bounded as a whole). No attempt starts once the deadline has
passed.

A host that names no service raises :class:`UnknownServiceError`, unless
``passthrough=True``, which sends such requests unchanged through the inner
transport (one client for mesh services and ordinary URLs). Failing closed is
the default because a mistyped service name would otherwise go out to DNS.

``instance_breaker=CircuitBreakerConfig(...)`` adds a breaker per instance, named
``"<service>/<instance id>"`` (registered in the mesh when the transport was
given one). No attempt is ever sent to an instance whose breaker refuses it: the
attempt moves on to another instance at once (as :class:`InstanceCircuitOpen`,
retried without delay). While an instance's breaker is OPEN the instance is
ejected from its balancer (:meth:`LoadBalancer.eject`; its ``healthy`` flag,
the operator's and the health checker's, is never touched), and it returns
once the breaker admits probes. Give the service's own breaker
``ignore_exceptions=(InstanceCircuitOpen,)`` so such refusals do not count
against the whole service.

A transport owns its inner transport (``httpx.HTTPTransport()`` by default) and
closes it when it is closed, as ``httpx.Client`` does with its transport; closing
also puts back into their balancers the instances it had taken out.

The success path is kept lean: the instance URL is made by replacing host and
port in httpx's already parsed URL (cached per instance) instead of re-parsing
the whole URL with ``URL.copy_with``; if httpx's URL internals ever differ from
what this expects, it falls back to ``copy_with``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

from ._extras import missing_extra

try:
    import httpx
except ImportError as exc:
    raise missing_extra(__name__, "httpx", exc) from exc

from ..circuit_breaker import CircuitBreakerConfig
from ..load_balancer import ServiceInstance
from .protocol import InstanceCircuitOpen, parse_retry_after, trace_headers, within
from .protocol.core import FailureResponse, Services, UnknownService
from .protocol.http import HttpClient
from .protocol.semantics import DEFAULT_FAILURE_STATUSES, IDEMPOTENT_METHODS, HttpSemantics
from .protocol.timeouts import CallState, Timeouts

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "IDEMPOTENT_METHODS",
    "AsyncMeshTransport",
    "FailureStatus",
    "InstanceCircuitOpen",
    "MeshTransport",
    "Timeouts",
    "UnknownServiceError",
    "parse_retry_after",
]

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")
_HTTPX_SHARE = 0.9  # of an async attempt's time limit, for its httpx timeouts


class FailureStatus(httpx.HTTPStatusError, FailureResponse):
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
        self.status = response.status_code
        self.retry_after = retry_after


class UnknownServiceError(UnknownService, httpx.TransportError):
    """The request's host names no service of the transport (and passthrough is off)."""

    def __init__(self, host: str, request: httpx.Request) -> None:
        httpx.TransportError.__init__(
            self, f"no mesh service named {host!r} for {request.url}", request=request
        )
        self.host = host


def _client_timeout(timeout: Any) -> tuple[float | None, bool]:
    """An httpx timeout extension as one number (the longest phase set, or None), and
    whether every phase is set (then that number bounds each phase)."""
    if not timeout:
        return None, False
    phases = (
        timeout.get("connect"),
        timeout.get("read"),
        timeout.get("write"),
        timeout.get("pool"),
    )
    if None not in phases:
        return max(phases), True  # httpx's default: every phase set
    return max((phase for phase in phases if phase is not None), default=None), False


class _Urls:
    """Instance URLs made from a request's parsed URL without re-parsing it.

    httpx keeps a URL's parsed parts in a named tuple; replacing its host and port
    (normalised once per instance by ``copy_with``) gives the same URL as
    ``copy_with(host=..., port=...)`` at a fraction of the cost. The URLs made are
    kept (immutable; a bounded cache keyed by the parsed URL and the instance), so a
    path called again costs one dictionary lookup.
    """

    __slots__ = ("_made", "_parts", "fast")

    _FIELDS = ("scheme", "userinfo", "host", "port", "path", "query", "fragment")
    MAX_CACHED = 1024

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._made: dict[tuple[Any, str, int], tuple[httpx.URL, bool]] = {}
        probe = getattr(httpx.URL("http://probe.invalid:1/"), "_uri_reference", None)
        self.fast = getattr(type(probe), "_fields", None) == self._FIELDS

    def to(self, url: httpx.URL, instance: ServiceInstance) -> tuple[httpx.URL, bool]:
        """``url`` aimed at ``instance``, and whether it is https."""
        if not self.fast:
            made = url.copy_with(host=instance.host, port=instance.port)
            return made, made.scheme == "https"
        ref = url._uri_reference
        key = (ref, instance.host, instance.port)
        known = self._made.get(key)
        if known is not None:
            return known
        where = (ref.scheme, instance.host, instance.port)
        parts = self._parts.get(where)
        if parts is None:
            made = url.copy_with(host=instance.host, port=instance.port)
            self._parts[where] = (made._uri_reference.host, made._uri_reference.port)
        else:
            made = httpx.URL.__new__(httpx.URL)
            made._uri_reference = type(ref)(
                ref.scheme, ref.userinfo, parts[0], parts[1], ref.path, ref.query, ref.fragment
            )
        if len(self._made) >= self.MAX_CACHED:
            self._made.clear()
        known = self._made[key] = (made, ref.scheme == "https")
        return known


class _Transport:
    """What the sync and async transports share: routing, requests per attempt, failures."""

    _inner_type: type[Any]
    _default_inner: Callable[[], Any]

    def __init__(
        self,
        services: Services,
        *,
        transport: Any = None,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        instance_breaker: CircuitBreakerConfig | None = None,
        host_header: Literal["service", "instance"] = "service",
        passthrough: bool = False,
        timeouts: Timeouts | None = None,
    ) -> None:
        if transport is not None and not isinstance(transport, self._inner_type):
            raise TypeError(
                f"transport must be an httpx.{self._inner_type.__name__}, got {transport!r}"
            )
        self._http: HttpClient[httpx.Response] = HttpClient(
            services,
            semantics=HttpSemantics.of(failure_statuses, retry_methods),
            instance_breaker=instance_breaker,
            host_header=host_header,
            passthrough=bool(passthrough),
            timeouts=timeouts,
        )
        self._core = self._http.core
        self._failing = self._http.semantics.failure_statuses
        self.instance_host = self._http.instance_host
        self.urls = _Urls()
        self._last_timeout: tuple[Any, float | None, bool] = (None, None, False)
        self._last_capped: tuple[Any, float, dict[str, float]] = (None, -1.0, {})
        self._inner = type(self)._default_inner() if transport is None else transport

    def _start(self, request: httpx.Request) -> CallState | None:
        """The call's state, or None to pass the request through unchanged."""
        proxy = self._http.route(request.url.host, UnknownServiceError, request)
        if proxy is None:
            return None
        timeout = request.extensions.get("timeout")
        last = self._last_timeout  # the client's timeout is the same from call to call
        if timeout == last[0]:
            longest, every_phase = last[1], last[2]
        else:
            longest, every_phase = _client_timeout(timeout)
            self._last_timeout = (timeout, longest, every_phase)
        call = self._core.start(proxy, request, longest)
        if not every_phase:
            call.client_timeout = None  # no bound on every phase: attempt_request caps them
        return call

    def _may_retry(self, request: httpx.Request) -> bool:
        """Whether the request may be sent more than once (method allowed, body replayable)."""
        if request.method not in self._http.semantics.retry_methods:
            return False
        if isinstance(request.stream, httpx.ByteStream):
            return True
        try:
            request.content  # noqa: B018 - read already: the body is in memory
        except httpx.RequestNotRead:
            return False
        return True

    def attempt_request(
        self, call: CallState, instance: ServiceInstance, share: float = 1.0
    ) -> httpx.Request:
        """The original request aimed at ``instance``, with ``share`` of this attempt's time.

        A shallow copy (the original's headers, stream and extensions are shared until
        one of them has to change): building a new ``httpx.Request`` would re-run its
        header preparation for nothing.
        """
        request: httpx.Request = call.request
        url, https = self.urls.to(request.url, instance)
        extensions = request.extensions
        limit = call.limit() * share
        bound = call.client_timeout  # set when it bounds every phase of the request
        if bound is None or bound > limit:
            extensions = dict(extensions)
            extensions["timeout"] = self._capped(extensions.get("timeout"), limit)
        if https and "sni_hostname" not in extensions:
            extensions = dict(extensions)
            extensions["sni_hostname"] = request.url.host
        made = httpx.Request.__new__(httpx.Request)
        made.__dict__.update(request.__dict__)
        made.url = url
        made.extensions = extensions
        traced = trace_headers()
        if self.instance_host or traced is not None:
            headers = request.headers.copy()
            if self.instance_host:
                headers["Host"] = instance.address
            if traced is not None:  # W3C trace context, once tracing is imported
                headers.update(traced)
            made.headers = headers
        return made

    def _capped(self, timeout: Any, limit: float) -> dict[str, float]:
        """The httpx timeout ``timeout`` with every phase capped at ``limit`` (kept for the
        next call with the same timeout and limit, as on every first attempt)."""
        last = self._last_capped
        if limit == last[1] and timeout == last[0]:
            return last[2]
        timeout = timeout or {}
        capped = {
            key: limit if timeout.get(key) is None else min(timeout[key], limit)
            for key in _TIMEOUT_KEYS
        }
        self._last_capped = (timeout, limit, capped)
        return capped

    def _failure(self, request: httpx.Request, response: httpx.Response) -> FailureStatus:
        """The failure a response with a failure status stands for."""
        return FailureStatus(request, response, self._http.retry_after(response.headers))


class MeshTransport(_Transport, httpx.BaseTransport):
    """A sync httpx transport that sends each request through its service's proxy.

    ``services`` is a :class:`ServiceProxy` (requests to its service name), a
    :class:`Mesh` (its registered services, looked up per request) or a mapping
    of service name to proxy. ``transport`` is the inner ``httpx.BaseTransport``
    (``httpx.HTTPTransport()`` by default). See the module docstring for the rules.
    """

    _inner_type = httpx.BaseTransport
    _default_inner = httpx.HTTPTransport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = self._start(request)
        if call is None:
            return self._inner.handle_request(request)  # type: ignore[no-any-return]
        return self._core.run(self._attempt, call, self._may_retry(request))

    def _attempt(self, instance: ServiceInstance, call: CallState) -> httpx.Response:
        """One attempt on the picked instance, behind its own breaker when there is one."""
        request = self.attempt_request(call, instance)
        if not self._core.guarded:
            return self._send(request, call)
        return self._core.guard(instance, call, self._send, request, call)

    def _send(self, request: httpx.Request, call: CallState) -> httpx.Response:
        response: httpx.Response = self._inner.handle_request(request)
        if response.status_code not in self._failing:
            return response
        failure = self._failure(request, response)
        try:
            response.read()
        except BaseException:
            response.close()
            raise
        raise call.fail(response, failure)

    def close(self) -> None:
        self._core.close()
        self._inner.close()


class AsyncMeshTransport(_Transport, httpx.AsyncBaseTransport):
    """The async :class:`MeshTransport`, for ``httpx.AsyncClient`` (inner transport:
    an ``httpx.AsyncBaseTransport``, ``httpx.AsyncHTTPTransport()`` by default)."""

    _inner_type = httpx.AsyncBaseTransport
    _default_inner = httpx.AsyncHTTPTransport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = self._start(request)
        if call is None:
            return await self._inner.handle_async_request(request)  # type: ignore[no-any-return]
        return await self._core.run_async(self._attempt, call, self._may_retry(request))

    async def _attempt(self, instance: ServiceInstance, call: CallState) -> httpx.Response:
        """One attempt on the picked instance, behind its own breaker when there is one.

        The attempt is bounded by its httpx timeouts (connect, read, write and pool each
        capped at 90% of the attempt's limit), which httpx enforces itself: no timer of
        our own on the success path. When the service's policy has an ``attempt_timeout``
        the proxy cancels an attempt from outside at that limit (a cancellation is never
        a failure), so the attempt is then also bounded as a whole at 90% of it, to run
        out of time here, inside the instance's breaker, where it counts as a failure.
        """
        request = self.attempt_request(call, instance, _HTTPX_SHARE)
        core = self._core
        if call.proxy.retry_policy.attempt_timeout is not None:
            limit = call.limit() * _HTTPX_SHARE
            return await core.guard_async(instance, call, self._send_within, limit, request, call)
        if not core.guarded:
            return await self._send(request, call)
        return await core.guard_async(instance, call, self._send, request, call)

    async def _send_within(
        self, seconds: float, request: httpx.Request, call: CallState
    ) -> httpx.Response:
        return await within(seconds, self._send(request, call))

    async def _send(self, request: httpx.Request, call: CallState) -> httpx.Response:
        response: httpx.Response = await self._inner.handle_async_request(request)
        if response.status_code not in self._failing:
            return response
        failure = self._failure(request, response)
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        raise call.fail(response, failure)

    async def aclose(self) -> None:
        self._core.close()
        await self._inner.aclose()
