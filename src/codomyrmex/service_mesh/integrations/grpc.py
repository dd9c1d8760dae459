"""gRPC (grpcio) through the mesh: a pool of channels, one per instance, picked per call.

Sync (``grpc``)::

    channel = mesh_channel(mesh, "orders")          # interceptor over a channel pool
    stub = OrdersStub(channel)                      # generated or generic stubs
    stub.Get(request, timeout=2.0)

Async (``grpc.aio``)::

    channel = aio_mesh_channel(mesh, "orders")
    await stub.Get(request)

**Sync:** :class:`MeshInterceptor` is a ``grpc`` client interceptor for
unary-unary and unary-stream calls. It runs each call through the service's
proxy (balancer, breakers, retry policy) and, for each attempt, tells the
channel underneath which instance to use; that channel, :class:`InstanceChannels`,
keeps one real channel per instance (``channel_factory(target)``, by default
``grpc.insecure_channel``). :func:`mesh_channel` puts the two together with
``grpc.intercept_channel``.

**Async:** a ``grpc.aio`` interceptor cannot choose the channel its call goes
to (the continuation is bound to the channel it was installed on), so the
async seam is a channel: :class:`AioMeshChannel` implements ``grpc.aio.Channel``'s
``unary_unary`` and ``unary_stream`` with the same engine over a pool of
``grpc.aio`` channels. Stream-request methods are balanced (one instance per
call), never retried.

**Semantics** (:class:`.protocol.GrpcSemantics`): ``UNAVAILABLE`` is a failure,
retried on another instance (``retryable_codes`` sets the codes);
``RESOURCE_EXHAUSTED`` with ``grpc-retry-pushback-ms`` is retried after the
pushback; a negative pushback ends the call; a ``DEADLINE_EXCEEDED`` cut short
by the attempt timeout is a failure; every other status is the server's answer,
returned to the caller as gRPC would. A unary-stream call is retried only
before its first response message: once one has arrived the call is committed,
as in gRPC, and later errors reach the caller.

**Timeouts:** the call's gRPC ``timeout`` is its deadline across all attempts
(as in gRPC); each attempt may take what is left of it, or ``Timeouts.attempt``
/ the policy's ``attempt_timeout`` when shorter. Without a timeout: 10 s per
attempt, 30 s per call.

**Service config:** :func:`load_service_config` reads a gRPC service config
(JSON text or a mapping): ``methodConfig`` ``retryPolicy`` (maxAttempts,
initialBackoff, maxBackoff, backoffMultiplier, retryableStatusCodes),
``hedgingPolicy`` (maxAttempts, hedgingDelay) and ``timeout``, and the
top-level ``retryThrottling`` (maxTokens, tokenRatio), validated as gRPC does
(maxAttempts must be at least 2 and is capped at 5; durations are strings like
``"0.1s"``; maxTokens in (0, 1000], tokenRatio in (0, 1]). Pass it as
``service_config=`` to use, per method, its retry or hedging policy (on the
service's balancer and breaker), its retryable codes, its timeout and its
throttling budget.
"""

from __future__ import annotations

import contextvars
import json
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._extras import missing_extra

try:
    import grpc
    import grpc.aio
except ImportError as exc:
    raise missing_extra(__name__, "grpc", exc) from exc

from ..budget import TokenBucketRetryBudget
from ..circuit_breaker import CircuitBreakerConfig
from ..load_balancer import ServiceInstance
from ..proxy import ServiceProxy
from ..retry import RetryPolicy
from .protocol import (
    CallState,
    ClientCore,
    FailureResponse,
    GrpcSemantics,
    Services,
    Timeouts,
    UnknownService,
    Verdict,
    grpc_code_name,
    parse_grpc_pushback,
    trace_headers,
)

__all__ = [
    "AioMeshChannel",
    "GrpcSemantics",
    "GrpcServiceConfig",
    "InstanceChannels",
    "MeshInterceptor",
    "MethodConfig",
    "Timeouts",
    "aio_mesh_channel",
    "load_service_config",
    "mesh_channel",
]

PUSHBACK_KEY = "grpc-retry-pushback-ms"
MAX_ATTEMPTS_CAP = 5
"""gRPC caps ``maxAttempts`` (of retry and hedging policies) at 5."""

