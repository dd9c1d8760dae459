"""The Prometheus collector, scraped over prometheus_client's real HTTP exporter.

Each test serves its own registry on 127.0.0.1 (a free port), scrapes it with
urllib and parses the text with prometheus_client's own parser. Durations come
from a fake clock, so histogram buckets and sums are exact.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import FakeClock

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from codomyrmex.service_mesh import (
    AIMDLimit,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    ConcurrencyLimiter,
    LimitExceededError,
    LoadBalancer,
    Mesh,
    NoHealthyInstanceError,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.chaos import Chaos
from codomyrmex.service_mesh.integrations.prometheus import MeshCollector, instrument_mesh
from codomyrmex.service_mesh.outlier import OutlierDetectionConfig

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Boom(Exception):
    pass


class Scraper:
    """A registry served by the real exporter on 127.0.0.1, and a parsed scrape of it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

    def text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            assert response.status == 200
            body: bytes = response.read()
        return body.decode()

    def families(self) -> dict[str, Any]:
        return {family.name: family for family in text_string_to_metric_families(self.text())}

    def samples(self) -> Samples:
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(self.text())
            for sample in family.samples
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def scraper(registry: CollectorRegistry) -> Iterator[Scraper]:
    served = Scraper(registry)
    yield served
    served.close()


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _service(
    mesh: Mesh,
    clock: FakeClock,
    name: str,
    *ids: str,
    threshold: int = 5,
    retries: int = 0,
    balancer: LoadBalancer | None = None,
) -> ServiceProxy:
    balancer = balancer if balancer is not None else LoadBalancer(name=name, clock=clock)
    for n, instance_id in enumerate(ids):
        balancer.register(ServiceInstance(instance_id, "127.0.0.1", 9000 + n))
    breaker = CircuitBreaker(
        name, CircuitBreakerConfig(failure_threshold=threshold, timeout_seconds=30.0), clock=clock
    )
    policy = RetryPolicy(max_retries=retries, initial_delay=0.5, jitter=False, sleep=clock.sleep)
    return mesh.register_service(ServiceProxy(name, balancer, breaker, policy, clock=clock))


def _taking(clock: FakeClock, seconds: float, fail: bool = False) -> Callable[[Any], str]:
    def handler(instance: ServiceInstance) -> str:
        clock.advance(seconds)
        if fail:
            raise Boom(instance.id)
        return instance.id

    return handler


def test_a_scrape_reports_calls_latency_retries_breakers_and_instances(
    clock: FakeClock, registry: CollectorRegistry, scraper: Scraper
) -> None:
    mesh = Mesh()
    orders = _service(mesh, clock, "orders", "o1", "o2", threshold=1, retries=1)
    instrument_mesh(mesh, registry)

    orders.call(_taking(clock, 0.02))  # o1: success in 20 ms
    orders.call(_taking(clock, 0.3))  # o2: success in 300 ms
    with pytest.raises(Boom):
        orders.call(_taking(clock, 2.0, fail=True))  # o1 fails, the retry on o2 fails: opens

    samples = scraper.samples()
    calls = "service_mesh_calls_total"  # calls, by how they ended
    assert value(samples, calls, service="orders", outcome="success") == 2
    assert value(samples, calls, service="orders", outcome="failure") == 1
    attempts = "service_mesh_attempts_total"  # each attempt
    assert value(samples, attempts, service="orders", outcome="success") == 2
    assert value(samples, attempts, service="orders", outcome="failure") == 2
    assert value(samples, "service_mesh_retries_total", service="orders") == 1
    assert value(samples, "service_mesh_retry_give_ups_total", service="orders") == 1
    transitions = "service_mesh_circuit_breaker_transitions_total"
    assert value(samples, transitions, breaker="orders", from_state="closed", to_state="open") == 1
    picks = "service_mesh_instance_picks_total"
    assert value(samples, picks, service="orders", instance="o1") == 2
    assert value(samples, picks, service="orders", instance="o2") == 2

    histogram = "service_mesh_call_duration_seconds"
    ok = {"service": "orders", "outcome": "success"}
    assert value(samples, f"{histogram}_bucket", **ok, le="0.025") == 1
    assert value(samples, f"{histogram}_bucket", **ok, le="0.25") == 1
    assert value(samples, f"{histogram}_bucket", **ok, le="0.5") == 2
    assert value(samples, f"{histogram}_bucket", **ok, le="+Inf") == 2
    assert value(samples, f"{histogram}_count", **ok) == 2
    assert value(samples, f"{histogram}_sum", **ok) == pytest.approx(0.32)
    failed = {"service": "orders", "outcome": "failure"}
    assert value(samples, f"{histogram}_bucket", **failed, le="1.0") == 0
    assert value(samples, f"{histogram}_bucket", **failed, le="2.5") == 2
    assert value(samples, f"{histogram}_sum", **failed) == pytest.approx(4.0)

    state = "service_mesh_circuit_breaker_state"
    assert value(samples, state, breaker="orders", state="open") == 1
    assert value(samples, state, breaker="orders", state="closed") == 0
    assert value(samples, state, breaker="orders", state="half_open") == 0
    # The breaker judged the failed call once, after its failover.
    assert value(samples, "service_mesh_circuit_breaker_failures", breaker="orders") == 1

    families = scraper.families()
    assert families["service_mesh_calls"].type == "counter"
    assert families["service_mesh_call_duration_seconds"].type == "histogram"
    assert families["service_mesh_circuit_breaker_state"].type == "gauge"
    assert families["service_mesh_instance_connections"].type == "gauge"


