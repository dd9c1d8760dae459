"""The sync gRPC client interceptor over a pool of channels, one per instance.

:class:`MeshInterceptor` runs each unary-unary and unary-stream call through the
service's proxy and, per attempt, tells :class:`InstanceChannels` underneath which
instance to use. For composing with other interceptors; :func:`.mesh_channel` gives
the leaner :class:`.MeshChannel`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc

from ...circuit_breaker import CircuitBreakerConfig
from ...load_balancer import ServiceInstance
from ...proxy import ServiceProxy
from ..protocol import CallState, GrpcSemantics, Services, Timeouts, UnknownService
from .config import GrpcServiceConfig
from .engine import (
    _TARGET,
    _CallDetails,
    _commit,
    _Committed,
    _cut,
    _Engine,
    _SyncChannel,
    _traced,
    _unwrap,
)

__all__ = ["InstanceChannels", "MeshInterceptor"]


class InstanceChannels(_SyncChannel, grpc.Channel):
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

    def _callable(self, kind: str, method: str, ser: Any, deser: Any) -> _Routed:
        return _Routed(self, kind, method, ser, deser)

    def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._callables = {}
        for channel in channels.values():
            channel.close()


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
        return self._intercept(continuation, client_call_details, request, False)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request, True)

    def _intercept(self, continuation: Any, details: Any, request: Any, stream: bool) -> Any:
        """One call, unary or streaming; each attempt goes to the instance picked for it."""
        engine = self._engine
        call, semantics = engine.start(details.method, details.timeout, request)

        def attempt(instance: ServiceInstance, state: CallState) -> Any:
            # A stream lives on after its first message: it gets the call's deadline.
            remaining = state.deadline_at - state.clock()
            limit = state.limit()
            attempt_details = _CallDetails(
                details.method,
                remaining if stream else limit,
                _traced(details.metadata),
                details.credentials,
                details.wait_for_ready,
                details.compression,
            )
            return engine.core.guard(instance, state, send, instance, attempt_details, state, limit)

        def send(instance: ServiceInstance, details: Any, state: CallState, limit: float) -> Any:
            token = _TARGET.set(instance)
            try:
                outcome = continuation(details, request)
            finally:
                _TARGET.reset(token)
            if not stream:
                code, trailing = outcome.code(), outcome.trailing_metadata()
                return engine.judge(state, semantics, outcome, code, trailing, _cut(state, limit))
            try:
                return _commit(outcome, limit)
            except grpc.RpcError as error:
                code, trailing = error.code(), error.trailing_metadata()
                return engine.judge(state, semantics, error, code, trailing, _cut(state, limit))

        result = _unwrap(engine.core.run(attempt, call, True))
        if stream and isinstance(result, grpc.RpcError) and not isinstance(result, _Committed):
            raise result
        return result

    def close(self) -> None:
        self._engine.core.close()
