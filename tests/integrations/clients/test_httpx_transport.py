"""MeshTransport / AsyncMeshTransport against real HTTP servers on 127.0.0.1.

Every behaviour runs through the sync and the async transport (the ``is_async``
parameter). Retry waits go through an injected sleep that records the delay and
returns at once, so no test waits for a backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")

import http_backends  # noqa: E402
from http_backends import DROP, Answer, Backend, Recorder, make_proxy  # noqa: E402, F401

from codomyrmex.service_mesh import (  # noqa: E402
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    LoadBalancer,
    Mesh,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.integrations.httpx import (  # noqa: E402
    AsyncMeshTransport,
    InstanceCircuitOpen,
    MeshTransport,
    UnknownServiceError,
    parse_retry_after,
)

backends = http_backends.backends  # the fixture


class CountingTransport(httpx.HTTPTransport):
    """The default inner transport, recording the port of every attempt and whether closed."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[int] = []
        self.closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.ports.append(request.url.port or 80)
        return super().handle_request(request)

    def close(self) -> None:
        self.closed = True
        super().close()


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.ports: list[int] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.ports.append(request.url.port or 80)
        return await super().handle_async_request(request)

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


class Driver:
    """One client over a mesh transport, sync or async, with a blocking ``request``."""

    def __init__(self, is_async: bool, services: Any, **options: Any) -> None:
        self.is_async = is_async
        if is_async:
            self.inner: Any = AsyncCountingTransport()
            self.transport: Any = AsyncMeshTransport(services, transport=self.inner, **options)
            self.runner = asyncio.Runner()
            self.client: Any = httpx.AsyncClient(transport=self.transport)
        else:
            self.inner = CountingTransport()
            self.transport = MeshTransport(services, transport=self.inner, **options)
            self.client = httpx.Client(transport=self.transport)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.is_async:
            return self.runner.run(self.client.request(method, url, **kwargs))  # type: ignore[no-any-return]
        return self.client.request(method, url, **kwargs)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.inner.closed:
            return
        if self.is_async:
            self.runner.run(self.client.aclose())
            self.runner.close()
        else:
            self.client.close()


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def is_async(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def drive(is_async: bool) -> Iterator[Callable[..., Driver]]:
    drivers: list[Driver] = []

    def open_driver(services: Any, **options: Any) -> Driver:
        driver = Driver(is_async, services, **options)
        drivers.append(driver)
        return driver

    yield open_driver
    for driver in drivers:
        driver.close()
        assert driver.inner.closed


# -- routing ---------------------------------------------------------------------


def test_routes_to_picked_instances_and_keeps_the_service_host(backends, drive) -> None:
    a, b = backends(), backends()
    proxy = make_proxy(a.instance("a"), b.instance("b"))
    seen_connections: list[int] = []

    def count(info: dict[str, Any]) -> Answer:
        seen_connections.append(sum(i.connections for i in proxy.load_balancer.instances))
        return (200, {}, info["path"].encode())

    a.behave = b.behave = count
    driver = drive(proxy)
    bodies = [driver.request("GET", f"http://orders/items/{n}?q=1").text for n in range(4)]
    assert bodies == [f"/items/{n}?q=1" for n in range(4)]
    assert (a.hits, b.hits) == (2, 2)  # round robin
    assert {info["headers"]["Host"] for info in a.seen + b.seen} == {"orders"}
    assert seen_connections == [1, 1, 1, 1]  # the connection is counted while the call runs
    assert all(i.connections == 0 for i in proxy.load_balancer.instances)


def test_host_header_can_name_the_instance(backends, drive) -> None:
    a = backends()
    driver = drive(make_proxy(a.instance("a")), host_header="instance")
    driver.request("GET", "http://orders/")
    assert a.seen[0]["headers"]["Host"] == f"127.0.0.1:{a.port}"


def test_routes_by_mesh_and_by_mapping(backends, drive) -> None:
    a, b = backends(lambda i: (200, {}, b"A")), backends(lambda i: (200, {}, b"B"))
    mesh = Mesh()
    mesh.register_service(make_proxy(a.instance("a"), name="alpha"))
    driver = drive(mesh)
    assert driver.request("GET", "http://alpha/").text == "A"
    mesh.register_service(make_proxy(b.instance("b"), name="Beta"))  # looked up per request
    assert driver.request("GET", "http://beta/").text == "B"

    mapped = drive({"alpha": make_proxy(a.instance("a"), name="x")})
    assert mapped.request("GET", "http://ALPHA/").text == "A"


def test_unknown_host_raises_unless_passthrough(backends, drive) -> None:
    a = backends()
    driver = drive(make_proxy(a.instance("a")))
    with pytest.raises(UnknownServiceError, match="no mesh service named 'payments'") as info:
        driver.request("GET", "http://payments/")
    assert isinstance(info.value, httpx.TransportError)
    assert a.hits == 0

    open_driver = drive(make_proxy(a.instance("a")), passthrough=True)
    assert open_driver.request("GET", f"http://127.0.0.1:{a.port}/direct").status_code == 200
    assert a.seen[-1]["path"] == "/direct"


# -- failures and retries --------------------------------------------------------


def test_dropped_connection_is_retried_on_another_instance(backends, drive) -> None:
    dropping, healthy = backends(lambda i: DROP), backends()
    proxy = make_proxy(dropping.instance("drop"), healthy.instance("ok"))
    driver = drive(proxy)
    response = driver.request("GET", "http://orders/x")
    assert response.status_code == 200
    assert (dropping.hits, healthy.hits) == (1, 1)
    assert proxy.circuit_breaker.failure_count == 0  # the success cleared the failure


def test_every_attempt_dropped_raises_the_transport_error(backends, drive) -> None:
    dropping = backends(lambda i: DROP)
    proxy = make_proxy(dropping.instance("drop"), max_retries=2)
    driver = drive(proxy)
    with pytest.raises(httpx.TransportError):
        driver.request("GET", "http://orders/x")
    assert dropping.hits == 3
    assert proxy.circuit_breaker.failure_count == 1  # the breaker judges the call, not attempts


def test_503_retry_after_seconds_is_honoured(backends, drive) -> None:
    answers = iter([(503, {"Retry-After": "2"}, b"busy"), (200, {}, b"done")])
    backend = backends(lambda i: next(answers))
    recorder = Recorder()
    driver = drive(make_proxy(backend.instance("a"), recorder=recorder, max_delay=10.0))
    response = driver.request("GET", "http://orders/")
    assert (response.status_code, response.text) == (200, "done")
    assert recorder.sleeps == [2.0]


def test_retry_after_http_date_is_capped_by_max_delay(backends, drive) -> None:
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    answers = iter([(503, {"Retry-After": later}, b""), (200, {}, b"done")])
    backend = backends(lambda i: next(answers))
    recorder = Recorder()
    driver = drive(make_proxy(backend.instance("a"), recorder=recorder, max_delay=1.5))
    assert driver.request("GET", "http://orders/").status_code == 200
    assert recorder.sleeps == [1.5]


def test_giving_up_on_a_failure_status_returns_the_last_response(backends, drive) -> None:
    counter = iter(range(100))
    backend = backends(lambda i: (503, {"X-Attempt": str(next(counter))}, b"unavailable"))
    proxy = make_proxy(backend.instance("a"), max_retries=2)
    driver = drive(proxy)
    response = driver.request("GET", "http://orders/")
    assert response.status_code == 503
    assert response.text == "unavailable"
    assert response.headers["X-Attempt"] == "2"  # the last of three attempts
    assert response.request.url == "http://orders/"
    assert proxy.circuit_breaker.failure_count == 1  # one failed call, after three attempts


def test_a_status_outside_the_failure_set_is_returned_at_once(backends, drive) -> None:
    backend = backends(lambda i: (501, {}, b"not implemented"))
    proxy = make_proxy(backend.instance("a"))
    driver = drive(proxy)
    assert driver.request("GET", "http://orders/").status_code == 501
    assert backend.hits == 1
    assert proxy.circuit_breaker.failure_count == 0

    strict = drive(make_proxy(backend.instance("a")), failure_statuses={501})
    assert strict.request("GET", "http://orders/").status_code == 501
    assert backend.hits == 1 + 3


def test_a_500_is_a_failure_by_default_retried_only_for_idempotent_methods(backends, drive) -> None:
    backend = backends(lambda i: (500, {}, b"bug"))
    driver = drive(make_proxy(backend.instance("a")))
    assert driver.request("GET", "http://orders/").status_code == 500
    assert backend.hits == 3  # one attempt and two retries
    assert driver.request("POST", "http://orders/", content=b"x").status_code == 500
    assert backend.hits == 4  # a POST is sent once


def test_open_service_breaker_after_a_503_still_returns_the_response(backends, drive) -> None:
    backend = backends(lambda i: (503, {}, b"down"))
    proxy = make_proxy(
        backend.instance("a"),
        breaker=CircuitBreakerConfig(failure_threshold=1, timeout_seconds=60),
        max_retries=3,
    )
    driver = drive(proxy)
    response = driver.request("GET", "http://orders/")
    assert response.status_code == 503  # the real answer, not the breaker's refusal
    assert backend.hits == 4  # the breaker judges the whole call: every attempt ran
    assert proxy.circuit_breaker.state is CircuitState.OPEN  # the call failed: it opened
    with pytest.raises(CircuitOpenError):
        driver.request("GET", "http://orders/")  # no answer at all this time
    assert backend.hits == 4


def test_non_idempotent_methods_get_one_attempt(backends, drive) -> None:
    backend = backends(lambda i: (503, {}, b"no"))
    proxy = make_proxy(backend.instance("a"), max_retries=3)
    driver = drive(proxy)
    response = driver.request("POST", "http://orders/", content=b"payload")
    assert response.status_code == 503
    assert backend.hits == 1
    assert backend.seen[0]["body"] == b"payload"
    assert proxy.circuit_breaker.failure_count == 1  # still behind the breaker

    retrying = drive(make_proxy(backend.instance("a"), max_retries=3), retry_methods={"POST"})
    retrying.request("POST", "http://orders/", content=b"payload")
    assert backend.hits == 1 + 4
    assert {info["body"] for info in backend.seen} == {b"payload"}


def test_a_streaming_body_is_never_retried(backends, drive, is_async) -> None:
    backend = backends(lambda i: (503, {}, b""))
    driver = drive(make_proxy(backend.instance("a"), max_retries=3))

    if is_async:

        async def chunks() -> Any:
            yield b"par"
            yield b"ts"

        body: Any = chunks()
    else:
        body = iter([b"par", b"ts"])
    assert driver.request("PUT", "http://orders/", content=body).status_code == 503
    assert backend.hits == 1
    assert backend.seen[0]["body"] == b"parts"

    assert driver.request("PUT", "http://orders/", content=b"whole").status_code == 503
    assert backend.hits == 1 + 4  # a body in memory can be sent again


def test_attempt_timeout_moves_on_from_a_hung_instance(backends, drive) -> None:
    hung = backends()
    hung.behave = lambda i: (hung.release.wait(10), (200, {}, b"late"))[1]
    fast = backends(lambda i: (200, {}, b"fast"))
    proxy = make_proxy(hung.instance("hung"), fast.instance("fast"), attempt_timeout=0.2)
    driver = drive(proxy)
    response = driver.request("GET", "http://orders/")
    assert response.text == "fast"  # not "late": the attempt moved on before the hung one answered
    assert (hung.hits, fast.hits) == (1, 1)


def test_max_elapsed_bounds_the_whole_call(backends, drive) -> None:
    hung = backends()
    hung.behave = lambda i: (hung.release.wait(10), (200, {}, b"late"))[1]
    proxy = make_proxy(hung.instance("hung"), max_retries=50, max_elapsed=0.5, initial_delay=0)
    driver = drive(proxy)
    with pytest.raises((httpx.TimeoutException, TimeoutError)):
        driver.request("GET", "http://orders/")
    assert 1 <= hung.hits < 50  # attempts stop with the deadline, not with max_retries


# -- a server killed mid-test, per-instance breakers -----------------------------


def test_killed_instance_is_ejected_and_never_tried_while_its_breaker_is_open(
    backends, drive
) -> None:
    doomed, survivor = backends(), backends()
    mesh = Mesh()
    proxy = make_proxy(
        doomed.instance("doomed"),
        survivor.instance("survivor"),
        breaker=CircuitBreakerConfig(
            failure_threshold=50, ignore_exceptions=(InstanceCircuitOpen,)
        ),
        max_retries=3,
    )
    mesh.register_service(proxy)
    driver = drive(
        mesh,
        instance_breaker=CircuitBreakerConfig(failure_threshold=2, timeout_seconds=60),
    )
    for _ in range(4):
        assert driver.request("GET", "http://orders/").status_code == 200
    assert doomed.hits == 2

    doomed.kill()
    for _ in range(20):
        assert driver.request("GET", "http://orders/").status_code == 200
    breaker = mesh.get_circuit_breaker("orders/doomed")
    assert breaker is not None and breaker.state is CircuitState.OPEN
    assert proxy.load_balancer.is_ejected("doomed")  # ejected, not marked unhealthy
    assert proxy.load_balancer.get("doomed").healthy is True
    assert driver.inner.ports.count(doomed.port) == 2 + 2  # two refused, then never again
    assert mesh.get_circuit_breaker("orders/survivor").state is CircuitState.CLOSED
    names = {b["name"] for b in mesh.status()["breakers"]}
    assert {"orders", "orders/doomed", "orders/survivor"} <= names


def test_ejected_instance_returns_when_its_breaker_half_opens(backends, drive, clock) -> None:
    flaky, steady = backends(), backends()
    failing = [True]
    flaky.behave = lambda i: (503, {}, b"") if failing[0] else (200, {}, b"back")
    mesh = Mesh()
    proxy = mesh.register_service(
        make_proxy(flaky.instance("flaky"), steady.instance("steady"), max_retries=2)
    )
    config = CircuitBreakerConfig(failure_threshold=1, timeout_seconds=5, success_threshold=1)
    # The transport uses the breaker already registered under the instance's name.
    breaker = mesh.circuit_breaker("orders/flaky", config, clock=clock)
    driver = drive(mesh, instance_breaker=config)
    assert driver.request("GET", "http://orders/").status_code == 200
    assert breaker.state is CircuitState.OPEN
    assert proxy.load_balancer.is_ejected("flaky")
    for _ in range(3):
        assert driver.request("GET", "http://orders/").status_code == 200
    assert flaky.hits == 1  # ejected: not even picked

    clock.advance(6)
    failing[0] = False
    bodies = [driver.request("GET", "http://orders/").text for _ in range(4)]
    assert "back" in bodies
    assert breaker.state is CircuitState.CLOSED
    assert not proxy.load_balancer.is_ejected("flaky")


def test_hung_instance_timeouts_open_its_breaker(backends, drive) -> None:
    hung = backends()
    hung.behave = lambda i: (hung.release.wait(10), (200, {}, b"late"))[1]
    fast = backends()
    mesh = Mesh()
    mesh.register_service(
        make_proxy(hung.instance("hung"), fast.instance("fast"), attempt_timeout=0.15)
    )
    driver = drive(mesh, instance_breaker=CircuitBreakerConfig(failure_threshold=2))
    for _ in range(4):
        assert driver.request("GET", "http://orders/").status_code == 200
    assert mesh.get_circuit_breaker("orders/hung").state is CircuitState.OPEN
    assert hung.hits == 2


def test_single_attempt_refused_by_the_instance_breaker(backends, drive) -> None:
    backend = backends(lambda i: (503, {}, b""))
    proxy = make_proxy(backend.instance("a"))
    driver = drive(proxy, instance_breaker=CircuitBreakerConfig(failure_threshold=1))
    assert driver.request("POST", "http://orders/").status_code == 503
    assert not proxy.load_balancer.is_ejected("a")  # the last available instance stays in
    with pytest.raises(CircuitOpenError, match="orders/a"):
        driver.request("POST", "http://orders/")
    assert backend.hits == 1


def test_closing_the_transport_puts_ejected_instances_back(backends, drive) -> None:
    bad, good = backends(lambda i: (503, {}, b"")), backends()
    proxy = make_proxy(bad.instance("bad"), good.instance("good"))
    driver = drive(proxy, instance_breaker=CircuitBreakerConfig(failure_threshold=1))
    assert driver.request("GET", "http://orders/").status_code == 200
    assert proxy.load_balancer.is_ejected("bad")
    driver.close()
    assert not proxy.load_balancer.is_ejected("bad")


def test_an_operators_unhealthy_mark_survives_the_instance_breaker_closing(
    backends, drive, clock
) -> None:
    """Issue 15 item 17: the breakers eject; they never overwrite the operator's health flag."""
    flaky, steady = backends(), backends()
    failing = [True]
    flaky.behave = lambda i: (503, {}, b"") if failing[0] else (200, {}, b"back")
    mesh = Mesh()
    proxy = mesh.register_service(make_proxy(flaky.instance("flaky"), steady.instance("steady")))
    config = CircuitBreakerConfig(failure_threshold=1, timeout_seconds=5, success_threshold=1)
    breaker = mesh.circuit_breaker("orders/flaky", config, clock=clock)
    driver = drive(mesh, instance_breaker=config)
    assert driver.request("GET", "http://orders/").status_code == 200
    assert breaker.state is CircuitState.OPEN and proxy.load_balancer.is_ejected("flaky")
    proxy.load_balancer.mark_healthy("flaky", False)  # the operator drains it meanwhile
    clock.advance(6)
    failing[0] = False
    for _ in range(4):
        assert driver.request("GET", "http://orders/").status_code == 200
    assert not proxy.load_balancer.is_ejected("flaky")  # the breaker let it back ...
    assert proxy.load_balancer.get("flaky").healthy is False  # ... the operator's word stands
    assert flaky.hits == 1


# -- plumbing --------------------------------------------------------------------


def test_transports_close_their_inner_transport(is_async) -> None:
    proxy = make_proxy(ServiceInstance("a", "127.0.0.1", 9))
    if is_async:
        inner_a = AsyncCountingTransport()
        asyncio.run(AsyncMeshTransport(proxy, transport=inner_a).aclose())
        assert inner_a.closed
    else:
        inner = CountingTransport()
        with MeshTransport(proxy, transport=inner):
            pass
        assert inner.closed


def test_bad_arguments_fail_at_construction() -> None:
    proxy = make_proxy(ServiceInstance("a", "127.0.0.1", 9))
    with pytest.raises(TypeError, match="services"):
        MeshTransport(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failure_statuses"):
        MeshTransport(proxy, failure_statuses={999})
    with pytest.raises(ValueError, match="host_header"):
        MeshTransport(proxy, host_header="both")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="transport"):
        MeshTransport(proxy, transport=httpx.AsyncHTTPTransport())  # type: ignore[arg-type]


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    at = lambda: now.timestamp()  # noqa: E731
    assert parse_retry_after("3", at) == 3.0
    assert parse_retry_after(" 0.5 ", at) == 0.5
    assert parse_retry_after("-4", at) == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), at) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), at) == 0
    assert parse_retry_after("soon", at) is None
    assert parse_retry_after("inf", at) is None
    assert parse_retry_after(None, at) is None


