"""gRPC channels through the mesh, sync (``grpc``) and async (``grpc.aio``).

Both hold one real channel per instance (``channel_factory(target)``) and run each
unary-unary and unary-stream call through the service's proxy, calling the picked
instance's real multicallable directly: no interceptor machinery on the way, and the
per-instance multicallables are made once. Stream-request methods are balanced (one
instance per call), never retried. Sync and async share everything but the one line
that sends (``rpc(...)`` or ``await rpc(...)``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from ...circuit_breaker import CircuitBreakerConfig
from ...load_balancer import ServiceInstance
from ...proxy import ServiceProxy
from ..protocol import (
    CallState,
    GrpcSemantics,
    Services,
    Timeouts,
    UnknownService,
    trace_headers,
    within,
)
from .config import GrpcServiceConfig
from .engine import (
    NO_ROUTE,
    Route,
    _Answer,
    _commit,
    _Committed,
    _cut,
    _Engine,
    _Pool,
    _SyncChannel,
    _traced,
    _unwrap,
    _with_trace,
)

__all__ = ["AioMeshChannel", "MeshChannel", "aio_mesh_channel", "mesh_channel"]

_Config = GrpcServiceConfig | str | Mapping[str, Any] | None


class _Channels(_Pool):
    """What the sync and async channels share: the engine and one channel per instance."""

    _default_factory: Callable[[str], Any]

    def __init__(
        self,
        services: Services,
        service: str,
        *,
        channel_factory: Callable[[str], Any] | None = None,
        semantics: GrpcSemantics | None = None,
        instance_breaker: CircuitBreakerConfig | None = None,
        timeouts: Timeouts | None = None,
        service_config: _Config = None,
    ) -> None:
        """``channel_factory(target)`` makes each instance's channel (by default
        ``grpc.insecure_channel``, or ``grpc.aio.insecure_channel`` for the aio channel)."""
        factory = type(self)._default_factory if channel_factory is None else channel_factory
        if not callable(factory):
            raise TypeError(f"channel_factory must be callable, got {channel_factory!r}")
        self._engine = _Engine(
            services, service, semantics, instance_breaker, timeouts, service_config
        )
        self._factory = factory
        self._channels: dict[str, Any] = {}

    def _callable(self, kind: str, method: str, ser: Any, deser: Any) -> Any:
        if kind == "unary_unary":
            return self._unary_unary(self, kind, method, ser, deser)
        if kind == "unary_stream":
            return self._unary_stream(self, kind, method, ser, deser)
        instance = self._engine.proxy().load_balancer.get_instance()
        if instance is None:
            raise UnknownService(f"no healthy instance for {method}")
        return getattr(self.channel_for(instance), kind)(
            method, request_serializer=ser, response_deserializer=deser
        )

    _unary_unary: type[_Callable]
    _unary_stream: type[_Callable]

    def _take_channels(self) -> list[Any]:
        self._engine.core.close()
        channels, self._channels = self._channels, {}
        return list(channels.values())


class _Callable:
    """One method of a mesh channel: per call, the route and the call's state; per attempt,
    the instance's rpc.

    Per call the work is the service lookup, :meth:`.ClientCore.start` and the stack; the
    method's route (its proxy, semantics and timeouts), each instance's multicallable and
    whether attempts go through per-instance breakers are worked out once.
    """

    __slots__ = (
        "_attempt",
        "_channels",
        "_core",
        "_deserializer",
        "_engine",
        "_kind",
        "_last",
        "_method",
        "_real",
        "_route",
        "_serializer",
        "_service",
    )

    def __init__(self, channels: _Channels, kind: str, method: str, ser: Any, deser: Any) -> None:
        self._channels = channels
        engine = self._engine = channels._engine
        core = self._core = engine.core
        self._service = engine.service
        self._kind = kind
        self._method = method
        self._serializer = ser
        self._deserializer = deser
        self._route: Route = NO_ROUTE
        # By id(instance): the instance and this method's multicallable on its channel.
        self._real: dict[int, tuple[ServiceInstance, Any]] = {}
        self._last: tuple[object, Any] = (None, None)  # the last instance sent to
        # One attempt: through the instance's breaker, or straight to the send.
        self._attempt: Any
        if core.guarded:
            self._attempt = self._guarded_async if self._is_async else self._guarded
        else:
            self._attempt = self._send_async if self._is_async else self._send

    _is_async = False

    def _reroute(self, proxy: ServiceProxy | None) -> Route:
        """The route of this method on the service's current proxy (kept for the next call)."""
        route = self._route = self._engine.route(proxy, self._method)
        return route

    def _rpc(self, instance: ServiceInstance) -> tuple[ServiceInstance, Any]:
        """``instance`` and this method's multicallable on its channel (made once)."""
        rpc = getattr(self._channels.channel_for(instance), self._kind)(
            self._method,
            request_serializer=self._serializer,
            response_deserializer=self._deserializer,
        )
        real = self._real
        if len(real) >= 256:  # instances replaced over time: forget the old ones
            real.clear()
        known = real[id(instance)] = (instance, rpc)
        return known

    def _rpc_of(self, instance: ServiceInstance) -> Any:
        """The real multicallable of this method on ``instance`` (the last one kept)."""
        known = self._real.get(id(instance))
        if known is None or known[0] is not instance:
            known = self._rpc(instance)
        self._last = known
        return known[1]

    def _failed(self, state: CallState, error: Any, limit: float) -> Any:
        """An attempt ended with a status: the caller's answer, or raised as a failure."""
        semantics = state.request[3]
        trailing = error.trailing_metadata()
        return self._engine.judge(
            state, semantics, error, error.code(), trailing, _cut(state, limit)
        )

    @staticmethod
    def _answer(result: Any) -> Any:
        """The call's result for the caller: a failing status is raised as gRPC would."""
        result = _unwrap(result)
        if isinstance(result, grpc.RpcError) and not isinstance(result, _Committed):
            raise result
        return result

    def _guarded(self, instance: ServiceInstance, state: CallState) -> Any:
        limit = state.limit()  # outside the breaker: the deadline is not the instance's
        return self._core.guard(instance, state, self._send, instance, state, limit)

    async def _guarded_async(self, instance: ServiceInstance, state: CallState) -> Any:
        limit = state.limit()
        return await self._core.guard_async(
            instance, state, self._send_async, instance, state, limit
        )

    def _send(self, instance: ServiceInstance, state: CallState, limit: float | None = None) -> Any:
        """One attempt (``limit``: its timeout, None: worked out here)."""
        raise NotImplementedError

    async def _send_async(
        self, instance: ServiceInstance, state: CallState, limit: float | None = None
    ) -> Any:
        raise NotImplementedError


