"""A requests ``HTTPAdapter`` that sends ``http://<service>/...`` requests through the mesh.

    session = requests.Session()
    session.mount("http://orders", MeshAdapter(mesh))
    session.get("http://orders/items/1")

The URL's host names a service; each attempt goes to an instance picked by its
load balancer (scheme, path and query kept, host and port rewritten; the
``Host`` header keeps the service name unless ``host_header="instance"``),
through the service's breaker and retry policy. The protocol semantics are
those of :mod:`.protocol`, shared with the httpx, aiohttp and gRPC integrations:

- statuses in ``failure_statuses`` (500, 502, 503, 504 by default) fail the
  attempt; when the stack gives up, the last such response is returned;
- only ``retry_methods`` (idempotent methods by default) with a replayable body
  (bytes, str, a seekable file; not a generator) are retried;
- ``Retry-After`` sets the wait before the next attempt;
- the attempt timeout is the ``timeout=`` given to requests (the longer of a
  ``(connect, read)`` pair), the call's deadline three times that; without one
  (requests' default is none), 10 s and 30 s (see :class:`.protocol.Timeouts`).
  Each attempt's connect and read timeouts are capped by what the attempt may take.
- errors of the caller's own making (an invalid URL or header) are raised as they
  are, never retried nor counted against an instance.

urllib3's ``Retry`` is accepted as ``max_retries`` (as ``HTTPAdapter`` takes it)
and mapped onto the mesh's own retry policy; urllib3 itself then never retries:

============================== ===============================================
``Retry`` field                 becomes
============================== ===============================================
``total`` (an int)              ``RetryPolicy.max_retries``; ``total=None``: the
                                largest of ``connect``/``read``/``status``;
                                ``False`` or 0: no retry
``status_forcelist``            ``failure_statuses`` (None: no status fails)
``allowed_methods``             ``retry_methods`` (None: every method)
``backoff_factor``              ``initial_delay`` (doubling: ``exponential_base=2``)
``backoff_max``                 ``max_delay``
``backoff_jitter``              full jitter when > 0, none when 0
``respect_retry_after_header``  whether ``Retry-After`` sets the wait
``raise_on_status``             not mapped: the last response is always returned
============================== ===============================================

The service's balancer, breaker, bulkhead and fallback are kept; only its retry
policy is replaced by the mapped one (the proxy registered in the mesh is left as
it is). urllib3 waits nothing before the first retry; the mesh waits up to
``backoff_factor`` there, then doubles.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from ._extras import missing_extra

try:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry
    from urllib3.util.timeout import Timeout
except ImportError as exc:
    raise missing_extra(__name__, "requests", exc) from exc

from ..circuit_breaker import CircuitBreakerConfig
from ..load_balancer import ServiceInstance
from ..proxy import ServiceProxy
from ..retry import RetryPolicy
from .protocol import CallState, Services, UnknownService, trace_headers
from .protocol.http import HttpClient
from .protocol.semantics import (
    DEFAULT_FAILURE_STATUSES,
    IDEMPOTENT_METHODS,
    HttpSemantics,
    body_replayable,
)
from .protocol.timeouts import Timeouts

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "IDEMPOTENT_METHODS",
    "MeshAdapter",
    "Timeouts",
    "UnknownServiceError",
    "retry_policy_from_urllib3",
]

_ALL_METHODS = frozenset(
    {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH", "CONNECT"}
)
_PREPARED = requests.PreparedRequest
_HEADERS = requests.structures.CaseInsensitiveDict
_CALLER_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
)


class UnknownServiceError(UnknownService, requests.exceptions.ConnectionError):
    """The request's host names no service of the adapter (and passthrough is off)."""

    def __init__(self, host: str, request: requests.PreparedRequest) -> None:
        requests.exceptions.ConnectionError.__init__(
            self, f"no mesh service named {host!r} for {request.url}", request=request
        )
        self.host = host


def retry_policy_from_urllib3(retry: Retry, base: RetryPolicy | None = None) -> RetryPolicy:
    """The mesh :class:`RetryPolicy` for a urllib3 ``Retry`` (see the module's table).

    ``base`` gives what ``Retry`` has no word for (sleep, clock, rng, budget,
    attempt timeout, deadline); by default a fresh policy's.
    """
    if not isinstance(retry, Retry):
        raise TypeError(f"max_retries must be an int or a urllib3 Retry, got {retry!r}")
    base = base or RetryPolicy()
    total = retry.total
    if total is False:
        max_retries = 0
    elif isinstance(total, int) and not isinstance(total, bool):
        max_retries = max(0, total)
    else:
        parts = [n for n in (retry.connect, retry.read, retry.status) if isinstance(n, int)]
        max_retries = max(parts, default=0)
    jitter = float(getattr(retry, "backoff_jitter", 0.0) or 0.0)
    return base.replace(
        max_retries=max_retries,
        initial_delay=float(retry.backoff_factor),
        max_delay=float(getattr(retry, "backoff_max", 120.0)),
        exponential_base=2.0,
        jitter=jitter > 0,
    )