def test_an_instance_whose_breaker_is_open_is_passed_over_at_once() -> None:
    """Nothing was sent to an instance refused by its own breaker: no backoff before the next,
    even once every instance has been tried (a real failure then backs off)."""
    lb = LoadBalancer()
    lb.register(ServiceInstance("a", "127.0.0.1", 8001))
    lb.register(ServiceInstance("b", "127.0.0.2", 8002))
    slept: list[float] = []
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:  # in memory: nothing is sent
        sent.append(request.url.host)
        return httpx.Response(503 if request.url.host == "127.0.0.1" else 200)

    proxy = ServiceProxy(
        "orders",
        lb,
        CircuitBreaker("orders", CircuitBreakerConfig(ignore_exceptions=(InstanceCircuitOpen,))),
        RetryPolicy(max_retries=3, initial_delay=1.0, jitter=False, sleep=slept.append),
    )
    mesh = Mesh()
    mesh.register_service(proxy)
    transport = MeshTransport(
        mesh,
        transport=httpx.MockTransport(handler),
        instance_breaker=CircuitBreakerConfig(failure_threshold=1, timeout_seconds=60.0),
    )
    with httpx.Client(transport=transport) as client:
        assert client.get("http://orders/").status_code == 200  # a: 503, opens a's breaker
        assert slept == []  # b was not tried yet: the failover did not wait
        assert sent == ["127.0.0.1", "127.0.0.2"]
        lb.mark_healthy("a", True)  # back in the pool (say, by a health check), breaker open
        for _ in range(2):
            slept.clear()
            assert client.get("http://orders/").status_code == 200
            assert slept == []
        assert sent.count("127.0.0.1") == 1  # a was refused by its breaker: nothing sent

        b_breaker = mesh.get_circuit_breaker("orders/b")
        assert b_breaker is not None
        b_breaker.force_open()
        lb.mark_healthy("b", True)  # both in the pool, both refused by their own breakers
        slept.clear()
        before = len(sent)
        with pytest.raises(CircuitOpenError) as caught:
            client.get("http://orders/")
        assert caught.value.name in {"orders/a", "orders/b"}
        assert len(sent) == before  # four refusals, nothing sent
        assert slept == []  # a refusal never backs off, even after every instance was tried
