"""Protocol semantics shared by every client integration (httpx, requests, aiohttp, gRPC).

Standard library only: each client module adapts its own request and response
types to what is written here once.

What a client integration asks of this layer:

- **Classification.** Each attempt's outcome is a :class:`Verdict`: ``SUCCESS``
  (returned to the caller), ``FAILURE`` (raised inside the stack, so the breakers
  count it and the retry policy may retry it) or ``IGNORED`` (the caller's own
  mistake or a plain answer of the server: handed to the caller unchanged,
  never retried and never counted as the instance's failure). HTTP statuses in
  ``failure_statuses`` are failures; :data:`DEFAULT_FAILURE_STATUSES` is 500,
  502, 503 and 504. gRPC statuses are classified by :class:`GrpcSemantics`.
- **Idempotency.** Only methods in ``retry_methods`` (:data:`IDEMPOTENT_METHODS`
  by default) whose body can be replayed (:func:`body_replayable`) get more than
  one attempt; others get exactly one, still balanced and behind the breakers.
- **Server pushback.** ``Retry-After`` (:func:`parse_retry_after`) and gRPC's
  ``grpc-retry-pushback-ms`` (:func:`parse_grpc_pushback`) become the failure's
  ``retry_after``, which the retry policy waits for (capped at its ``max_delay``).
- **Timeouts.** :class:`Timeouts` turns the client's own timeout into an attempt
  timeout and an overall deadline for the call (see there for the rule).
- **Ejection.** :class:`InstanceEjector` gives each instance a breaker of its own
  and, while that breaker is open, takes the instance out of its balancer with
  :meth:`LoadBalancer.eject` (never :meth:`LoadBalancer.mark_healthy`, which is
  the operator's and the health checker's); it returns the instance once the
  breaker admits probes.
- **The engine.** :class:`ClientCore` looks the service up, starts a
  :class:`CallState`, runs the attempts through ``ServiceProxy.call`` (or
  ``call_once``) and settles the outcome. Sync and async integrations share it.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timezone
from enum import Enum
from typing import Any, Generic, TypeAlias, TypeVar

from ..circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState, StateListener
from ..errors import CircuitOpenError, ServiceMeshError
from ..load_balancer import LoadBalancer, ServiceInstance
from ..mesh import Mesh
from ..proxy import ServiceProxy
from ..retry import RetryPolicy

__all__ = [
    "DEADLINE_FACTOR",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_DEADLINE",
    "DEFAULT_FAILURE_STATUSES",
    "IDEMPOTENT_METHODS",
    "CallDeadlineExceeded",
    "CallState",
    "ClientCore",
    "FailureResponse",
    "HttpSemantics",
    "InstanceCircuitOpen",
    "InstanceEjector",
    "Services",
    "Timeouts",
    "UnknownService",
    "Verdict",
    "body_replayable",
    "parse_grpc_pushback",
    "parse_retry_after",
]

R = TypeVar("R")

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""The methods retried by default (RFC 9110 idempotent methods): sending one twice has the
effect of sending it once."""

DEFAULT_FAILURE_STATUSES: frozenset[int] = frozenset({500, 502, 503, 504})
"""The one setting for which HTTP statuses fail an attempt by default: the server side
failed (500) or is unavailable (502, 503, 504). A failure is counted by the breakers and
retried, on another instance, for idempotent methods only."""

DEFAULT_ATTEMPT_TIMEOUT = 10.0
"""Seconds one attempt may take when neither the client nor the policy sets a timeout."""
DEFAULT_DEADLINE = 30.0
"""Seconds a whole call (every attempt and wait) may take when nothing else sets it."""
DEADLINE_FACTOR = 3.0
"""The overall deadline is this many times the client's timeout, when the client has one."""


class Verdict(Enum):
    """How one attempt's outcome counts."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


# -- failures raised inside the stack ------------------------------------------------


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


class CallDeadlineExceeded(ServiceMeshError, TimeoutError):
    """The call's overall deadline passed before another attempt could start."""

    retryable = False

    def __init__(self, service: str, deadline: float) -> None:
        super().__init__(f"{service}: the call's deadline of {deadline:g}s passed")
        self.service = service
        self.deadline = deadline


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


