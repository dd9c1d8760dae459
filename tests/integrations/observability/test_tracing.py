"""OpenTelemetry tracing, read back through the SDK's in-memory span exporter.

Each test has its own TracerProvider (never the global one). Backoff waits are
injected (no sleeping); the propagation test sends real requests to a real
``http.server`` on 127.0.0.1 and reads the ``traceparent`` it received.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    LoadBalancer,
    LoadBalancerStrategy,
    Mesh,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.budget import TokenBucketRetryBudget
from codomyrmex.service_mesh.integrations.tracing import (
    TRACER_NAME,
    MeshTracer,
    inject_trace_context,
    trace_context_headers,
)
from codomyrmex.service_mesh.outlier import OutlierDetectionConfig


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def _proxy(
    mesh: Mesh,
    *,
    retries: int = 2,
    budget: TokenBucketRetryBudget | None = None,
    outlier: OutlierDetectionConfig | None = None,
    threshold: int = 5,
) -> ServiceProxy:
    balancer = LoadBalancer(
        LoadBalancerStrategy.ROUND_ROBIN, name="orders", outlier_detection=outlier
    )
    for n, host in enumerate(("127.0.0.11", "127.0.0.12", "127.0.0.13"), start=1):
        balancer.register(ServiceInstance(f"orders-{n}", host, 8000 + n))
    policy = RetryPolicy(
        max_retries=retries,
        initial_delay=0.0,
        jitter=False,
        sleep=lambda _: None,
        budget=budget,
        retry_on=lambda exc: isinstance(exc, ConnectionError),
    )
    breaker = CircuitBreaker("orders", CircuitBreakerConfig(failure_threshold=threshold))
    return mesh.register_service(ServiceProxy("orders", balancer, breaker, policy))


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


def _fails_on(*bad: str) -> Any:
    def handler(instance: ServiceInstance, path: str) -> str:
        if instance.id in bad:
            raise ConnectionError(f"{instance.id} refused {path}")
        return f"{instance.id}{path}"

    return handler


def _check_retried_call(spans: tuple[ReadableSpan, ...], result: str) -> None:
    named = _by_name(spans)
    (call,) = named["call orders"]
    attempts = sorted(named["attempt orders"], key=lambda s: s.start_time or 0)
    assert result == "orders-2/x"
    assert call.instrumentation_scope is not None
    assert call.instrumentation_scope.name == TRACER_NAME
    assert call.attributes is not None
    assert call.attributes["service_mesh.outcome"] == "success"
    assert call.attributes["service_mesh.attempts"] == 2
    assert [a.attributes["service_mesh.instance"] for a in attempts] == ["orders-1", "orders-2"]  # type: ignore[index]
    first, second = attempts
    assert first.attributes is not None and second.attributes is not None
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["service_mesh.attempt"] == 2
    assert (first.attributes["server.address"], first.attributes["server.port"]) == (
        "127.0.0.11",
        8001,
    )
    assert first.attributes["service_mesh.outcome"] == "failure"
    assert first.attributes["error.type"] == "ConnectionError"
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert second.attributes["service_mesh.outcome"] == "success"
    for attempt in attempts:
        assert attempt.parent is not None
        assert attempt.parent.span_id == call.context.span_id
        assert attempt.context.trace_id == call.context.trace_id
    retry_events = [e for e in call.events if e.name == "service_mesh.retry"]
    assert len(retry_events) == 1
    assert retry_events[0].attributes["service_mesh.attempt"] == 1  # type: ignore[index]


def test_one_span_per_call_and_one_per_attempt(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    mesh = Mesh()
    proxy = _proxy(mesh)
    tracer = MeshTracer(mesh, tracer_provider=provider)
    result = tracer.call(proxy, _fails_on("orders-1"), "/x")
    _check_retried_call(exporter.get_finished_spans(), result)
    tracer.close()


def test_async_calls_are_traced_the_same_way(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    mesh = Mesh()
    proxy = _proxy(mesh)
    tracer = MeshTracer(mesh, tracer_provider=provider)
    sync_handler = _fails_on("orders-1")

    async def handler(instance: ServiceInstance, path: str) -> str:
        await asyncio.sleep(0)
        result: str = sync_handler(instance, path)
        return result

    result = asyncio.run(tracer.call_async(proxy, handler, "/x"))
    _check_retried_call(exporter.get_finished_spans(), result)


def test_a_breaker_rejection_is_a_span_event_and_the_call_is_rejected(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    mesh = Mesh()
    proxy = _proxy(mesh)
    proxy.circuit_breaker.force_open()
    tracer = MeshTracer(mesh, tracer_provider=provider)
    with pytest.raises(CircuitOpenError):
        tracer.call(proxy, _fails_on(), "/x")
    named = _by_name(exporter.get_finished_spans())
    (call,) = named["call orders"]
    assert "attempt orders" not in named, "a rejected call never reached an instance"
    assert call.attributes is not None
    assert call.attributes["service_mesh.outcome"] == "rejected"
    assert call.attributes["error.type"] == "CircuitOpenError"
    assert call.status.status_code is StatusCode.ERROR
    (rejected,) = [e for e in call.events if e.name == "service_mesh.breaker_rejected"]
    assert rejected.attributes == {
        "service_mesh.breaker": "orders",
        "service_mesh.reason": "forced_open",
    }


def test_an_ejection_is_a_span_event(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    mesh = Mesh()
    outlier = OutlierDetectionConfig(consecutive_failures=1, max_ejection_percent=100.0)
    proxy = _proxy(mesh, outlier=outlier)
    tracer = MeshTracer(mesh, tracer_provider=provider)
    assert tracer.call(proxy, _fails_on("orders-1"), "/x") == "orders-2/x"
    (call,) = _by_name(exporter.get_finished_spans())["call orders"]
    (ejected,) = [e for e in call.events if e.name == "service_mesh.instance_ejected"]
    assert ejected.attributes is not None
    assert ejected.attributes["service_mesh.instance"] == "orders-1"
    assert ejected.attributes["service_mesh.ejection_seconds"] > 0


def test_a_budget_refusal_is_a_span_event(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    mesh = Mesh()
    budget = TokenBucketRetryBudget(max_tokens=2.0, token_ratio=0.1)
    proxy = _proxy(mesh, budget=budget)
    tracer = MeshTracer(mesh, tracer_provider=provider)
    with pytest.raises(ConnectionError):
        tracer.call(proxy, _fails_on("orders-1", "orders-2", "orders-3"), "/x")
    named = _by_name(exporter.get_finished_spans())
    (call,) = named["call orders"]
    assert len(named["attempt orders"]) == 1, "the budget stopped the retries"
    assert call.attributes is not None
    assert call.attributes["service_mesh.outcome"] == "failure"
    assert [e.name for e in call.events].count("service_mesh.budget_refused") == 1


def test_events_outside_a_span_and_after_close_are_ignored(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    mesh = Mesh()
    proxy = _proxy(mesh)
    tracer = MeshTracer(mesh, tracer_provider=provider)
    proxy.circuit_breaker.force_open()  # a transition outside any span: nowhere to go
    tracer.close()
    proxy.circuit_breaker.reset()
    assert tracer.call(proxy, _fails_on(), "/y") == "orders-1/y"
    (call,) = exporter.get_finished_spans()[-1:]
    assert call.name == "call orders"
    assert all(not e.name.startswith("service_mesh.") for e in call.events)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(self.headers.get("traceparent"))  # type: ignore[attr-defined]
        status = 503 if self.server.server_address[1] == self.server.fail_port else 200  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_w3c_trace_context_reaches_the_backend_per_attempt(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    servers = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.seen = []  # type: ignore[attr-defined]
        servers.append(server)
    for server in servers:
        server.fail_port = servers[0].server_address[1]  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mesh = Mesh()
        balancer = LoadBalancer(name="web")
        for n, server in enumerate(servers, start=1):
            balancer.register(ServiceInstance(f"web-{n}", "127.0.0.1", server.server_address[1]))
        policy = RetryPolicy(max_retries=1, initial_delay=0.0, jitter=False, sleep=lambda _: None)
        proxy = mesh.register_service(ServiceProxy("web", balancer, retry_policy=policy))
        tracer = MeshTracer(mesh, tracer_provider=provider)

        def get(instance: ServiceInstance) -> int:
            headers = inject_trace_context({})
            request = urllib.request.Request(f"http://{instance.address}/", headers=headers)
            with urllib.request.urlopen(request, timeout=30) as response:
                status: int = response.status
                return status

        assert tracer.call(proxy, get) == 200
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    named = _by_name(exporter.get_finished_spans())
    (call,) = named["call web"]
    attempts = sorted(named["attempt web"], key=lambda s: s.start_time or 0)
    received = [servers[0].seen[0], servers[1].seen[0]]  # type: ignore[attr-defined]
    for attempt, traceparent in zip(attempts, received, strict=True):
        assert traceparent is not None
        version, trace_id, parent_id, flags = traceparent.split("-")
        assert (version, trace_id) == ("00", f"{call.context.trace_id:032x}")
        assert parent_id == f"{attempt.context.span_id:016x}", "its attempt is the parent"
        assert int(flags, 16) & 1, "sampled"
    assert trace_context_headers() == {}, "outside a span there is nothing to propagate"


@pytest.mark.parametrize("client", ["httpx", "httpx-async", "requests", "aiohttp"])
def test_every_http_client_integration_sends_the_current_trace_context(
    provider: TracerProvider, client: str
) -> None:
    """Importing the tracing integration makes every client integration propagate W3C
    trace context: a real backend receives the traceparent of the span around the call."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    server.fail_port = -1  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mesh = Mesh()
        balancer = LoadBalancer(name="web")
        balancer.register(ServiceInstance("web-1", "127.0.0.1", server.server_address[1]))
        mesh.register_service(ServiceProxy("web", balancer))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("handler") as span:
            if client == "httpx":
                import httpx

                from codomyrmex.service_mesh.integrations.httpx import MeshTransport

                with httpx.Client(transport=MeshTransport(mesh)) as c:
                    assert c.get("http://web/").status_code == 200
            elif client == "httpx-async":
                import httpx

                from codomyrmex.service_mesh.integrations.httpx import AsyncMeshTransport

                async def main() -> int:
                    async with httpx.AsyncClient(transport=AsyncMeshTransport(mesh)) as c:
                        return (await c.get("http://web/")).status_code

                assert asyncio.run(main()) == 200
            elif client == "requests":
                import requests

                from codomyrmex.service_mesh.integrations.requests import MeshAdapter

                with requests.Session() as session:
                    session.mount("http://web", MeshAdapter(mesh))
                    assert session.get("http://web/", timeout=5).status_code == 200
            else:
                import aiohttp

                from codomyrmex.service_mesh.integrations.aiohttp import MeshMiddleware

                async def fetch() -> int:
                    async with aiohttp.ClientSession(middlewares=(MeshMiddleware(mesh),)) as s:
                        async with s.get("http://web/") as response:
                            return response.status

                assert asyncio.run(fetch()) == 200
            trace_id = format(span.get_span_context().trace_id, "032x")
        (received,) = server.seen  # type: ignore[attr-defined]
        assert received is not None, "no traceparent reached the backend"
        assert received.split("-")[1] == trace_id
    finally:
        server.shutdown()
        server.server_close()
