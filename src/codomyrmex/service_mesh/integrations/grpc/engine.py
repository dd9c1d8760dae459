"""What the gRPC interceptor and channels share: per-method settings, judging a status.

The engine looks the service up, applies the method's service config (its retry or
hedging policy, retryable codes, timeout and throttling budget) and turns a status into
the caller's answer or the attempt's failure (:class:`.protocol.GrpcSemantics`).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, cast

import grpc

from ...circuit_breaker import CircuitBreakerConfig
from ...load_balancer import ServiceInstance
from ...proxy import ServiceProxy
from ..protocol import (
    CallState,
    ClientCore,
    FailureResponse,
    GrpcSemantics,
    Services,
    Timeouts,
    UnknownService,
    Verdict,
    parse_grpc_pushback,
    trace_headers,
)
from .config import GrpcServiceConfig, load_service_config

PUSHBACK_KEY = "grpc-retry-pushback-ms"

# The instance the current attempt goes to (set by the interceptor, read by the pool).
_TARGET: contextvars.ContextVar[ServiceInstance | None] = contextvars.ContextVar(
    "codomyrmex_service_mesh_grpc_target", default=None
)


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _CallDetails(_Details, grpc.ClientCallDetails):
    """Client call details with a per-attempt timeout."""


def _cut(state: CallState, limit: float) -> bool:
    """Whether an attempt given ``limit`` seconds was cut short of the call's deadline."""
    return limit >= state.attempt and state.attempt < state.deadline


def _pushback(trailing: Any) -> float | None:
    for key, value in trailing or ():
        if key == PUSHBACK_KEY:
            return parse_grpc_pushback(value)
    return None


Route = tuple["ServiceProxy | None", "ServiceProxy", GrpcSemantics, "Timeouts | None"]
"""Per method: (the service's proxy, the proxy its calls run on, its semantics, its timeouts).

The proxy calls run on is the service's own, or the one the method's service config makes
(on the service's balancer and breaker); the timeouts are the config's (None: derived)."""

NO_ROUTE = cast(Route, (object(), None, None, None))
"""A route no lookup matches (``route[0] is proxy`` is False even for a proxy not found):
worked out on first use."""


class _Engine:
    """Routing, per-method settings and judging, for the sync and async flavours."""

    def __init__(
        self,
        services: Services,
        service: str,
        semantics: GrpcSemantics | None,
        instance_breaker: CircuitBreakerConfig | None,
        timeouts: Timeouts | None,
        service_config: GrpcServiceConfig | str | Mapping[str, Any] | None,
    ) -> None:
        if not isinstance(service, str) or not service:
            raise TypeError(f"service must be a non-empty str, got {service!r}")
        self.service = service
        self.core: ClientCore[Any] = ClientCore(
            services, instance_breaker=instance_breaker, timeouts=timeouts
        )
        if semantics is not None and not isinstance(semantics, GrpcSemantics):
            raise TypeError(f"semantics must be a GrpcSemantics, got {semantics!r}")
        self.semantics = semantics or GrpcSemantics()
        if service_config is not None and not isinstance(service_config, GrpcServiceConfig):
            service_config = load_service_config(service_config)
        self.config = service_config
        self._per_method: dict[tuple[int, str], Route] = {}

    def proxy(self) -> ServiceProxy:
        proxy = self.core.lookup(self.service)
        if proxy is None:
            raise UnknownService(self.service)
        return proxy

    def start(self, method: str, timeout: float | None, request: Any) -> tuple[CallState, Any]:
        """The call's state and its semantics, from the method's config when there is one."""
        _, chosen, semantics, timeouts = self.route(self.proxy(), method)
        call = self.core.start(chosen, request, timeout, True, timeouts)
        return call, semantics

    def route(self, proxy: ServiceProxy | None, method: str) -> Route:
        """The route of ``method`` on the service's current ``proxy`` (None: not found)."""
        if proxy is None:
            raise UnknownService(self.service)
        if self.config is None:
            return (proxy, proxy, self.semantics, None)
        key = (id(proxy), method)
        known = self._per_method.get(key)
        if known is None or known[0] is not proxy:
            known = self._configure(proxy, method)
            self._per_method[key] = known
        return known

    def _configure(self, proxy: ServiceProxy, method: str) -> Route:
        assert self.config is not None
        config = self.config.for_method(method)
        if config is None:
            return (proxy, proxy, self.semantics, None)
        hedging = config.hedging_max_attempts is not None
        mapped = ServiceProxy(
            proxy.service_name,
            proxy.load_balancer,
            proxy.circuit_breaker,
            config.retry_policy(self.config.budget),
            bulkhead=proxy.bulkhead,
            hedging_delay=config.hedging_delay if hedging else None,
            max_hedged_attempts=config.hedging_max_attempts or 2,
            fallback=proxy.fallback,
            clock=proxy.clock,
        )
        timeouts = Timeouts(deadline=config.timeout) if config.timeout else None
        return (proxy, mapped, config.semantics, timeouts)

    def judge(
        self,
        call: CallState,
        semantics: GrpcSemantics,
        outcome: Any,
        code: Any,
        trailing: Any,
        cut: bool,
    ) -> Any:
        """Return the outcome for the caller, or raise it as the attempt's failure.

        ``cut``: the attempt's limit was its attempt timeout, shorter than what was
        left of the call's deadline (a DEADLINE_EXCEEDED is then the attempt's).
        """
        name = getattr(code, "name", str(code))
        if name == "OK":
            return outcome
        pushback = _pushback(trailing)
        verdict = semantics.verdict(name, pushback, cut)
        if verdict is Verdict.FAILURE:
            failure = FailureResponse.of(outcome, name, pushback)
            raise call.fail(outcome, failure)
        return _Answer(outcome)


