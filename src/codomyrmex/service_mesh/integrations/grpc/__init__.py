"""gRPC (grpcio) through the mesh: a pool of channels, one per instance, picked per call.

Sync (``grpc``)::

    channel = mesh_channel(mesh, "orders")          # a MeshChannel: one channel per instance
    stub = OrdersStub(channel)                      # generated or generic stubs
    stub.Get(request, timeout=2.0)

Async (``grpc.aio``)::

    channel = aio_mesh_channel(mesh, "orders")
    await stub.Get(request)

**Channels** (:mod:`.channel`): :class:`MeshChannel` (sync, what :func:`mesh_channel`
returns) and :class:`AioMeshChannel` (``grpc.aio``, from :func:`aio_mesh_channel`) keep
one real channel per instance (``channel_factory(target)``, by default
``grpc.insecure_channel`` / ``grpc.aio.insecure_channel``) and run each unary-unary and
unary-stream call through the service's proxy (balancer, breakers, retry policy),
calling the picked instance's multicallable directly. Stream-request methods are
balanced (one instance per call), never retried.

**Interceptor** (:mod:`.interceptor`): :class:`MeshInterceptor` is the same engine as a
``grpc`` client interceptor for unary-unary and unary-stream calls, over
:class:`InstanceChannels` (one channel per instance), for composing with other
interceptors: ``grpc.intercept_channel(InstanceChannels(...), MeshInterceptor(...))``.
A ``grpc.aio`` interceptor cannot choose the channel its call goes to, so the async
seam is the channel.

**Semantics** (:class:`.protocol.GrpcSemantics`): ``UNAVAILABLE`` is a failure,
retried on another instance (``retryable_codes`` sets the codes);
``RESOURCE_EXHAUSTED`` with ``grpc-retry-pushback-ms`` is retried after the
pushback; a negative pushback ends the call; a ``DEADLINE_EXCEEDED`` cut short
by the attempt timeout is a failure; every other status is the server's answer,
returned to the caller as gRPC would. A unary-stream call is retried only
before its first response message: once one has arrived the call is committed,
as in gRPC, and later errors reach the caller.

**Timeouts:** the call's gRPC ``timeout`` is its deadline across all attempts
(as in gRPC); each attempt gets a third of it (so a hung instance leaves time for
two more attempts), or ``Timeouts.attempt`` / the policy's ``attempt_timeout``
when set, never more than what is left of the deadline. Without a timeout: 10 s
per attempt, 30 s per call.

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

from .._extras import missing_extra

try:
    import grpc
    import grpc.aio  # noqa: F401
except ImportError as exc:
    raise missing_extra(__name__, "grpc", exc) from exc

from ..protocol import GrpcSemantics, Timeouts
from .channel import AioMeshChannel, MeshChannel, aio_mesh_channel, mesh_channel
from .config import MAX_ATTEMPTS_CAP, GrpcServiceConfig, MethodConfig, load_service_config
from .engine import PUSHBACK_KEY
from .interceptor import InstanceChannels, MeshInterceptor

__all__ = [
    "MAX_ATTEMPTS_CAP",
    "PUSHBACK_KEY",
    "AioMeshChannel",
    "GrpcSemantics",
    "GrpcServiceConfig",
    "InstanceChannels",
    "MeshChannel",
    "MeshInterceptor",
    "MethodConfig",
    "Timeouts",
    "aio_mesh_channel",
    "load_service_config",
    "mesh_channel",
]
