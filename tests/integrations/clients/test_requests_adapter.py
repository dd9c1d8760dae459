"""MeshAdapter (requests) against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

requests = pytest.importorskip("requests")
urllib3_retry = pytest.importorskip("urllib3.util.retry")

import http_backends  # noqa: E402
from http_backends import DROP, Recorder, make_proxy  # noqa: E402

from codomyrmex.service_mesh import (  # noqa: E402
    CircuitBreakerConfig,
    CircuitState,
    Mesh,
    RetryPolicy,
    ServiceInstance,
)
from codomyrmex.service_mesh.integrations.protocol import Timeouts  # noqa: E402
from codomyrmex.service_mesh.integrations.requests import (  # noqa: E402
    MeshAdapter,
    UnknownServiceError,
    retry_policy_from_urllib3,
)

backends = http_backends.backends  # the fixture
Retry = urllib3_retry.Retry


@pytest.fixture
def session() -> Iterator[Any]:
    opened: list[Any] = []

    def make(services: Any, prefix: str = "http://orders", **options: Any) -> Any:
        s = requests.Session()
        s.mount(prefix, MeshAdapter(services, **options))
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def test_routes_to_each_instance_and_keeps_the_service_host(backends, session) -> None:
    a, b = backends(), backends()
    s = session(make_proxy(a.instance("a"), b.instance("b")))
    for _ in range(4):
        response = s.get("http://orders/items/1?x=2")
        assert response.status_code == 200 and response.text == "ok"
    assert (a.hits, b.hits) == (2, 2)
    assert {i["path"] for i in a.seen + b.seen} == {"/items/1?x=2"}
    assert {i["headers"]["Host"] for i in a.seen} == {"orders"}


def test_the_callers_request_is_left_as_it_is_and_its_own_host_is_kept(backends, session) -> None:
    a = backends()
    s = session(make_proxy(a.instance("a")))
    prepared = s.prepare_request(requests.Request("GET", "http://orders/x", headers={"X-A": "1"}))
    before = dict(prepared.headers)
    for _ in range(2):  # the same prepared request, sent twice
        assert s.send(prepared).status_code == 200
    assert dict(prepared.headers) == before and "Host" not in prepared.headers
    assert prepared.url == "http://orders/x"
    assert [i["headers"]["Host"] for i in a.seen] == ["orders", "orders"]
    assert {i["headers"]["X-A"] for i in a.seen} == {"1"}
    assert s.get("http://orders/y", headers={"host": "orders.example"}).status_code == 200
    sent = {k.lower(): v for k, v in a.seen[-1]["headers"].items()}
    assert sent["host"] == "orders.example"  # the caller's own Host wins
    plain = requests.PreparedRequest()  # headers of another mapping type: copied the public way
    plain.prepare(method="GET", url="http://orders/z")
    plain.headers = {"X-B": "2"}  # type: ignore[assignment]
    assert s.send(plain).status_code == 200
    assert plain.headers == {"X-B": "2"}
    assert a.seen[-1]["headers"]["Host"] == "orders" and a.seen[-1]["headers"]["X-B"] == "2"


def test_host_header_can_name_the_instance(backends, session) -> None:
    a = backends()
    s = session(make_proxy(a.instance("a")), host_header="instance")
    s.get("http://orders/")
    assert a.seen[0]["headers"]["Host"] == f"127.0.0.1:{a.port}"


def test_a_503_fails_over_at_once_and_retry_after_paces_the_same_instance(
    backends, session
) -> None:
    bad = backends(lambda i: (503, {"Retry-After": "2"}, b"busy"))
    good = backends()
    recorder = Recorder()
    s = session(make_proxy(bad.instance("bad"), good.instance("good"), recorder=recorder))
    assert s.get("http://orders/").text == "ok"
    assert (bad.hits, good.hits) == (1, 1)
    assert recorder.sleeps == []  # another instance: no wait

    answers = iter([(503, {"Retry-After": "2"}, b"busy"), (200, {}, b"done")])
    alone = backends(lambda i: next(answers))
    recorder = Recorder()
    s = session(make_proxy(alone.instance("a"), recorder=recorder))
    assert s.get("http://orders/").text == "done"
    assert recorder.sleeps == [2.0]  # the same instance again: after its Retry-After


def test_a_dropped_connection_is_retried_elsewhere(backends, session) -> None:
    dropping, good = backends(lambda i: DROP), backends()
    s = session(make_proxy(dropping.instance("drop"), good.instance("good")))
    assert s.get("http://orders/").status_code == 200
    assert (dropping.hits, good.hits) == (1, 1)


def test_giving_up_returns_the_last_failing_response(backends, session) -> None:
    counter = iter(range(100))
    backend = backends(lambda i: (500, {"X-Attempt": str(next(counter))}, b"bug"))
    s = session(make_proxy(backend.instance("a"), max_retries=2))
    response = s.get("http://orders/")
    assert response.status_code == 500 and response.text == "bug"
    assert response.headers["X-Attempt"] == "2"
    assert s.post("http://orders/", data=b"x").status_code == 500
    assert backend.hits == 4  # the POST is sent once


def test_a_generator_body_is_sent_once(backends, session) -> None:
    backend = backends(lambda i: (503, {}, b""))
    s = session(make_proxy(backend.instance("a"), max_retries=3))
    assert s.put("http://orders/", data=(c for c in [b"a", b"b"])).status_code == 503
    assert backend.hits == 1
    assert s.put("http://orders/", data=b"replayable").status_code == 503
    assert backend.hits == 1 + 4
    assert backend.seen[-1]["body"] == b"replayable"


def test_the_client_timeout_is_the_attempt_timeout(backends, session) -> None:
    hung = backends()
    hung.behave = lambda i: (hung.release.wait(10), (200, {}, b"late"))[1]
    fast = backends()
    s = session(make_proxy(hung.instance("hung"), fast.instance("fast")))
    for _ in range(2):
        assert s.get("http://orders/", timeout=0.2).text == "ok"
    assert hung.hits == 2 and fast.hits == 2  # each call: the hung one for 0.2 s, then on


def test_the_deadline_stops_further_attempts(backends, session, clock) -> None:
    backend = backends(lambda i: (503, {}, b"down"))
    proxy = make_proxy(backend.instance("a"), max_retries=5)
    adapter_core_clock = clock
    s = requests.Session()
    adapter = MeshAdapter(proxy, timeouts=Timeouts(attempt=1.0, deadline=2.5))
    adapter._core.clock = adapter_core_clock
    s.mount("http://orders", adapter)

    def behave(info: dict[str, Any]) -> Any:
        clock.advance(1.0)  # each attempt takes a (fake) second
        return (503, {}, b"down")

    backend.behave = behave
    assert s.get("http://orders/").status_code == 503
    assert backend.hits == 3  # at 0, 1 and 2 s; none at 3 s, past the 2.5 s deadline


def test_unknown_service_raises_unless_passthrough(backends, session) -> None:
    a = backends()
    s = session(make_proxy(a.instance("a")), prefix="http://")
    with pytest.raises(UnknownServiceError, match="nowhere"):
        s.get("http://nowhere/")
    p = session(make_proxy(a.instance("a")), prefix="http://", passthrough=True)
    assert p.get(f"http://127.0.0.1:{a.port}/direct").status_code == 200
    assert a.seen[-1]["path"] == "/direct"


def test_urllib3_retry_maps_onto_the_policy(backends, session) -> None:
    retry = Retry(
        total=2,
        status_forcelist=[418],
        allowed_methods={"POST"},
        backoff_factor=0.25,
        backoff_max=3.0,
        respect_retry_after_header=False,
    )
    policy = retry_policy_from_urllib3(retry)
    assert (policy.max_retries, policy.initial_delay, policy.max_delay) == (2, 0.25, 3.0)
    assert policy.exponential_base == 2.0 and policy.jitter_mode == "none"
    assert retry_policy_from_urllib3(Retry(total=None, connect=1, read=4)).max_retries == 4
    assert retry_policy_from_urllib3(Retry(total=False)).max_retries == 0

    teapot = backends(lambda i: (418, {"Retry-After": "9"}, b"short and stout"))
    recorder = Recorder()
    proxy = make_proxy(teapot.instance("t"), recorder=recorder)
    s = session(proxy, max_retries=retry)
    assert s.post("http://orders/", data=b"tea").status_code == 418
    assert teapot.hits == 3  # POST allowed, 418 forced, total=2
    assert len(recorder.sleeps) == 2 and all(d <= 0.5 for d in recorder.sleeps)  # no Retry-After
    assert s.get("http://orders/").status_code == 418
    assert teapot.hits == 4  # GET is not in allowed_methods
    assert proxy.retry_policy.max_retries == 2  # the registered proxy is left as it was


def test_per_instance_breakers_eject_through_the_balancer(backends, session) -> None:
    bad, good = backends(lambda i: (503, {}, b"")), backends()
    mesh = Mesh()
    proxy = mesh.register_service(make_proxy(bad.instance("bad"), good.instance("good")))
    s = session(mesh, instance_breaker=CircuitBreakerConfig(failure_threshold=1))
    for _ in range(5):
        assert s.get("http://orders/").status_code == 200
    assert mesh.get_circuit_breaker("orders/bad").state is CircuitState.OPEN
    assert proxy.load_balancer.is_ejected("bad")
    assert proxy.load_balancer.get("bad").healthy is True
    assert bad.hits == 1


def test_bad_arguments_name_the_argument() -> None:
    proxy = make_proxy(ServiceInstance("a", "127.0.0.1", 9))
    with pytest.raises(TypeError, match="services"):
        MeshAdapter(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_retries"):
        MeshAdapter(proxy, max_retries="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failure_statuses"):
        MeshAdapter(proxy, failure_statuses=[700])
    with pytest.raises(ValueError, match="host_header"):
        MeshAdapter(proxy, host_header="both")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="instance_breaker"):
        MeshAdapter(proxy, instance_breaker={"failure_threshold": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeouts"):
        MeshAdapter(proxy, timeouts=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"timeouts\.attempt"):
        Timeouts(attempt=0)
    with pytest.raises(TypeError, match="max_retries"):
        retry_policy_from_urllib3(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="passthrough"):
        MeshAdapter(proxy, passthrough="yes")  # type: ignore[arg-type]
    assert isinstance(RetryPolicy(), RetryPolicy)