async def within(seconds: float, awaitable: Awaitable[R]) -> R:
    """Await ``awaitable`` for at most ``seconds``; running out raises ``TimeoutError``.

    ``asyncio.timeout`` where there is one (3.11+): unlike ``wait_for`` there, it makes
    no task per attempt.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # pragma: no cover - Python 3.10


# -- parsing -------------------------------------------------------------------------


_trace_injector: Callable[[MutableMapping[str, str]], object] | None = None


def set_trace_injector(inject: Callable[[MutableMapping[str, str]], object] | None) -> None:
    """Install the function that writes the current trace context into a header mapping.

    :mod:`.tracing` installs OpenTelemetry's W3C propagator when it is imported, and from
    then on every client integration (httpx, requests, aiohttp, gRPC metadata) sends
    ``traceparent`` with each attempt. None turns propagation off again.
    """
    global _trace_injector
    _trace_injector = inject


def trace_headers() -> dict[str, str] | None:
    """The trace-context headers for one outgoing attempt, or None (nothing to send)."""
    inject = _trace_injector
    if inject is None:
        return None
    headers: dict[str, str] = {}
    inject(headers)
    return headers or None


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


def parse_grpc_pushback(value: str | bytes | None) -> float | None:
    """Seconds of a ``grpc-retry-pushback-ms`` value; None when absent.

    gRPC: a non-negative integer of milliseconds means "retry after that long";
    a negative or unparseable value means "do not retry" (returned as ``-1.0``).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = value.strip()
    if not text.isdigit():
        return -1.0
    return int(text) / 1000.0


def body_replayable(body: object) -> bool:
    """Whether a request body can be sent again: None, bytes-like, str, or a seekable file."""
    if body is None or isinstance(body, (bytes, bytearray, memoryview, str)):
        return True
    seekable = getattr(body, "seekable", None)
    if callable(seekable) and hasattr(body, "tell"):
        try:
            return bool(seekable())
        except (OSError, ValueError):
            return False
    return False


# -- semantics -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpSemantics:
    """What fails an HTTP attempt and what may be retried."""

    failure_statuses: frozenset[int] = DEFAULT_FAILURE_STATUSES
    retry_methods: frozenset[str] = IDEMPOTENT_METHODS
    respect_retry_after: bool = True

    def __post_init__(self) -> None:
        statuses = self.failure_statuses
        if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Iterable):
            raise TypeError(f"failure_statuses must be HTTP statuses, got {statuses!r}")
        statuses = frozenset(statuses)
        if not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            raise ValueError(
                f"failure_statuses must be HTTP statuses, got {self.failure_statuses!r}"
            )
        methods = self.retry_methods
        if isinstance(methods, (str, bytes)) or not isinstance(methods, Iterable):
            raise TypeError(f"retry_methods must be method names, got {methods!r}")
        if not all(isinstance(m, str) and m for m in methods):
            raise TypeError(f"retry_methods must be method names, got {methods!r}")
        if not isinstance(self.respect_retry_after, bool):
            raise TypeError(f"respect_retry_after must be a bool, got {self.respect_retry_after!r}")
        object.__setattr__(self, "failure_statuses", statuses)
        object.__setattr__(self, "retry_methods", frozenset(m.upper() for m in methods))

    @classmethod
    def of(
        cls,
        failure_statuses: Iterable[int],
        retry_methods: Iterable[str],
        respect_retry_after: bool = True,
    ) -> HttpSemantics:
        """Validated semantics from the integrations' arguments (any iterables)."""
        return cls(failure_statuses, retry_methods, respect_retry_after)  # type: ignore[arg-type]

    def verdict(self, status: int) -> Verdict:
        """SUCCESS or FAILURE for a response status (an answer is never IGNORED)."""
        return Verdict.FAILURE if status in self.failure_statuses else Verdict.SUCCESS

    def may_retry(self, method: str, replayable: bool = True) -> bool:
        """Whether a request may be sent more than once."""
        return replayable and method.upper() in self.retry_methods

    def retry_after(self, header: str | None) -> float | None:
        """The wait a failure response asks for (None: the policy's own backoff).

        "Retry now" (0) is left to the policy's backoff too.
        """
        if not self.respect_retry_after or header is None:
            return None
        return parse_retry_after(header) or None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """An attempt timeout and an overall call deadline, in seconds.

    Each field left None is derived, in this order of precedence:

    1. the value given here;
    2. the service's :class:`RetryPolicy` (``attempt_timeout``, ``max_elapsed``);
    3. the client's own timeout for the request, when it has one: the attempt
       gets that timeout and the call ``DEADLINE_FACTOR`` (3) times it, so a
       client timeout of 1 s allows three full attempts;
    4. :data:`DEFAULT_ATTEMPT_TIMEOUT` (10 s) and :data:`DEFAULT_DEADLINE` (30 s).

    The attempt timeout never exceeds what is left of the deadline. Sync attempts
    cannot be interrupted: the limit is handed to the client as its timeout.
    """

    attempt: float | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("attempt", "deadline"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"timeouts.{name} must be a number of seconds, got {value!r}")
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"timeouts.{name} must be > 0 and finite, got {value!r}")

    def resolve(
        self, policy: RetryPolicy, client: float | None, client_is_deadline: bool = False
    ) -> tuple[float, float]:
        """(attempt timeout, deadline) for a call with the client's timeout ``client``.

        ``client_is_deadline``: the client's timeout bounds the whole call (gRPC's
        deadline), so it is the deadline, and each attempt may use what is left of it.
        """
        attempt = self.attempt or policy.attempt_timeout
        deadline = self.deadline or policy.max_elapsed
        if client is not None and client > 0 and math.isfinite(client):
            if attempt is None:
                attempt = client
            if deadline is None:
                deadline = client if client_is_deadline else DEADLINE_FACTOR * client
        if attempt is None:
            attempt = DEFAULT_ATTEMPT_TIMEOUT
        if deadline is None:
            deadline = max(DEFAULT_DEADLINE, attempt)
        return attempt, deadline