def _stream_attempt(state: CallState, limit: float | None) -> tuple[Any, Any, Any, float, float]:
    """(request, metadata, options, limit of the first message, time the stream may run)."""
    request, metadata, options, _, _ = state.request
    if limit is None:
        limit = state.limit()
    return request, metadata, options, limit, state.deadline_at - state.clock()


_SPECIAL = (_Answer, grpc.RpcError)
"""Results that are not the response itself (see :meth:`_Callable._answer`)."""


def _options(credentials: Any, wait_for_ready: Any, compression: Any) -> dict[str, Any]:
    """The call's other gRPC options (None instead when none is given, the usual case)."""
    return {
        "credentials": credentials,
        "wait_for_ready": wait_for_ready,
        "compression": compression,
    }


# -- sync -------------------------------------------------------------------------------


def _sync_call(with_call: bool) -> Any:
    """``__call__`` (the response) or ``with_call`` (the response and its call)."""

    def call(
        self: _Callable,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        core = self._core
        proxy = core.lookup(self._service)
        route = self._route
        if route[0] is not proxy:
            route = self._reroute(proxy)
        options = (
            None
            if credentials is None and wait_for_ready is None and compression is None
            else _options(credentials, wait_for_ready, compression)
        )
        sent = (request, metadata, options, route[2], with_call)
        state = core.start(route[1], sent, timeout, True, route[3])
        try:
            result = state.proxy.call(self._attempt, state)
        except Exception as exc:
            result = core.settle(exc, state)
        if isinstance(result, _SPECIAL):
            return self._answer(result)
        return result

    return call


class _UnaryUnary(_Callable):
    __slots__ = ()

    __call__ = _sync_call(False)
    with_call = _sync_call(True)

    def future(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """The finished call as a future (the attempts run before this returns)."""
        try:
            return self.with_call(request, timeout, **kwargs)[1]
        except grpc.RpcError as error:
            return error

    def _send(self, instance: ServiceInstance, state: CallState, limit: float | None = None) -> Any:
        if limit is None:
            limit = state.limit()
        request, metadata, options, _, with_call = state.request
        last = self._last
        rpc = last[1] if last[0] is instance else self._rpc_of(instance)
        if with_call:
            rpc = rpc.with_call
        traced = trace_headers()  # this attempt's trace context (None: not tracing)
        if traced is not None:
            metadata = _with_trace(metadata, traced)
        try:
            if options is None:
                return rpc(request, timeout=limit, metadata=metadata)
            return rpc(request, timeout=limit, metadata=metadata, **options)
        except grpc.RpcError as error:
            return self._failed(state, error, limit)


class _UnaryStream(_Callable):
    """Retried only before the first response message: after it the call is committed."""

    __slots__ = ()

    __call__ = _sync_call(False)

    def _send(self, instance: ServiceInstance, state: CallState, limit: float | None = None) -> Any:
        request, metadata, options, limit, remaining = _stream_attempt(state, limit)
        stream: Iterator[Any] = self._rpc_of(instance)(
            request, timeout=remaining, metadata=_traced(metadata), **(options or {})
        )
        try:
            return _commit(stream, limit)
        except grpc.RpcError as error:
            return self._failed(state, error, limit)


class MeshChannel(_Channels, _SyncChannel, grpc.Channel):
    """A sync channel sending each unary-request call through the mesh (see the package doc)."""

    _unary_unary = _UnaryUnary
    _unary_stream = _UnaryStream
    _default_factory = staticmethod(grpc.insecure_channel)

    def close(self) -> None:
        for channel in self._take_channels():
            channel.close()


def mesh_channel(
    services: Services,
    service: str,
    *,
    channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
    **options: Any,
) -> grpc.Channel:
    """A sync channel whose unary-request calls go through the mesh (a :class:`MeshChannel`).

    ``options`` are :class:`MeshChannel`'s (semantics, instance_breaker, timeouts,
    service_config). To compose with other interceptors, use :class:`MeshInterceptor`
    over :class:`InstanceChannels` instead.
    """
    return MeshChannel(services, service, channel_factory=channel_factory, **options)


# -- async ------------------------------------------------------------------------------


class _AioCallable(_Callable):
    __slots__ = ()

    _is_async = True

    def _start(self, request: Any, timeout: float | None, metadata: Any, options: Any) -> Any:
        core = self._core
        proxy = core.lookup(self._service)
        route = self._route
        if route[0] is not proxy:
            route = self._reroute(proxy)
        sent = (request, metadata, options or None, route[2], False)
        return core.start(route[1], sent, timeout, True, route[3])

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, Any]] | None = None,
        **options: Any,
    ) -> Any:
        """The unary answer (awaitable) or the stream (async iterator) of one call."""
        return self._invoke(self._start(request, timeout, metadata, options))

    def _invoke(self, state: CallState) -> Any:
        """The call's answer: awaited (unary) or streamed (unary-stream)."""
        raise NotImplementedError

    async def _run(self, state: CallState) -> Any:
        try:
            result = await state.proxy.call_async(self._attempt, state)
        except Exception as exc:
            result = self._core.settle(exc, state)
        if isinstance(result, _SPECIAL):
            return self._answer(result)
        return result