def test_rejections_count_as_rejected_calls_and_by_reason(
    clock: FakeClock, registry: CollectorRegistry, scraper: Scraper
) -> None:
    mesh = Mesh()
    api = _service(mesh, clock, "api", "a1", threshold=1)
    instrument_mesh(mesh, registry)

    with pytest.raises(Boom):
        api.call(_taking(clock, 0.01, fail=True))
    with pytest.raises(CircuitOpenError):
        api.call(_taking(clock, 0.01))
    api.circuit_breaker.reset()
    api.load_balancer.mark_healthy("a1", False)
    with pytest.raises(NoHealthyInstanceError):
        api.call(_taking(clock, 0.01))

    samples = scraper.samples()
    calls = "service_mesh_calls_total"
    assert value(samples, calls, service="api", outcome="failure") == 1
    assert value(samples, calls, service="api", outcome="rejected") == 2
    rejections = "service_mesh_rejections_total"
    assert value(samples, rejections, service="api", reason="circuit_open") == 1
    assert value(samples, rejections, service="api", reason="no_healthy_instance") == 1
    by_breaker = "service_mesh_circuit_breaker_rejections_total"  # its own label: breaker
    assert value(samples, by_breaker, breaker="api", reason="circuit_open") == 1
    # Give-ups count retried calls only: this call had no retry to give up.
    assert value(samples, "service_mesh_retry_give_ups_total", service="api") is None
    healthy = "service_mesh_instance_healthy"
    assert value(samples, healthy, service="api", instance="a1") == 0
    changes = "service_mesh_instance_health_changes_total"
    assert value(samples, changes, service="api", instance="a1", healthy="false") == 1


def test_in_flight_connections_are_read_at_scrape_time(
    clock: FakeClock, registry: CollectorRegistry, scraper: Scraper
) -> None:
    mesh = Mesh()
    svc = _service(mesh, clock, "svc", "s1", "s2")
    instrument_mesh(mesh, registry)
    seen_inside: list[float | None] = []

    def handler(instance: ServiceInstance) -> None:
        samples = scraper.samples()
        connections = "service_mesh_instance_connections"
        seen_inside.append(value(samples, connections, service="svc", instance=instance.id))
        seen_inside.append(value(samples, connections, service="svc", instance="s2"))

    svc.call(handler)
    assert seen_inside == [1, 0]
    after = scraper.samples()
    assert value(after, "service_mesh_instance_connections", service="svc", instance="s1") == 0


