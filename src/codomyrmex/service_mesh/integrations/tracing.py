"""OpenTelemetry tracing of calls through a mesh (``opentelemetry-api``, the ``[otel]`` extra).

One span for the call and, under it, one span per attempt::

    tracer = MeshTracer(mesh)                          # the global TracerProvider
    tracer = MeshTracer(mesh, tracer_provider=provider)
    result = tracer.call(proxy, handler, *args)        # proxy.call(handler, *args), traced
    result = await tracer.call_async(proxy, handler, *args)

- ``call <service>``: attributes ``service_mesh.service``, ``service_mesh.attempts`` and
  ``service_mesh.outcome`` (``success``, ``failure`` or ``rejected`` when the mesh refused
  the call: open breaker, no healthy instance, full bulkhead, retry budget); status ERROR
  and ``error.type`` when it raises.
- ``attempt <service>``: ``service_mesh.instance``, ``server.address``, ``server.port``,
  ``service_mesh.attempt`` (1-based) and, from the second attempt on,
  ``http.request.resend_count`` (the OpenTelemetry semantic convention: the number of
  times the request was sent before); ``service_mesh.outcome`` ``success``, ``failure``
  (the exception recorded) or ``cancelled`` (e.g. a per-attempt timeout, a lost hedge).

The tracer also subscribes to the mesh's events and adds span events to the span
current when they happen (the call's, for events of the call):
``service_mesh.breaker_rejected`` (breaker, reason), ``service_mesh.budget_refused``,
``service_mesh.rejected`` (reason: no healthy instance, full bulkhead),
``service_mesh.instance_ejected`` (instance, reason, duration),
``service_mesh.retry`` (attempt, delay) and ``service_mesh.breaker_transition``.

W3C trace context: :func:`inject_trace_context` writes ``traceparent`` (and
``tracestate``) of the current span into a mapping of outgoing headers, through the
globally configured propagator (W3C trace context and baggage by default). Client
integrations call it per attempt, so the server's span is a child of the attempt's.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from .. import __version__
from ..errors import ServiceMeshError
from ..events import CallRejected, Event, InstanceEjected, RetryScheduled, StateTransition
from ..load_balancer import ServiceInstance
from ..mesh import Mesh
from ..proxy import ServiceProxy
from ._extras import missing_extra
from ._listening import MeshListener
from .protocol import set_trace_injector

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:
    raise missing_extra(__name__, "otel", exc) from exc

_PROXY_REFUSALS = frozenset({"no_healthy_instance", "bulkhead_full"})
"""Refusals a proxy makes itself (it also echoes its breaker's, which are not repeated)."""

__all__ = ["TRACER_NAME", "MeshTracer", "inject_trace_context", "trace_context_headers"]

P = ParamSpec("P")
R = TypeVar("R")

TRACER_NAME = "codomyrmex.service_mesh"
"""The instrumentation scope of every span."""

RESEND_COUNT = "http.request.resend_count"
_SERVICE = "service_mesh.service"
_OUTCOME = "service_mesh.outcome"


def inject_trace_context(
    headers: MutableMapping[str, str], context: Any = None
) -> MutableMapping[str, str]:
    """Write the current span's W3C trace context (``traceparent``, ``tracestate``) into
    ``headers`` (any mutable mapping of str, e.g. ``httpx.Headers`` or a dict) and return it.

    Uses the globally configured propagator; ``context`` is an OpenTelemetry context
    (default: the current one). Writes nothing when no span is recording.
    """
    propagate.inject(headers, context=context)
    return headers


# From the import of this module on, every client integration propagates trace context.
set_trace_injector(inject_trace_context)


def trace_context_headers(context: Any = None) -> dict[str, str]:
    """The headers :func:`inject_trace_context` would write, as a new dict."""
    headers: dict[str, str] = {}
    propagate.inject(headers, context=context)
    return headers


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, ServiceMeshError):
        return "rejected"
    return "failure" if isinstance(exc, Exception) else "cancelled"


def _fail(span: Span, exc: BaseException, outcome: str) -> None:
    span.set_attribute(_OUTCOME, outcome)
    span.set_attribute("error.type", type(exc).__qualname__)
    if outcome != "cancelled":
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__qualname__))