class _AioUnaryUnary(_AioCallable):
    __slots__ = ()

    _invoke = _AioCallable._run

    async def _send_async(
        self, instance: ServiceInstance, state: CallState, limit: float | None = None
    ) -> Any:
        if limit is None:
            limit = state.limit()
        request, metadata, options, _, _ = state.request
        last = self._last
        rpc = last[1] if last[0] is instance else self._rpc_of(instance)
        traced = trace_headers()  # this attempt's trace context (None: not tracing)
        if traced is not None:
            metadata = _with_trace(metadata, traced)
        try:
            if options is None:
                return await rpc(request, timeout=limit, metadata=metadata)
            return await rpc(request, timeout=limit, metadata=metadata, **options)
        except grpc.aio.AioRpcError as error:
            return self._failed(state, error, limit)


class _AioUnaryStream(_AioCallable):
    __slots__ = ()

    async def _invoke(self, call: CallState) -> AsyncIterator[Any]:
        iterator, head = await self._run(call)
        for message in head:
            yield message
        async for message in iterator:
            yield message

    async def _send_async(
        self, instance: ServiceInstance, state: CallState, limit: float | None = None
    ) -> Any:
        request, metadata, options, limit, remaining = _stream_attempt(state, limit)
        stream = self._rpc_of(instance)(
            request, timeout=remaining, metadata=_traced(metadata), **(options or {})
        )
        iterator = stream.__aiter__()
        try:
            first = await within(limit, iterator.__anext__())  # then the stream is committed
        except (TimeoutError, asyncio.TimeoutError):
            stream.cancel()
            raise
        except StopAsyncIteration:
            return (iterator, ())
        except grpc.aio.AioRpcError as error:
            return self._failed(state, error, limit)
        return (iterator, (first,))


class AioMeshChannel(_Channels, grpc.aio.Channel):
    """A ``grpc.aio`` channel sending each call through the mesh, over one channel per instance.

    A ``grpc.aio`` interceptor cannot choose the channel its call goes to (the
    continuation is bound to the channel it was installed on), so the async seam is
    this channel.
    """

    _unary_unary = _AioUnaryUnary
    _unary_stream = _AioUnaryStream
    _default_factory = staticmethod(grpc.aio.insecure_channel)

    async def close(self, grace: float | None = None) -> None:
        for channel in self._take_channels():
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


def aio_mesh_channel(services: Services, service: str, **options: Any) -> AioMeshChannel:
    """A ``grpc.aio`` channel through the mesh; ``options`` are :class:`AioMeshChannel`'s."""
    return AioMeshChannel(services, service, **options)
