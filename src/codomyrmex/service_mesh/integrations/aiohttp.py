"""aiohttp client middleware that sends ``http://<service>/...`` requests through the mesh.

    async with aiohttp.ClientSession(middlewares=(MeshMiddleware(mesh),)) as session:
        async with session.get("http://orders/items/1") as response:
            ...

Needs aiohttp >= 3.12 (client middleware). The seam is the middleware itself:
for each attempt it points the request's public ``url`` attribute at the picked
instance (scheme, path and query kept) and calls the next handler, which
connects to ``req.url``; the ``Host`` header was already set from the service
URL by aiohttp, so it keeps the service name. After the call ``req.url`` is the
service URL again (the response's ``url`` names the instance that answered).

The protocol semantics are those of :mod:`.protocol`, shared with the httpx,
requests and gRPC integrations: statuses in ``failure_statuses`` (500, 502, 503,
504 by default) fail the attempt (the last such response, read in full, is
returned when the stack gives up); only ``retry_methods`` (idempotent methods by
default) with an in-memory body are retried; ``Retry-After`` sets the wait.

Timeouts: aiohttp's own ``ClientTimeout.total`` covers the whole request,
middleware attempts included, so a session timeout with ``total`` set is the
call's deadline and each attempt gets a third of it. aiohttp's default (5 min
total) counts as unset: 10 s per attempt, 30 s per call (see
:class:`.protocol.Timeouts`). Each attempt runs under its limit inside the
instance's breaker, so running out of time is an instance failure.

Hedging is not supported (attempts share one ``ClientRequest``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable

from ._extras import missing_extra

try:
    import aiohttp
    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType
    from yarl import URL
except ImportError as exc:
    raise missing_extra(__name__, "aiohttp", exc) from exc

from ..circuit_breaker import CircuitBreakerConfig
from ..load_balancer import ServiceInstance
from .protocol.core import Services, UnknownService
from .protocol.http import HttpClient
from .protocol.propagation import trace_headers
from .protocol.semantics import DEFAULT_FAILURE_STATUSES, IDEMPOTENT_METHODS, HttpSemantics
from .protocol.timeouts import DEADLINE_FACTOR, AttemptTimer, CallState, Timeouts

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "IDEMPOTENT_METHODS",
    "MeshMiddleware",
    "Timeouts",
    "UnknownServiceError",
]

_DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=5 * 60, sock_connect=30)


class UnknownServiceError(UnknownService, aiohttp.ClientConnectionError):
    """The request's host names no service of the middleware (and passthrough is off)."""

    def __init__(self, host: str, url: URL) -> None:
        aiohttp.ClientConnectionError.__init__(self, f"no mesh service named {host!r} for {url}")
        self.host = host


def _client_timeout(timeout: aiohttp.ClientTimeout) -> float | None:
    """The per-attempt share of a session's total timeout (None: aiohttp's default, unset)."""
    if timeout is _SESSION_DEFAULT or timeout == _DEFAULT_TIMEOUT or timeout.total is None:
        return None
    return timeout.total / DEADLINE_FACTOR


_SESSION_DEFAULT = getattr(aiohttp.client, "DEFAULT_TIMEOUT", _DEFAULT_TIMEOUT)
_MAX_CACHED = 1024


def _replayable(req: ClientRequest) -> bool:
    body = req.body
    return body == b"" or isinstance(body, aiohttp.payload.BytesPayload)


class MeshMiddleware:
    """A client middleware routing each request through its service's proxy.

    ``services``: a :class:`ServiceProxy`, a :class:`Mesh` or a mapping of service
    name to proxy. See the module docstring for the rules.
    """

    __slots__ = (
        "_core",
        "_guarded",
        "_http",
        "_last_url",
        "_retry_methods",
        "_semantics",
        "_timer",
        "_urls",
    )

    def __init__(
        self,
        services: Services,
        *,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        instance_breaker: CircuitBreakerConfig | None = None,
        passthrough: bool = False,
        timeouts: Timeouts | None = None,
    ) -> None:
        semantics = HttpSemantics.of(failure_statuses, retry_methods)
        self._http: HttpClient[ClientResponse] = HttpClient(
            services, semantics=semantics, instance_breaker=instance_breaker,
            passthrough=passthrough, timeouts=timeouts,
        )  # fmt: skip
        self._core = self._http.core
        self._semantics = self._http.semantics
        self._retry_methods = semantics.retry_methods
        self._guarded = self._core.guarded
        self._urls: dict[tuple[URL, str, int], URL] = {}  # instance URLs made (bounded)
        self._last_url: tuple[URL | None, str, int, URL] = (None, "", 0, URL())
        self._timer = AttemptTimer()  # one loop timer bounds every running attempt

    def _instance_url(self, url: URL, instance: ServiceInstance) -> URL:
        """``url`` aimed at ``instance`` (scheme, path and query kept), built once per pair."""
        key = (url, instance.host, instance.port)
        made = self._urls.get(key)
        if made is None:
            made = URL.build(
                scheme=url.scheme,
                host=instance.host,
                port=instance.port,
                path=url.raw_path,
                query_string=url.raw_query_string,
                encoded=True,
            )
            if len(self._urls) >= _MAX_CACHED:
                self._urls.clear()
            self._urls[key] = made
        # the next attempt most likely repeats it (instances change address in place)
        self._last_url = (url, instance.host, instance.port, made)
        return made

    async def __call__(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        url = req.url
        proxy = self._http.route(url.host or "", UnknownServiceError, url)
        if proxy is None:
            return await handler(req)
        core = self._core
        timeout = req.session.timeout
        client_timeout = None if timeout is _SESSION_DEFAULT else _client_timeout(timeout)
        call = core.start(proxy, (req, handler, url), client_timeout)
        # semantics.may_retry and core.run_async, inlined (two frames less per request)
        if req.method.upper() in self._retry_methods and _replayable(req):
            run = proxy.call_async
        else:
            run = proxy.call_once_async
        try:
            return await run(self._attempt, call)
        except Exception as exc:
            settled: ClientResponse = core.settle(exc, call)
            return settled
        finally:
            req.url = url

    def _attempt(self, instance: ServiceInstance, call: CallState) -> Awaitable[ClientResponse]:
        """One attempt, aimed at ``instance``: the awaitable sending it (under its limit)."""
        limit = call.limit()
        req, _, url = call.request
        last = self._last_url  # identity implies equality: a hit is the URL the dict holds
        if last[0] is url and last[1] is instance.host and last[2] is instance.port:
            req.url = last[3]
        else:
            req.url = self._instance_url(url, instance)
        traced = trace_headers()
        if traced is not None:  # W3C trace context, once tracing is imported
            req.headers.update(traced)
        if not self._guarded:  # no per-instance breakers: no guard to go through
            return self._timer.run(limit, self._send, call)
        return self._core.guard_async(instance, call, self._timer.run, limit, self._send, call)

    async def _send(self, call: CallState) -> ClientResponse:
        req, handler, _ = call.request
        response: ClientResponse = await handler(req)
        if response.status not in self._semantics.failure_statuses:
            return response
        try:
            await response.read()  # an error page: read it all, then free the connection
        finally:
            response.release()
        raise self._http.failure(call, response, response.status, response.headers)

    def close(self) -> None:
        """Return the instances the per-instance breakers ejected."""
        self._core.close()