class _Answer:
    """A non-OK status that is the server's answer: carried out of the stack as a value."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome


def _unwrap(result: Any) -> Any:
    return result.outcome if isinstance(result, _Answer) else result


class _Committed(grpc.Call, grpc.Future):  # type: ignore[type-arg]
    """A response stream whose first message has arrived: yields it, then the rest."""

    def __init__(self, stream: Any, first: Any, empty: bool) -> None:
        self._stream = stream
        self._pending: list[Any] = [] if empty else [first]

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._pending:
            return self._pending.pop()
        return next(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def is_active(self) -> bool:
        return bool(self._stream.is_active())

    def time_remaining(self) -> float:
        return float(self._stream.time_remaining() or 0.0)

    def cancel(self) -> bool:
        return bool(self._stream.cancel())

    def add_callback(self, callback: Any) -> bool:
        return bool(self._stream.add_callback(callback))

    def initial_metadata(self) -> Any:
        return self._stream.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._stream.trailing_metadata()

    def code(self) -> Any:
        return self._stream.code()

    def details(self) -> Any:
        return self._stream.details()

    def cancelled(self) -> bool:
        return bool(self._stream.cancelled())

    def running(self) -> bool:
        return bool(self._stream.running())

    def done(self) -> bool:
        return bool(self._stream.done())

    def result(self, timeout: float | None = None) -> Any:
        return self._stream.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._stream.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._stream.traceback(timeout)

    def add_done_callback(self, fn: Any) -> None:
        self._stream.add_done_callback(fn)


def _traced(metadata: Any) -> Any:
    """The call's metadata plus the W3C trace context of this attempt, once tracing is
    imported (see :func:`.protocol.set_trace_injector`); the metadata itself otherwise."""
    traced = trace_headers()
    if traced is None:
        return metadata
    return _with_trace(metadata, traced)


def _with_trace(metadata: Any, traced: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``metadata`` (None: none) followed by the trace-context entries."""
    return (*(metadata or ()), *traced.items())


def _method(kind: str) -> Any:
    def make(
        self: Any,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._callable(kind, method, request_serializer, response_deserializer)

    make.__name__ = make.__qualname__ = kind
    return make


class _Pool:
    """One real channel per instance (``self._factory(target)`` into ``self._channels``),
    and the four ``Channel`` factories, each ``self._callable(kind, method, ser, deser)``."""

    _channels: dict[str, Any]
    _factory: Any

    def channel_for(self, instance: ServiceInstance) -> Any:
        """The real channel of ``instance`` (made on first use)."""
        target = instance.address
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels.setdefault(target, self._factory(target))
        return channel

    unary_unary = _method("unary_unary")
    unary_stream = _method("unary_stream")
    stream_unary = _method("stream_unary")
    stream_stream = _method("stream_stream")


class _SyncChannel(_Pool):
    """What the sync pools share: no connectivity of their own, and a context manager."""

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        raise NotImplementedError(f"{type(self).__name__} has one channel per instance")

    def unsubscribe(self, callback: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} has one channel per instance")

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _commit(stream: Any, limit: float) -> _Committed:
    """Wait at most ``limit`` seconds for a response stream's first message: the stream
    is then committed (as in gRPC, never retried after that).

    A stream that ends first is committed empty; an error status is raised
    (``grpc.RpcError``) for the caller to judge; a stream whose first message does not
    come in time is cancelled and the attempt fails with ``TimeoutError``.
    """
    fired: list[bool] = []

    def cut() -> None:
        fired.append(True)
        stream.cancel()

    timer = threading.Timer(limit, cut)
    timer.daemon = True
    timer.start()
    try:
        first = next(stream)
    except StopIteration:
        return _Committed(stream, None, True)
    except grpc.RpcError as error:
        if fired:
            raise TimeoutError(f"no first message within {limit:g}s") from error
        raise
    finally:
        timer.cancel()
    return _Committed(stream, first, False)