# The instance the current attempt goes to (set by the interceptor, read by the pool).
_TARGET: contextvars.ContextVar[ServiceInstance | None] = contextvars.ContextVar(
    "codomyrmex_service_mesh_grpc_target", default=None
)


# -- service config ----------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)(\.\d{1,9})?s$")


def _duration(value: Any, field_name: str) -> float:
    if not isinstance(value, str) or not _DURATION.match(value):
        raise ValueError(f'{field_name} must be a duration string like "0.1s", got {value!r}')
    return float(value[:-1])


def _positive_duration(value: Any, field_name: str) -> float:
    seconds = _duration(value, field_name)
    if seconds <= 0:
        raise ValueError(f"{field_name} must be > 0s, got {value!r}")
    return seconds


def _max_attempts(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name} must be an integer, got {value!r}")
    if value < 2:
        raise ValueError(f"{field_name} must be at least 2, got {value!r}")
    return min(value, MAX_ATTEMPTS_CAP)


def _codes(value: Any, field_name: str, *, required: bool) -> frozenset[str]:
    if value is None and not required:
        return frozenset()
    if not isinstance(value, list) or (required and not value):
        raise ValueError(f"{field_name} must be a non-empty list of status codes, got {value!r}")
    codes = frozenset(grpc_code_name(code, field_name) for code in value)
    if "OK" in codes:
        raise ValueError(f"{field_name} must not hold OK")
    return codes


@dataclass(frozen=True)
class MethodConfig:
    """One ``methodConfig`` entry of a service config, as the mesh's settings."""

    names: tuple[tuple[str, str], ...] = ()
    """(service, method) pairs; an empty method is every method of the service, and
    an empty service is every method of every service (the default config)."""
    max_attempts: int | None = None
    initial_backoff: float | None = None
    max_backoff: float | None = None
    backoff_multiplier: float | None = None
    retryable_codes: frozenset[str] = frozenset()
    hedging_max_attempts: int | None = None
    hedging_delay: float | None = None
    non_fatal_codes: frozenset[str] = frozenset()
    timeout: float | None = None

    def retry_policy(self, budget: TokenBucketRetryBudget | None = None) -> RetryPolicy:
        """The retry policy of this config (gRPC's jittered exponential backoff)."""
        if self.max_attempts is None:
            return RetryPolicy(max_retries=0, budget=budget)
        assert self.initial_backoff is not None and self.max_backoff is not None
        return RetryPolicy(
            max_retries=self.max_attempts - 1,
            initial_delay=self.initial_backoff,
            max_delay=self.max_backoff,
            exponential_base=self.backoff_multiplier or 1.0,
            jitter=True,
            budget=budget,
        )

    @property
    def semantics(self) -> GrpcSemantics:
        codes = self.retryable_codes or self.non_fatal_codes
        return GrpcSemantics(codes) if codes else GrpcSemantics()


@dataclass(frozen=True)
class GrpcServiceConfig:
    """A parsed gRPC service config: method configs and retry throttling."""

    methods: tuple[MethodConfig, ...] = ()
    max_tokens: float | None = None
    token_ratio: float | None = None
    budget: TokenBucketRetryBudget | None = field(default=None, compare=False)

    def for_method(self, full_method: str) -> MethodConfig | None:
        """The config of ``/package.Service/Method``: exact, then the service's, then default."""
        service, _, method = full_method.lstrip("/").partition("/")
        best: MethodConfig | None = None
        rank = 0
        for config in self.methods:
            for svc, meth in config.names:
                if svc == service and meth == method:
                    return config
                if svc == service and not meth and rank < 2:
                    best, rank = config, 2
                elif not svc and not meth and rank < 1:
                    best, rank = config, 1
        return best


