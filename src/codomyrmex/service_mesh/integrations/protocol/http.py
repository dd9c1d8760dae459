"""What the HTTP integrations (httpx, requests, aiohttp) share on top of :class:`ClientCore`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ...circuit_breaker import CircuitBreakerConfig
from ...proxy import ServiceProxy
from .core import ClientCore, FailureResponse, Services
from .semantics import HttpSemantics
from .timeouts import CallState, Timeouts

__all__ = ["HttpClient"]

R = TypeVar("R")


class HttpClient(Generic[R]):
    """The core, the HTTP semantics and the routing options of one HTTP integration.

    Validates the routing arguments every HTTP integration takes (each error names its
    argument; ``semantics`` is validated by :class:`HttpSemantics`); :meth:`route`
    finds a request's service.
    """

    __slots__ = ("core", "instance_host", "passthrough", "semantics")

    def __init__(
        self,
        services: Services,
        *,
        semantics: HttpSemantics,
        instance_breaker: CircuitBreakerConfig | None = None,
        host_header: str = "service",
        passthrough: bool = False,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.core: ClientCore[R] = ClientCore(
            services, instance_breaker=instance_breaker, timeouts=timeouts
        )
        self.semantics = semantics
        if host_header not in ("service", "instance"):
            raise ValueError(f"host_header must be 'service' or 'instance', got {host_header!r}")
        self.instance_host = host_header == "instance"
        if not isinstance(passthrough, bool):
            raise TypeError(f"passthrough must be a bool, got {passthrough!r}")
        self.passthrough = passthrough

    def route(
        self, host: str, unknown: Callable[..., Exception], *args: Any
    ) -> ServiceProxy | None:
        """The proxy of the service ``host`` names; None: pass the request through
        unchanged (``passthrough``); otherwise raises ``unknown(host, *args)``."""
        proxy = self.core.lookup(host)
        if proxy is None and not self.passthrough:
            raise unknown(host, *args)
        return proxy

    def failure(self, call: CallState, response: Any, status: int, headers: Any) -> BaseException:
        """Record ``response`` (read in full) as the call's last failing one; return the
        :class:`FailureResponse` to raise, with the wait its ``Retry-After`` asks for."""
        return call.fail(response, FailureResponse.of(response, status, self.retry_after(headers)))

    def retry_after(self, headers: Any) -> float | None:
        """The wait a failing response's ``Retry-After`` header asks for (None: none)."""
        return self.semantics.retry_after(headers.get("Retry-After"))
