"""The engine every client integration shares: routing, attempts, settling the outcome."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeAlias, TypeVar

from ...circuit_breaker import CircuitBreaker, CircuitBreakerConfig
from ...errors import CircuitOpenError, ServiceMeshError
from ...load_balancer import ServiceInstance
from ...mesh import Mesh
from ...proxy import ServiceProxy
from .ejection import InstanceEjector
from .timeouts import CallState, Timeouts, check_timeouts

__all__ = [
    "ClientCore",
    "FailureResponse",
    "InstanceCircuitOpen",
    "Services",
    "UnknownService",
]

R = TypeVar("R")


class FailureResponse(Exception):
    """A response that fails its attempt; raised inside the stack, never out of it.

    ``response`` is the client's response object (fully read), ``status`` its status
    (HTTP status or gRPC code name), ``retry_after`` the server's pushback in seconds
    (None without one), which the retry policy's default predicate waits for.
    """

    response: Any
    status: Any
    retry_after: float | None

    @classmethod
    def of(cls, response: Any, status: Any, retry_after: float | None) -> FailureResponse:
        failure = cls(f"attempt failed with {status}")
        failure.response = response
        failure.status = status
        failure.retry_after = retry_after
        return failure


class InstanceCircuitOpen(ServiceMeshError):
    """An instance's own breaker refused an attempt; nothing was sent, try another instance."""

    retryable = True  # on another instance: unlike the mesh's other rejections

    def __init__(self, error: CircuitOpenError) -> None:
        super().__init__(error)
        self.error = error
        self.retry_after = 0.0  # nothing was sent: the policy retries on another instance at once

    def __str__(self) -> str:
        return f"instance circuit {self.error.name!r} is {self.error.state.value}"


class UnknownService(ServiceMeshError, LookupError):
    """The target names no service of the integration (and passthrough is off)."""

    def __init__(self, host: str) -> None:
        super().__init__(f"no mesh service named {host!r}")
        self.host = host


class _Passed(Exception):
    """Carries an IGNORED exception out of the stack as a value (internal)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


Services: TypeAlias = "ServiceProxy | Mesh | Mapping[str, ServiceProxy]"
"""What an integration routes to: one proxy, a mesh's services, or proxies by service name."""