class MeshTracer(MeshListener):
    """Traces calls through the services of one :class:`Mesh` (default: the default mesh).

    It subscribes to the mesh when created (for the span events); :meth:`close`
    unsubscribes (no more span events). :meth:`call` and :meth:`call_async` trace one call each.
    """

    def __init__(
        self, mesh: Mesh | None = None, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        self._tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider)
        self._listen(mesh)

    def __repr__(self) -> str:
        return f"MeshTracer({self.mesh!r})"

    # -- calls -------------------------------------------------------------------

    def call(
        self,
        proxy: ServiceProxy,
        handler: Callable[Concatenate[ServiceInstance, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """``proxy.call(handler, *args, **kwargs)`` in a call span, each attempt in its own."""
        service = proxy.service_name
        attempts = itertools.count(1)
        tried: list[int] = [0]

        def attempt(instance: ServiceInstance, /, *a: P.args, **kw: P.kwargs) -> R:
            number = tried[0] = next(attempts)
            with self._attempting(service, instance, number):
                return handler(instance, *a, **kw)

        with self._calling(service, tried):
            return proxy.call(attempt, *args, **kwargs)

    async def call_async(
        self,
        proxy: ServiceProxy,
        handler: Callable[Concatenate[ServiceInstance, P], Awaitable[R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """``await proxy.call_async(handler, ...)`` in a call span, each attempt in its own."""
        service = proxy.service_name
        attempts = itertools.count(1)
        tried: list[int] = [0]

        async def attempt(instance: ServiceInstance, /, *a: P.args, **kw: P.kwargs) -> R:
            number = tried[0] = next(attempts)
            with self._attempting(service, instance, number):
                return await handler(instance, *a, **kw)

        with self._calling(service, tried):
            return await proxy.call_async(attempt, *args, **kwargs)

    @contextmanager
    def _calling(self, service: str, tried: list[int]) -> Iterator[None]:
        """The call span; ends it with the attempts made (``tried[0]``) and the outcome."""
        with self._call_span(service) as span:
            try:
                yield
            except BaseException as exc:
                self._end_call(span, tried[0], exc)
                raise
            self._end_call(span, tried[0], None)

    @contextmanager
    def _attempting(self, service: str, instance: ServiceInstance, number: int) -> Iterator[None]:
        """Attempt ``number``'s span, ended with its outcome."""
        with self._attempt_span(service, instance, number) as span:
            try:
                yield
            except BaseException as exc:
                _fail(span, exc, "failure" if isinstance(exc, Exception) else "cancelled")
                raise
            span.set_attribute(_OUTCOME, "success")

    def _call_span(self, service: str) -> Any:
        return self._tracer.start_as_current_span(
            f"call {service}",
            kind=SpanKind.INTERNAL,
            attributes={_SERVICE: service},
            record_exception=False,
            set_status_on_exception=False,
        )

    def _attempt_span(self, service: str, instance: ServiceInstance, number: int) -> Any:
        attributes: dict[str, str | int] = {
            _SERVICE: service,
            "service_mesh.instance": instance.id,
            "server.address": instance.host,
            "server.port": instance.port,
            "service_mesh.attempt": number,
        }
        if number > 1:
            attributes[RESEND_COUNT] = number - 1
        return self._tracer.start_as_current_span(
            f"attempt {service}",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    @staticmethod
    def _end_call(span: Span, attempts: int, exc: BaseException | None) -> None:
        span.set_attribute("service_mesh.attempts", attempts)
        if exc is None:
            span.set_attribute(_OUTCOME, "success")
        else:
            _fail(span, exc, _outcome(exc))

    # -- events --------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Add ``event`` to the current span when it is one the tracer records."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        if isinstance(event, CallRejected):
            if event.by_breaker:
                span.add_event(
                    "service_mesh.breaker_rejected",
                    {"service_mesh.breaker": event.source, "service_mesh.reason": event.reason},
                )
            elif event.reason == "retry_budget":
                span.add_event("service_mesh.budget_refused", {_SERVICE: event.source})
            elif event.reason in _PROXY_REFUSALS:
                span.add_event(
                    "service_mesh.rejected",
                    {_SERVICE: event.source, "service_mesh.reason": event.reason},
                )
        elif isinstance(event, InstanceEjected):
            span.add_event(
                "service_mesh.instance_ejected",
                {
                    _SERVICE: event.source,
                    "service_mesh.instance": event.instance_id,
                    "service_mesh.reason": event.reason,
                    "service_mesh.ejection_seconds": event.duration,
                },
            )
        elif isinstance(event, RetryScheduled):
            span.add_event(
                "service_mesh.retry",
                {"service_mesh.attempt": event.attempt, "service_mesh.delay_seconds": event.delay},
            )
        elif isinstance(event, StateTransition):
            span.add_event(
                "service_mesh.breaker_transition",
                {
                    "service_mesh.breaker": event.source,
                    "service_mesh.from_state": event.old.value,
                    "service_mesh.to_state": event.new.value,
                },
            )