def _method_config(entry: Any, index: int) -> MethodConfig:
    where = f"methodConfig[{index}]"
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be an object, got {entry!r}")
    names: list[tuple[str, str]] = []
    for n, name in enumerate(entry.get("name") or []):
        if not isinstance(name, Mapping):
            raise TypeError(f"{where}.name[{n}] must be an object, got {name!r}")
        service = name.get("service", "")
        method = name.get("method", "")
        if not isinstance(service, str) or not isinstance(method, str):
            raise TypeError(f"{where}.name[{n}] service and method must be strings")
        if method and not service:
            raise ValueError(f"{where}.name[{n}] has a method without a service")
        names.append((service, method))
    retry = entry.get("retryPolicy")
    hedging = entry.get("hedgingPolicy")
    if retry is not None and hedging is not None:
        raise ValueError(f"{where} may have retryPolicy or hedgingPolicy, not both")
    options: dict[str, Any] = {"names": tuple(names)}
    if "timeout" in entry:
        options["timeout"] = _positive_duration(entry["timeout"], f"{where}.timeout")
    if retry is not None:
        if not isinstance(retry, Mapping):
            raise TypeError(f"{where}.retryPolicy must be an object, got {retry!r}")
        p = f"{where}.retryPolicy"
        multiplier = retry.get("backoffMultiplier")
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
            raise TypeError(f"{p}.backoffMultiplier must be a number, got {multiplier!r}")
        if not (multiplier > 0 and math.isfinite(multiplier)):
            raise ValueError(f"{p}.backoffMultiplier must be > 0, got {multiplier!r}")
        if multiplier < 1:
            raise ValueError(
                f"{p}.backoffMultiplier below 1 (shrinking backoff) is not supported, "
                f"got {multiplier!r}"
            )
        options.update(
            max_attempts=_max_attempts(retry.get("maxAttempts"), f"{p}.maxAttempts"),
            initial_backoff=_positive_duration(retry.get("initialBackoff"), f"{p}.initialBackoff"),
            max_backoff=_positive_duration(retry.get("maxBackoff"), f"{p}.maxBackoff"),
            backoff_multiplier=float(multiplier),
            retryable_codes=_codes(
                retry.get("retryableStatusCodes"), f"{p}.retryableStatusCodes", required=True
            ),
        )
    if hedging is not None:
        if not isinstance(hedging, Mapping):
            raise TypeError(f"{where}.hedgingPolicy must be an object, got {hedging!r}")
        p = f"{where}.hedgingPolicy"
        delay = hedging.get("hedgingDelay", "0s")
        options.update(
            hedging_max_attempts=_max_attempts(hedging.get("maxAttempts"), f"{p}.maxAttempts"),
            hedging_delay=_duration(delay, f"{p}.hedgingDelay"),
            non_fatal_codes=_codes(
                hedging.get("nonFatalStatusCodes"), f"{p}.nonFatalStatusCodes", required=False
            ),
        )
    return MethodConfig(**options)