def _semantics_from_urllib3(retry: Retry) -> HttpSemantics:
    statuses = frozenset(retry.status_forcelist or ())
    methods = retry.allowed_methods
    return HttpSemantics(
        failure_statuses=statuses,
        retry_methods=_ALL_METHODS if methods is None else frozenset(methods),
        respect_retry_after=bool(retry.respect_retry_after_header),
    )


def _split(url: str) -> tuple[str, str, str]:
    """(scheme, authority, the rest: path, query and fragment) of an absolute URL."""
    scheme, sep, after = url.partition("://")
    if not sep:
        raise requests.exceptions.InvalidURL(f"not an absolute URL: {url!r}")
    end = len(after)
    for mark in "/?#":
        found = after.find(mark)
        if found != -1 and found < end:
            end = found
    return scheme, after[:end], after[end:]


def _hostname(authority: str) -> str:
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.partition(":")[0]


def _client_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, tuple):
        parts = [t for t in timeout if isinstance(t, (int, float))]
        return max(parts) if parts else None
    if isinstance(timeout, (int, float)):
        return float(timeout)
    total = getattr(timeout, "total", None)  # a urllib3 Timeout
    if isinstance(total, (int, float)):
        return float(total)
    found = [getattr(timeout, name, None) for name in ("connect_timeout", "read_timeout")]
    numbers = [float(p) for p in found if isinstance(p, (int, float))]
    return max(numbers) if numbers else None


def _capped(timeout: Any, limit: float) -> Any:
    """The caller's requests timeout with each part capped at the attempt's ``limit``."""
    if isinstance(timeout, tuple) and len(timeout) == 2:
        connect, read = timeout
        return (
            limit if connect is None else min(connect, limit),
            limit if read is None else min(read, limit),
        )
    if isinstance(timeout, (int, float)):
        return min(float(timeout), limit)
    return limit


def _with_host(headers: Any, host: str) -> Any:
    """``headers`` with a ``Host`` header naming the service: a copy, once per call, so the
    caller's request is left as it is (``headers`` itself when it already has one).

    requests' ``CaseInsensitiveDict`` keeps ``(name, value)`` pairs by lower-case name in
    an ``OrderedDict``; copying that in one C call costs a tenth of ``.copy()``, which sets
    each header again through Python. Any other mapping takes the public way.
    """
    if type(headers) is _HEADERS:
        store = headers.__dict__.get("_store")
        if type(store) is OrderedDict:
            if "host" in store:
                return headers
            copied = _HEADERS.__new__(_HEADERS)
            copied.__dict__["_store"] = fresh = store.copy()
            fresh["host"] = ("Host", host)
            return copied
    if "Host" in headers:
        return headers
    copied = headers.copy()
    copied["Host"] = host
    return copied


class MeshAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` routing each request through its service's proxy.

    ``services``: a :class:`ServiceProxy`, a :class:`Mesh` or a mapping of service
    name to proxy. ``max_retries``: None (the service's own policy), an int (that
    many retries with the service's policy otherwise) or a urllib3 ``Retry`` (mapped,
    see the module docstring). Pool options are ``HTTPAdapter``'s.
    """

    def __init__(
        self,
        services: Services,
        *,
        max_retries: Retry | int | None = None,
        failure_statuses: Iterable[int] | None = None,
        retry_methods: Iterable[str] | None = None,
        instance_breaker: CircuitBreakerConfig | None = None,
        host_header: Literal["service", "instance"] = "service",
        passthrough: bool = False,
        timeouts: Timeouts | None = None,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        pool_block: bool = False,
    ) -> None:
        super().__init__(pool_connections, pool_maxsize, 0, pool_block)
        if isinstance(max_retries, Retry):
            semantics = _semantics_from_urllib3(max_retries)
        elif max_retries is None or (
            isinstance(max_retries, int) and not isinstance(max_retries, bool) and max_retries >= 0
        ):
            semantics = HttpSemantics()
        else:
            raise TypeError(
                f"max_retries must be None, an int >= 0 or a urllib3 Retry, got {max_retries!r}"
            )
        self._urllib3_retry = max_retries
        semantics = HttpSemantics.of(
            semantics.failure_statuses if failure_statuses is None else failure_statuses,
            semantics.retry_methods if retry_methods is None else retry_methods,
            semantics.respect_retry_after,
        )
        self._http: HttpClient[requests.Response] = HttpClient(
            services,
            semantics=semantics,
            instance_breaker=instance_breaker,
            host_header=host_header,
            passthrough=passthrough,
            timeouts=timeouts,
        )
        self._core = self._http.core
        self._semantics = self._http.semantics
        self._instance_host = self._http.instance_host
        self._mapped: dict[int, tuple[ServiceProxy, ServiceProxy]] = {}
        self._addresses: dict[tuple[str, int], str] = {}
        self._urls: dict[str, tuple[str, str, str, str]] = {}  # URLs split (bounded)
        self._timeouts: dict[float, Timeout] = {}  # urllib3 Timeouts by limit (bounded)
        self._failure_statuses = self._semantics.failure_statuses

    def _proxy_for(self, proxy: ServiceProxy) -> ServiceProxy:
        """The service's proxy, with its retry policy replaced when ``max_retries`` says so."""
        retry = self._urllib3_retry
        if retry is None:
            return proxy
        known = self._mapped.get(id(proxy))
        if known is not None and known[0] is proxy:
            return known[1]
        base = proxy.retry_policy
        if isinstance(retry, Retry):
            policy = retry_policy_from_urllib3(retry, base)
        else:
            policy = base.replace(max_retries=retry)
        mapped = ServiceProxy(
            proxy.service_name,
            proxy.load_balancer,
            proxy.circuit_breaker,
            policy,
            bulkhead=proxy.bulkhead,
            hedging_delay=proxy.hedging_delay,
            max_hedged_attempts=proxy.max_hedged_attempts,
            fallback=proxy.fallback,
            clock=proxy.clock,
        )
        self._mapped[id(proxy)] = (proxy, mapped)
        return mapped

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = request.url
        parts = self._urls.get(url)  # type: ignore[arg-type]
        if parts is None:
            if not isinstance(url, str):
                raise requests.exceptions.InvalidURL(f"request has no URL: {request!r}")
            scheme, authority, rest = _split(url)
            parts = (scheme, authority.rpartition("@")[2], rest, _hostname(authority))
            if len(self._urls) >= 1024:
                self._urls.clear()
            self._urls[url] = parts
        scheme, authority, rest, host = parts
        core = self._core
        proxy = self._http.route(host, UnknownServiceError, request)
        if proxy is None:
            return super().send(request, stream, timeout, verify, cert, proxies)
        if self._urllib3_retry is not None:
            proxy = self._proxy_for(proxy)
        kwargs = {"stream": stream, "verify": verify, "cert": cert, "proxies": proxies}
        one = (request, scheme, rest, _with_host(request.headers, authority), timeout, kwargs)
        call = core.start(proxy, one, None if timeout is None else _client_timeout(timeout))
        body = request.body
        may_retry = self._semantics.may_retry(
            request.method or "GET", body is None or body_replayable(body)
        )
        return core.unwrap(core.run(self._attempt, call, may_retry))  # type: ignore[no-any-return]

    def _attempt(self, instance: ServiceInstance, call: CallState) -> Any:
        source, scheme, rest, headers, timeout, kwargs = call.request
        limit = call.limit()
        # A shallow copy: ``PreparedRequest.copy`` would also copy the cookie jar, which
        # the adapter never reads (the session has already put cookies in the headers).
        prepared = _PREPARED.__new__(_PREPARED)
        prepared.__dict__.update(source.__dict__)
        address = self._addresses.get((instance.host, instance.port))
        if address is None:
            address = self._address(instance)
        prepared.url = f"{scheme}://{address}{rest}"
        traced = trace_headers()
        if self._instance_host or traced is not None:
            headers = headers.copy()
            if self._instance_host:
                headers["Host"] = address
            if traced is not None:  # W3C trace context, once tracing is imported
                headers.update(traced)
        prepared.headers = headers
        if timeout is None:
            # urllib3's Timeout for the whole attempt, made once per limit (the first
            # attempt's limit is the attempt timeout; a later one's is what is left).
            attempt_timeout: Any = self._timeouts.get(limit)
            if attempt_timeout is None:
                attempt_timeout = self._timeout(limit, limit == call.attempt)
        else:
            attempt_timeout = _capped(timeout, limit)
        body = prepared.body
        if body is not None and hasattr(body, "seek"):
            body.seek(0)
        if not self._core.guarded:
            return self._send(prepared, attempt_timeout, call, kwargs)
        return self._core.guard(
            instance, call, self._send, prepared, attempt_timeout, call, kwargs
        )  # fmt: skip

    def _address(self, instance: ServiceInstance) -> str:
        host, port = instance.host, instance.port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if len(self._addresses) >= 1024:
            self._addresses.clear()
        self._addresses[(host, port)] = address
        return address

    def _timeout(self, limit: float, keep: bool) -> Timeout:
        made = Timeout(connect=limit, read=limit)
        if keep:
            if len(self._timeouts) >= 64:
                self._timeouts.clear()
            self._timeouts[limit] = made
        return made

    def _send(
        self, prepared: requests.PreparedRequest, timeout: Any, call: CallState,
        kwargs: dict[str, Any],
    ) -> Any:  # fmt: skip
        try:
            response = super().send(prepared, timeout=timeout, **kwargs)
        except _CALLER_ERRORS as exc:
            return self._core.passed(exc)
        if response.status_code not in self._failure_statuses:
            return response
        try:
            response.content  # noqa: B018 - read it all: frees the connection
        finally:
            response.close()
        raise self._http.failure(call, response, response.status_code, response.headers)

    def close(self) -> None:
        self._core.close()
        super().close()