def test_concurrency_limit_and_in_flight_are_read_at_scrape_time(
    clock: FakeClock, registry: CollectorRegistry, scraper: Scraper
) -> None:
    mesh = Mesh()
    balancer = LoadBalancer(name="db")
    balancer.register(ServiceInstance("d1", "127.0.0.1", 9000))
    limiter = ConcurrencyLimiter(
        AIMDLimit(initial_limit=2, min_limit=1, backoff_ratio=0.5), name="db", clock=clock
    )
    proxy = mesh.register_service(
        ServiceProxy(
            "db", balancer, retry_policy=RetryPolicy(max_retries=0), concurrency_limit=limiter
        )
    )
    instrument_mesh(mesh, registry)
    seen: list[tuple[float | None, float | None]] = []

    def handler(instance: ServiceInstance) -> None:
        samples = scraper.samples()
        seen.append(
            (
                value(samples, "service_mesh_concurrency_limit", service="db"),
                value(samples, "service_mesh_concurrency_in_flight", service="db"),
            )
        )
        raise TimeoutError  # a drop: the limit halves

    with pytest.raises(TimeoutError):
        proxy.call(handler)
    assert seen == [(2, 1)]
    after = scraper.samples()
    assert value(after, "service_mesh_concurrency_limit", service="db") == 1
    assert value(after, "service_mesh_concurrency_in_flight", service="db") == 0
    with pytest.raises(LimitExceededError):
        proxy.call(lambda instance: proxy.call(lambda inner: None))
    rejected = value(scraper.samples(), "service_mesh_rejections_total", service="db",
                     reason="concurrency_limit")  # fmt: skip
    assert rejected == 1


def test_ejections_and_injected_faults(
    clock: FakeClock, registry: CollectorRegistry, scraper: Scraper
) -> None:
    mesh = Mesh()
    balancer = LoadBalancer(
        name="db",
        clock=clock,
        outlier_detection=OutlierDetectionConfig(
            consecutive_failures=2, base_ejection_time=60.0, max_ejection_percent=100.0
        ),
    )
    db = _service(mesh, clock, "db", "d1", "d2", balancer=balancer, threshold=10)
    chaos = Chaos("d1-down", rate=1.0, exception=Boom, applies_to=lambda i: i.id == "d1")
    mesh.watch(chaos)
    instrument_mesh(mesh, registry)

    handler = chaos.wrap(_taking(clock, 0.001))
    for _ in range(4):  # round robin: d1, d2, d1 (ejected now), d2
        try:
            db.call(handler)
        except Boom:
            pass

    samples = scraper.samples()
    assert (
        value(samples, "service_mesh_faults_injected_total", source="d1-down", kind="exception")
        == 2
    )
    ejections = [
        labels
        for (name, labels), count in samples.items()
        if name == "service_mesh_instance_ejections_total" and count == 1
    ]
    assert len(ejections) == 1
    assert dict(ejections[0])["instance"] == "d1"
    assert value(samples, "service_mesh_instance_ejected", service="db", instance="d1") == 1
    assert value(samples, "service_mesh_instance_ejected", service="db", instance="d2") == 0


def test_counts_stay_exact_under_concurrent_calls(
    registry: CollectorRegistry, scraper: Scraper
) -> None:
    mesh = Mesh()
    balancer = LoadBalancer(name="hot")
    for n in range(4):
        balancer.register(ServiceInstance(f"h{n}", "127.0.0.1", 9000 + n))
    proxy = mesh.register_service(ServiceProxy("hot", balancer, retry_policy=RetryPolicy(0)))
    instrument_mesh(mesh, registry)
    threads, per_thread = 4, 250
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            proxy.call(lambda instance: instance.id)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    samples = scraper.samples()
    total = threads * per_thread
    assert value(samples, "service_mesh_calls_total", service="hot", outcome="success") == total
    picks = sum(
        count
        for (name, _labels), count in samples.items()
        if name == "service_mesh_instance_picks_total"
    )
    assert picks == total
    assert (
        value(samples, "service_mesh_call_duration_seconds_count", service="hot", outcome="success")
        == total
    )