def load_service_config(config: str | bytes | Mapping[str, Any]) -> GrpcServiceConfig:
    """Parse and validate a gRPC service config (JSON text or an already loaded mapping)."""
    if isinstance(config, (str, bytes)):
        try:
            config = json.loads(config)
        except ValueError as exc:
            raise ValueError(f"service config is not valid JSON: {exc}") from exc
    if not isinstance(config, Mapping):
        raise TypeError(f"service config must be a JSON object, got {config!r}")
    entries = config.get("methodConfig") or []
    if not isinstance(entries, list):
        raise TypeError(f"methodConfig must be a list, got {entries!r}")
    methods = tuple(_method_config(entry, i) for i, entry in enumerate(entries))
    throttling = config.get("retryThrottling")
    if throttling is None:
        return GrpcServiceConfig(methods)
    if not isinstance(throttling, Mapping):
        raise TypeError(f"retryThrottling must be an object, got {throttling!r}")
    tokens = throttling.get("maxTokens")
    ratio = throttling.get("tokenRatio")
    if isinstance(tokens, bool) or not isinstance(tokens, (int, float)):
        raise TypeError(f"retryThrottling.maxTokens must be a number, got {tokens!r}")
    if not 0 < tokens <= 1000:
        raise ValueError(f"retryThrottling.maxTokens must be in (0, 1000], got {tokens!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"retryThrottling.tokenRatio must be a number, got {ratio!r}")
    if not 0 < ratio <= 1:
        raise ValueError(f"retryThrottling.tokenRatio must be in (0, 1], got {ratio!r}")
    budget = TokenBucketRetryBudget(max_tokens=max(1.0, float(tokens)), token_ratio=float(ratio))
    return GrpcServiceConfig(methods, float(tokens), float(ratio), budget)


# -- what sync and async share -------------------------------------------------------


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


_Configured = tuple["ServiceProxy", "ServiceProxy", tuple[GrpcSemantics, "Timeouts | None"]]
"""Per method: (the service's proxy, the proxy the method's config makes, its settings)."""


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
        self._per_method: dict[tuple[int, str], _Configured] = {}

    def proxy(self) -> ServiceProxy:
        proxy = self.core.lookup(self.service)
        if proxy is None:
            raise UnknownService(self.service)
        return proxy

    def start(self, method: str, timeout: float | None, request: Any) -> tuple[CallState, Any]:
        """The call's state and its semantics, from the method's config when there is one."""
        proxy = self.proxy()
        semantics = self.semantics
        timeouts = None
        if self.config is not None:
            key = (id(proxy), method)
            known = self._per_method.get(key)
            if known is None or known[0] is not proxy:
                known = self._configure(proxy, method)
                self._per_method[key] = known
            chosen: ServiceProxy = known[1]
            semantics, timeouts = known[2]
        else:
            chosen = proxy
        call = self.core.start(chosen, request, timeout, True, timeouts)
        return call, semantics

    def _configure(self, proxy: ServiceProxy, method: str) -> _Configured:
        assert self.config is not None
        config = self.config.for_method(method)
        if config is None:
            return (proxy, proxy, (self.semantics, None))
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
        return (proxy, mapped, (config.semantics, timeouts))

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


# -- sync: a channel pool and an interceptor -----------------------------------------


class InstanceChannels(grpc.Channel):
    """One real channel per instance of a service; each call goes to the attempt's instance.

    The instance is the one :class:`MeshInterceptor` chose for the current attempt;
    a call made outside it (a stream-request method) goes to the balancer's pick.
    """

    def __init__(
        self,
        engine_or_proxy: Any,
        channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
    ) -> None:
        if not callable(channel_factory):
            raise TypeError(f"channel_factory must be callable, got {channel_factory!r}")
        self._resolve = engine_or_proxy
        self._factory = channel_factory
        self._channels: dict[str, grpc.Channel] = {}
        self._callables: dict[tuple[str, str, str, Any, Any], Any] = {}

    def channel_for(self, instance: ServiceInstance) -> grpc.Channel:
        target = instance.address
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels.setdefault(target, self._factory(target))
        return channel

    def _multicallable(self, kind: str, method: str, serializer: Any, deserializer: Any) -> Any:
        instance = _TARGET.get()
        if instance is None:
            instance = self._resolve().load_balancer.get_instance()
            if instance is None:
                raise UnknownService(f"no healthy instance for {method}")
        key = (instance.address, kind, method, serializer, deserializer)
        found = self._callables.get(key)
        if found is None:
            channel = self.channel_for(instance)
            found = getattr(channel, kind)(
                method, request_serializer=serializer, response_deserializer=deserializer
            )
            self._callables[key] = found
        return found

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Routed(self, "unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Routed(self, "unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Routed(self, "stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Routed(self, "stream_stream", method, request_serializer, response_deserializer)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        raise NotImplementedError("InstanceChannels has one channel per instance")

    def unsubscribe(self, callback: Any) -> None:
        raise NotImplementedError("InstanceChannels has one channel per instance")

    def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._callables = {}
        for channel in channels.values():
            channel.close()

    def __enter__(self) -> InstanceChannels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Routed:
    """A multicallable that resolves its instance's real multicallable per call."""

    __slots__ = ("_deserializer", "_kind", "_method", "_pool", "_serializer")

    def __init__(
        self, pool: InstanceChannels, kind: str, method: str, ser: Any, deser: Any
    ) -> None:
        self._pool = pool
        self._kind = kind
        self._method = method
        self._serializer = ser
        self._deserializer = deser

    def _target(self) -> Any:
        return self._pool._multicallable(
            self._kind, self._method, self._serializer, self._deserializer
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().future(*args, **kwargs)


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


class MeshInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Runs unary-unary and unary-stream calls through the service's proxy.

    Use it over :class:`InstanceChannels` (see :func:`mesh_channel`): each attempt
    goes to the instance the balancer picked for it.
    """

    def __init__(
        self,
        services: Services,
        service: str,
        *,
        semantics: GrpcSemantics | None = None,
        instance_breaker: CircuitBreakerConfig | None = None,
        timeouts: Timeouts | None = None,
        service_config: GrpcServiceConfig | str | Mapping[str, Any] | None = None,
    ) -> None:
        self._engine = _Engine(
            services, service, semantics, instance_breaker, timeouts, service_config
        )

    @property
    def engine_proxy(self) -> Callable[[], ServiceProxy]:
        return self._engine.proxy

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        engine = self._engine
        call, semantics = engine.start(
            client_call_details.method, client_call_details.timeout, request
        )

        def attempt(instance: ServiceInstance, state: CallState) -> Any:
            limit = state.limit()
            details = _CallDetails(
                client_call_details.method,
                limit,
                _traced(client_call_details.metadata),
                client_call_details.credentials,
                client_call_details.wait_for_ready,
                client_call_details.compression,
            )
            return engine.core.guard(instance, state, send, instance, details, state, limit)

        def send(instance: ServiceInstance, details: Any, state: CallState, limit: float) -> Any:
            token = _TARGET.set(instance)
            try:
                outcome = continuation(details, request)
            finally:
                _TARGET.reset(token)
            return engine.judge(
                state,
                semantics,
                outcome,
                outcome.code(),
                outcome.trailing_metadata(),
                _cut(state, limit),
            )

        return _unwrap(engine.core.run(attempt, call, True))

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        engine = self._engine
        call, semantics = engine.start(
            client_call_details.method, client_call_details.timeout, request
        )

        def attempt(instance: ServiceInstance, state: CallState) -> Any:
            remaining = state.deadline_at - state.clock()
            limit = state.limit()
            details = _CallDetails(
                client_call_details.method,
                remaining,  # the stream lives on after its first message: the call's deadline
                _traced(client_call_details.metadata),
                client_call_details.credentials,
                client_call_details.wait_for_ready,
                client_call_details.compression,
            )
            return engine.core.guard(instance, state, send, instance, details, state, limit)

        def send(instance: ServiceInstance, details: Any, state: CallState, limit: float) -> Any:
            token = _TARGET.set(instance)
            try:
                stream = continuation(details, request)
            finally:
                _TARGET.reset(token)
            try:
                first = next(stream)
            except StopIteration:
                return _Committed(stream, None, True)
            except grpc.RpcError as error:
                code = error.code()
                trailing = error.trailing_metadata()
                return engine.judge(state, semantics, error, code, trailing, _cut(state, limit))
            return _Committed(stream, first, False)

        result = _unwrap(engine.core.run(attempt, call, True))
        if isinstance(result, grpc.RpcError) and not isinstance(result, _Committed):
            raise result
        return result

    def close(self) -> None:
        self._engine.core.close()


def mesh_channel(
    services: Services,
    service: str,
    *,
    channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
    **options: Any,
) -> grpc.Channel:
    """A sync channel whose unary-request calls go through the mesh (see the module doc).

    ``options`` are :class:`MeshInterceptor`'s (semantics, instance_breaker, timeouts,
    service_config).
    """
    interceptor = MeshInterceptor(services, service, **options)
    pool = InstanceChannels(interceptor.engine_proxy, channel_factory)
    return grpc.intercept_channel(pool, interceptor)


# -- async: a channel ------------------------------------------------------------------


class AioMeshChannel(grpc.aio.Channel):
    """A ``grpc.aio`` channel sending each call through the mesh, over one channel per instance."""

    def __init__(
        self,
        services: Services,
        service: str,
        *,
        channel_factory: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
        semantics: GrpcSemantics | None = None,
        instance_breaker: CircuitBreakerConfig | None = None,
        timeouts: Timeouts | None = None,
        service_config: GrpcServiceConfig | str | Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(channel_factory):
            raise TypeError(f"channel_factory must be callable, got {channel_factory!r}")
        self._engine = _Engine(
            services, service, semantics, instance_breaker, timeouts, service_config
        )
        self._factory = channel_factory
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel_for(self, instance: ServiceInstance) -> grpc.aio.Channel:
        target = instance.address
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels.setdefault(target, self._factory(target))
        return channel

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _AioUnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _AioUnaryStream(self, method, request_serializer, response_deserializer)

    def _balanced(self, kind: str, method: str, ser: Any, deser: Any) -> Any:
        instance = self._engine.proxy().load_balancer.get_instance()
        if instance is None:
            raise UnknownService(f"no healthy instance for {method}")
        return getattr(self.channel_for(instance), kind)(
            method, request_serializer=ser, response_deserializer=deser
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._balanced("stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._balanced("stream_stream", method, request_serializer, response_deserializer)

    async def close(self, grace: float | None = None) -> None:
        self._engine.core.close()
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(grace)

    async def __aenter__(self) -> AioMeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        raise NotImplementedError("AioMeshChannel has one channel per instance")

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        raise NotImplementedError("AioMeshChannel has one channel per instance")

    async def channel_ready(self) -> None:
        for channel in list(self._channels.values()):
            await channel.channel_ready()


class _AioCallable:
    __slots__ = ("_channel", "_deserializer", "_method", "_serializer")

    def __init__(self, channel: AioMeshChannel, method: str, ser: Any, deser: Any) -> None:
        self._channel = channel
        self._method = method
        self._serializer = ser
        self._deserializer = deser

    def _real(self, instance: ServiceInstance, kind: str) -> Any:
        return getattr(self._channel.channel_for(instance), kind)(
            self._method,
            request_serializer=self._serializer,
            response_deserializer=self._deserializer,
        )


class _AioUnaryUnary(_AioCallable):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, Any]] | None = None,
        **options: Any,
    ) -> Any:
        return self._invoke(request, timeout, metadata, options)

    async def _invoke(self, request: Any, timeout: Any, metadata: Any, options: Any) -> Any:
        engine = self._channel._engine
        call, semantics = engine.start(self._method, timeout, request)

        async def attempt(instance: ServiceInstance, state: CallState) -> Any:
            limit = state.limit()
            return await engine.core.guard_async(instance, state, send, instance, state, limit)

        async def send(instance: ServiceInstance, state: CallState, limit: float) -> Any:
            rpc = self._real(instance, "unary_unary")
            try:
                return await rpc(request, timeout=limit, metadata=_traced(metadata), **options)
            except grpc.aio.AioRpcError as error:
                return engine.judge(
                    state,
                    semantics,
                    error,
                    error.code(),
                    error.trailing_metadata(),
                    _cut(state, limit),
                )

        result = _unwrap(await engine.core.run_async(attempt, call, True))
        if isinstance(result, grpc.aio.AioRpcError):
            raise result
        return result


class _AioUnaryStream(_AioCallable):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, Any]] | None = None,
        **options: Any,
    ) -> AsyncIterator[Any]:
        return self._stream(request, timeout, metadata, options)

    async def _stream(
        self, request: Any, timeout: Any, metadata: Any, options: Any
    ) -> AsyncIterator[Any]:
        engine = self._channel._engine
        call, semantics = engine.start(self._method, timeout, request)

        async def attempt(instance: ServiceInstance, state: CallState) -> Any:
            limit = state.limit()
            return await engine.core.guard_async(instance, state, send, instance, state, limit)

        async def send(instance: ServiceInstance, state: CallState, limit: float) -> Any:
            remaining = state.deadline_at - state.clock()
            stream = self._real(instance, "unary_stream")(
                request, timeout=remaining, metadata=_traced(metadata), **options
            )
            iterator = stream.__aiter__()
            try:
                first = await iterator.__anext__()
            except StopAsyncIteration:
                return (iterator, ())
            except grpc.aio.AioRpcError as error:
                return engine.judge(
                    state,
                    semantics,
                    error,
                    error.code(),
                    error.trailing_metadata(),
                    _cut(state, limit),
                )
            return (iterator, (first,))

        result = _unwrap(await engine.core.run_async(attempt, call, True))
        if isinstance(result, grpc.aio.AioRpcError):
            raise result
        iterator, head = result
        for message in head:
            yield message
        async for message in iterator:
            yield message


def aio_mesh_channel(services: Services, service: str, **options: Any) -> AioMeshChannel:
    """A ``grpc.aio`` channel through the mesh; ``options`` are :class:`AioMeshChannel`'s."""
    return AioMeshChannel(services, service, **options)


def _traced(metadata: Any) -> Any:
    """The call's metadata plus the W3C trace context of this attempt, once tracing is
    imported (see :func:`.protocol.set_trace_injector`); the metadata itself otherwise."""
    traced = trace_headers()
    if traced is None:
        return metadata
    return (*(metadata or ()), *traced.items())