class ClientCore(Generic[R]):
    """What every client integration shares: routing, timeouts, attempts, settling.

    ``R`` is the client's response type. An integration builds one, then per call:
    ``proxy = core.lookup(name)``, ``call = core.start(proxy, request, client_timeout)``
    and ``core.run(proxy, attempt, call, may_retry)`` (or ``await core.run_async(...)``)
    where ``attempt(instance, call)`` sends one attempt through :meth:`guard` /
    :meth:`guard_async` and raises :meth:`CallState.fail` for a failing response.
    """

    __slots__ = ("_mesh", "_proxies", "_resolved", "clock", "ejector", "guarded", "timeouts")

    def __init__(
        self,
        services: Services,
        *,
        instance_breaker: CircuitBreakerConfig | None = None,
        timeouts: Timeouts | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self.clock = clock
        self.timeouts = check_timeouts(timeouts)
        self.ejector = InstanceEjector(instance_breaker, self._mesh)
        self.guarded = self.ejector.enabled
        """Whether attempts go through per-instance breakers (:meth:`guard`); when False an
        integration may call its send function directly."""
        self._resolved: dict[tuple[int, float | None, bool], tuple[Any, float, float]] = {}

    def lookup(self, name: str) -> ServiceProxy | None:
        """The proxy of the service called ``name`` (case-insensitive), or None."""
        mesh = self._mesh
        if mesh is None:
            proxies = self._proxies
            proxy = proxies.get(name)
            return proxy if proxy is not None else proxies.get(name.lower())
        proxy = mesh.get_service(name)
        if proxy is None:
            lowered = name.lower()
            for key, candidate in mesh.services().items():
                if key.lower() == lowered:
                    return candidate
        return proxy

    def start(
        self,
        proxy: ServiceProxy,
        request: Any,
        client_timeout: float | None,
        client_is_deadline: bool = False,
        timeouts: Timeouts | None = None,
    ) -> CallState:
        """Begin a call: returns its state (deadline started now)."""
        ejector = self.ejector
        if ejector.ejected:
            ejector.reinstate_due()
        policy = proxy.retry_policy
        if timeouts is not None:
            attempt, deadline = timeouts.resolve(policy, client_timeout, client_is_deadline)
            return CallState(proxy, request, attempt, deadline, self.clock, client_timeout)
        # (attempt, deadline) depend only on these: resolved once per combination.
        key = (id(policy), client_timeout, client_is_deadline)
        known = self._resolved.get(key)
        if known is None or known[0] is not policy:
            attempt, deadline = self.timeouts.resolve(policy, client_timeout, client_is_deadline)
            if len(self._resolved) >= 256:
                self._resolved.clear()
            known = self._resolved[key] = (policy, attempt, deadline)
        return CallState(proxy, request, known[1], known[2], self.clock, client_timeout)

    # -- the whole call --

    def run(
        self,
        attempt: Callable[[ServiceInstance, CallState], R],
        call: CallState,
        may_retry: bool,
    ) -> R:
        """All attempts of one call (sync); the final response, or the final error raised."""
        run = call.proxy.call if may_retry else call.proxy.call_once
        try:
            return run(attempt, call)
        except Exception as exc:
            return self.settle(exc, call)  # type: ignore[no-any-return]

    async def run_async(
        self,
        attempt: Callable[[ServiceInstance, CallState], Awaitable[R]],
        call: CallState,
        may_retry: bool,
    ) -> R:
        """All attempts of one call (async), as :meth:`run`."""
        proxy = call.proxy
        try:
            return await (proxy.call_async if may_retry else proxy.call_once_async)(attempt, call)
        except Exception as exc:
            return self.settle(exc, call)  # type: ignore[no-any-return]

    @staticmethod
    def settle(exc: Exception, call: CallState) -> Any:
        """End a call the stack gave up on: the last failing response if any, else raise."""
        if isinstance(exc, _Passed):
            raise exc.error
        failed = call.failed
        if failed is not None and isinstance(exc, (FailureResponse, ServiceMeshError)):
            return failed
        if isinstance(exc, InstanceCircuitOpen):
            raise exc.error from exc.__cause__
        raise exc

    # -- one attempt --

    def guard(
        self,
        instance: ServiceInstance,
        call: CallState,
        send: Callable[..., R],
        *args: Any,
    ) -> R:
        """``send(*args)`` behind the instance's breaker (when configured)."""
        breaker = self.ejector.breaker(call.proxy, instance)
        if breaker is None:
            return send(*args)
        try:
            return breaker.execute(send, *args)
        except CircuitOpenError as exc:
            raise self._refused(exc, breaker, call, instance) from None

    async def guard_async(
        self,
        instance: ServiceInstance,
        call: CallState,
        send: Callable[..., Awaitable[R]],
        *args: Any,
    ) -> R:
        """The async twin of :meth:`guard`."""
        breaker = self.ejector.breaker(call.proxy, instance)
        if breaker is None:
            return await send(*args)
        try:
            return await breaker.execute_async(send, *args)
        except CircuitOpenError as exc:
            raise self._refused(exc, breaker, call, instance) from None

    def _refused(
        self,
        exc: CircuitOpenError,
        breaker: CircuitBreaker,
        call: CallState,
        instance: ServiceInstance,
    ) -> Exception:
        if exc.name != breaker.name:
            return exc
        self.ejector.refused(call.proxy, instance, breaker)
        return InstanceCircuitOpen(exc)

    @staticmethod
    def passed(error: BaseException) -> _Passed:
        """Wrap an IGNORED exception to be raised inside the stack and re-raised outside.

        Raised from inside a breaker it would count as a failure; return it from the
        attempt instead (``return core.passed(exc)``) and :meth:`unwrap` the result.
        """
        return _Passed(error)

    @staticmethod
    def unwrap(result: Any) -> Any:
        """The call's result, raising an IGNORED exception carried out as a value."""
        if isinstance(result, _Passed):
            raise result.error
        return result

    def close(self) -> None:
        """Return every instance the per-instance breakers ejected; stop watching them."""
        self.ejector.detach()