def test_close_stops_counting_but_gauges_still_read_the_mesh(
    clock: FakeClock, registry: CollectorRegistry, scraper: Scraper
) -> None:
    mesh = Mesh()
    svc = _service(mesh, clock, "svc", "s1")
    collector = instrument_mesh(mesh, registry)
    svc.call(_taking(clock, 0.01))
    collector.close()
    svc.call(_taking(clock, 0.01))
    assert svc.circuit_breaker._subscribers == ()  # detached: no cost left on the hot path

    samples = scraper.samples()
    assert value(samples, "service_mesh_calls_total", service="svc", outcome="success") == 1
    assert value(samples, "service_mesh_circuit_breaker_state", breaker="svc", state="closed") == 1


def test_describe_names_every_family_and_duplicates_are_refused(clock: FakeClock) -> None:
    mesh = Mesh()
    _service(mesh, clock, "svc", "s1")
    registry = CollectorRegistry()
    collector = instrument_mesh(mesh, registry)
    described = {family.name for family in collector.describe()}
    collected = {family.name for family in collector.collect()}
    assert described == collected
    assert all(not family.samples for family in collector.describe())
    assert "service_mesh_call_duration_seconds" in described

    with pytest.raises(ValueError, match="Duplicated"):
        instrument_mesh(mesh, registry)
    assert len(mesh._subscribers) == 1, "the refused collector unsubscribed itself"


def test_namespace_and_buckets_are_configurable(clock: FakeClock) -> None:
    mesh = Mesh()
    svc = _service(mesh, clock, "svc", "s1")
    collector = MeshCollector(mesh, namespace="shop", buckets=(0.1, 1.0))
    svc.call(_taking(clock, 0.5))
    families = {family.name: family for family in collector.collect()}
    assert "shop_calls" in families
    buckets = [
        (s.labels["le"], s.value)
        for s in families["shop_call_duration_seconds"].samples
        if s.name.endswith("_bucket")
    ]
    assert buckets == [("0.1", 0), ("1.0", 1), ("+Inf", 1)]
    for bad in ((), (1.0, 0.5), (-1.0, 1.0)):
        with pytest.raises(ValueError, match="buckets"):
            MeshCollector(mesh, buckets=bad)


def test_ten_calls_with_four_retries_read_ten_calls_and_fourteen_attempts(
    clock: FakeClock, registry: CollectorRegistry, scraper: Scraper
) -> None:
    mesh = Mesh()
    svc = _service(mesh, clock, "svc", "s1", "s2", retries=1)
    instrument_mesh(mesh, registry)
    flaky = {0, 3, 5, 8}  # these calls fail on their first attempt, then fail over

    for n in range(10):
        first = [True]

        def handler(instance: ServiceInstance) -> str:
            if n in flaky and first[0]:
                first[0] = False
                raise Boom(instance.id)
            return instance.id

        svc.call(handler)

    samples = scraper.samples()
    assert value(samples, "service_mesh_calls_total", service="svc", outcome="success") == 10
    assert value(samples, "service_mesh_calls_total", service="svc", outcome="failure") is None
    attempts = "service_mesh_attempts_total"
    assert value(samples, attempts, service="svc", outcome="success") == 10
    assert value(samples, attempts, service="svc", outcome="failure") == 4
    assert value(samples, "service_mesh_retries_total", service="svc") == 4
    assert value(samples, "service_mesh_retry_give_ups_total", service="svc") is None


def test_instance_series_disappear_when_the_instance_leaves(
    clock: FakeClock, registry: CollectorRegistry, scraper: Scraper
) -> None:
    mesh = Mesh()
    svc = _service(mesh, clock, "svc", "s1", "s2")
    instrument_mesh(mesh, registry)
    for _ in range(4):
        svc.call(_taking(clock, 0.01))
    picks = "service_mesh_instance_picks_total"
    before = scraper.samples()
    assert value(before, picks, service="svc", instance="s1") == 2
    assert value(before, picks, service="svc", instance="s2") == 2

    svc.load_balancer.deregister("s1")
    after = scraper.samples()
    assert value(after, picks, service="svc", instance="s1") is None
    assert value(after, "service_mesh_instance_healthy", service="svc", instance="s1") is None
    assert value(after, picks, service="svc", instance="s2") == 2