def check_timeouts(timeouts: Timeouts | None) -> Timeouts:
    """The ``timeouts`` argument of an integration, validated (None: derive everything)."""
    if timeouts is None:
        return _DERIVED
    if not isinstance(timeouts, Timeouts):
        raise TypeError(f"timeouts must be a Timeouts, got {timeouts!r}")
    return timeouts


_DERIVED = Timeouts()


# -- one call ------------------------------------------------------------------------


class CallState:
    """One call's way through the stack: its deadline, and the last failing response."""

    __slots__ = ("attempt", "clock", "deadline", "deadline_at", "failed", "proxy", "request")

    def __init__(
        self,
        proxy: ServiceProxy,
        request: Any,
        attempt: float,
        deadline: float,
        clock: Callable[[], float],
    ) -> None:
        self.proxy = proxy
        self.request = request
        self.attempt = attempt
        self.deadline = deadline
        self.clock = clock
        self.deadline_at = clock() + deadline
        # The last response that failed its attempt (fully read, so its connection is free).
        self.failed: Any = None

    def limit(self) -> float:
        """Seconds the next attempt may take; raises :class:`CallDeadlineExceeded` when none."""
        remaining = self.deadline_at - self.clock()
        if remaining <= 0.0:
            raise CallDeadlineExceeded(self.proxy.service_name, self.deadline)
        attempt = self.attempt
        return attempt if attempt < remaining else remaining

    def fail(self, response: Any, failure: BaseException) -> BaseException:
        """Record ``response`` as the last failing one; return ``failure`` to raise."""
        self.failed = response
        return failure


# -- per-instance breakers and ejection ------------------------------------------------


class InstanceEjector:
    """Per-instance breakers whose OPEN state takes the instance out of its balancer.

    Breakers are named ``"<service>/<instance id>"`` (and registered in ``mesh`` when
    given). Ejection uses :meth:`LoadBalancer.eject`, never ``mark_healthy``; the
    instance is returned (:meth:`LoadBalancer.return_instance`) once its breaker
    admits probes, checked at each call (:meth:`reinstate_due`) and on every state
    change. The last available instance of a pool is never ejected.
    """

    __slots__ = ("_breakers", "_config", "_ejected", "_listeners", "_lock", "_mesh")

    def __init__(self, config: CircuitBreakerConfig | None, mesh: Mesh | None) -> None:
        if config is not None and not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"instance_breaker must be a CircuitBreakerConfig, got {config!r}")
        self._config = config
        self._mesh = mesh
        self._lock = threading.Lock()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._ejected: dict[tuple[str, str], tuple[LoadBalancer, CircuitBreaker]] = {}
        self._listeners: list[tuple[CircuitBreaker, StateListener]] = []

    @property
    def enabled(self) -> bool:
        return self._config is not None

    def breaker(self, proxy: ServiceProxy, instance: ServiceInstance) -> CircuitBreaker | None:
        """The breaker of ``instance`` (created on first use), or None when not configured."""
        config = self._config
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
        if new is CircuitState.OPEN or new is CircuitState.FORCED_OPEN:
            self.eject(key, balancer, breaker)
        elif key in self._ejected:
            with self._lock:
                ejected = self._ejected.pop(key, None)
            if ejected is not None:
                balancer.return_instance(key[1])

    def eject(self, key: tuple[str, str], balancer: LoadBalancer, breaker: CircuitBreaker) -> None:
        """Take the instance out, unless it is the last available one or already out."""
        if key in self._ejected:
            return
        available = balancer.healthy_instances
        if len(available) <= 1 or not any(inst.id == key[1] for inst in available):
            return
        if balancer.eject(key[1]):
            with self._lock:
                self._ejected[key] = (balancer, breaker)

    def refused(
        self, proxy: ServiceProxy, instance: ServiceInstance, breaker: CircuitBreaker
    ) -> None:
        """An attempt met the instance's open breaker: make sure the instance is out."""
        self.eject((proxy.service_name, instance.id), proxy.load_balancer, breaker)

    def reinstate_due(self) -> None:
        """Return the ejected instances whose breaker now admits probes."""
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
                    balancer.return_instance(key[1])

    def detach(self) -> None:
        """Stop watching the breakers and return every instance this ejected."""
        with self._lock:
            listeners, self._listeners = self._listeners, []
            ejected, self._ejected = self._ejected, {}
        for breaker, listener in listeners:
            breaker.remove_listener(listener)
        for (_, instance_id), (balancer, _) in ejected.items():
            balancer.return_instance(instance_id)


# -- the engine ----------------------------------------------------------------------

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

    __slots__ = ("_mesh", "_proxies", "clock", "ejector", "timeouts")

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
        self.ejector.reinstate_due()
        attempt, deadline = (timeouts or self.timeouts).resolve(
            proxy.retry_policy, client_timeout, client_is_deadline
        )
        return CallState(proxy, request, attempt, deadline, self.clock)

    # -- the whole call --

    def run(
        self,
        attempt: Callable[[ServiceInstance, CallState], R],
        call: CallState,
        may_retry: bool,
    ) -> R:
        """All attempts of one call (sync); the final response, or the final error raised."""
        proxy = call.proxy
        try:
            if may_retry:
                return proxy.call(attempt, call)
            return proxy.call_once(attempt, call)
        except Exception as exc:
            return self.settle(exc, call)  # type: ignore[no-any-return]

    async def run_async(
        self,
        attempt: Callable[[ServiceInstance, CallState], Awaitable[R]],
        call: CallState,
        may_retry: bool,
    ) -> R:
        """All attempts of one call (async): the twin of :meth:`run`."""
        proxy = call.proxy
        try:
            if may_retry:
                return await proxy.call_async(attempt, call)
            return await proxy.call_once_async(attempt, call)
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


# -- gRPC ----------------------------------------------------------------------------

GRPC_CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
"""gRPC status code names, in code order (index = numeric code)."""


def grpc_code_name(code: Any, field: str = "retryable_codes") -> str:
    """A gRPC status code given by name ("UNAVAILABLE", "unavailable"), number (14) or enum."""
    if isinstance(code, bool):
        raise TypeError(f"{field} must hold gRPC status codes, got {code!r}")
    if isinstance(code, int):
        if 0 <= code < len(GRPC_CODES):
            return GRPC_CODES[code]
        raise ValueError(f"{field} must hold gRPC status codes, got {code!r}")
    name = getattr(code, "name", code)
    if isinstance(name, str) and name.upper() in GRPC_CODES:
        return name.upper()
    raise ValueError(f"{field} must hold gRPC status codes, got {code!r}")


@dataclass(frozen=True, slots=True)
class GrpcSemantics:
    """How a gRPC status counts.

    - ``OK``: SUCCESS.
    - ``retryable_codes`` (``UNAVAILABLE`` by default): FAILURE, retried on another
      instance; ``grpc-retry-pushback-ms`` sets the wait, and a negative one ends the call.
    - ``RESOURCE_EXHAUSTED`` with a valid ``grpc-retry-pushback-ms``: FAILURE, retried
      after the pushback, as gRPC does when the server asks for it.
    - ``DEADLINE_EXCEEDED`` of an attempt cut short by the attempt timeout (while the
      call's deadline has time left): FAILURE, retried.
    - ``CANCELLED``: IGNORED (the caller's doing).
    - every other code is the server's answer: returned to the caller, not counted
      as the instance's failure, not retried.
    """

    retryable_codes: frozenset[str] = frozenset({"UNAVAILABLE"})

    def __post_init__(self) -> None:
        codes = self.retryable_codes
        if isinstance(codes, (str, bytes)) or not isinstance(codes, Iterable):
            raise TypeError(f"retryable_codes must hold gRPC status codes, got {codes!r}")
        names = frozenset(grpc_code_name(c) for c in codes)
        if "OK" in names:
            raise ValueError("retryable_codes must not hold OK")
        object.__setattr__(self, "retryable_codes", names)

    def verdict(self, code: str, pushback: float | None, attempt_cut: bool) -> Verdict:
        """The verdict for status ``code`` with the server's pushback (seconds, -1 for
        "do not retry", None for none); ``attempt_cut``: our attempt timeout fired."""
        if code == "OK":
            return Verdict.SUCCESS
        if code == "CANCELLED":
            return Verdict.IGNORED
        if pushback is not None and pushback < 0:
            return Verdict.SUCCESS  # the server says: do not retry; its answer stands
        if code in self.retryable_codes:
            return Verdict.FAILURE
        if code == "RESOURCE_EXHAUSTED" and pushback is not None:
            return Verdict.FAILURE
        if code == "DEADLINE_EXCEEDED" and attempt_cut:
            return Verdict.FAILURE
        return Verdict.SUCCESS
