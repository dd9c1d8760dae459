"""The control module: live statistics on a fake clock, write actions, the status
endpoint's token rules, and the remote source, against a real StatusServer on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    LoadBalancer,
    Mesh,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.integrations.control import (
    MeshMonitor,
    RemoteError,
    RemoteMesh,
    apply_action,
    bearer,
    check_token,
    percentile,
    status_url,
)
from codomyrmex.service_mesh.integrations.status_http import serve_status
from conftest import FakeClock

TOKEN = "control-token"


def _mesh(clock: FakeClock) -> tuple[Mesh, ServiceProxy]:
    mesh = Mesh()
    balancer = LoadBalancer(name="api", clock=clock)
    balancer.register(ServiceInstance("api-1", "127.0.0.1", 9001))
    balancer.register(ServiceInstance("api-2", "127.0.0.1", 9002))
    once = RetryPolicy(max_retries=0)
    breaker = CircuitBreaker("api", CircuitBreakerConfig(failure_threshold=100), clock=clock)
    proxy = mesh.register_service(ServiceProxy("api", balancer, breaker, once, clock=clock))
    return mesh, proxy


def _run(proxy: ServiceProxy, clock: FakeClock, latency: float, fail: bool) -> None:
    def handler(instance: ServiceInstance) -> str:
        clock.advance(latency)
        if fail:
            raise ConnectionError("down")
        return instance.id

    try:
        proxy.call(handler)
    except (ConnectionError, CircuitOpenError):
        pass


def test_the_monitor_counts_rates_and_percentiles_over_its_window() -> None:
    clock = FakeClock()
    mesh, proxy = _mesh(clock)
    monitor = MeshMonitor(mesh, window=10.0, clock=clock, wall=lambda: 1_700_000_000.0)
    for n in range(1, 11):  # latencies 10..100 ms, the 10th fails
        _run(proxy, clock, n / 100, fail=n == 10)
    stats = monitor.stats()["services"]["api"]
    assert (stats["requests"], stats["successes"], stats["failures"]) == (10, 9, 1)
    assert stats["success_rate"] == pytest.approx(0.9)
    assert stats["latency_ms"] == {"p50": 50.0, "p90": 90.0, "p99": 100.0}
    # 0.55 s of virtual time passed since the monitor started: 10 attempts in it.
    assert stats["request_rate"] == pytest.approx(10 / 0.55)
    clock.advance(20.0)
    expired = monitor.stats()["services"]["api"]
    assert expired["requests"] == 0 and expired["success_rate"] is None
    assert expired["latency_ms"] is None

    proxy.circuit_breaker.force_open()
    _run(proxy, clock, 0.0, fail=False)
    snapshot = monitor.snapshot()
    assert snapshot["stats"]["breakers"]["api"]["rejections"] == 1
    assert snapshot["stats"]["services"]["api"]["rejected"] == 1
    (transition,) = [e for e in snapshot["timeline"] if e["kind"] == "transition"]
    assert transition == {
        "kind": "transition",
        "source": "api",
        "at": "2023-11-14T22:13:20+00:00",
        "old": "closed",
        "new": "forced_open",
    }
    proxy.load_balancer.mark_healthy("api-2", False)
    assert monitor.timeline()[-1]["kind"] == "health"
    monitor.close()
    proxy.circuit_breaker.reset()
    assert [e["kind"] for e in monitor.timeline()].count("transition") == 1, "closed: no more"


def test_the_monitor_keeps_a_bounded_timeline_and_validates_its_arguments() -> None:
    clock = FakeClock()
    mesh, proxy = _mesh(clock)
    monitor = MeshMonitor(mesh, max_timeline=3, clock=clock)
    for _ in range(5):
        proxy.circuit_breaker.force_open()
        proxy.circuit_breaker.reset()
    assert len(monitor.timeline()) == 3
    assert monitor.timeline()[-1]["new"] == "closed"
    for bad in ({"window": 0}, {"window": True}, {"max_samples": 0}, {"max_timeline": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MeshMonitor(mesh, **bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mesh"):
        MeshMonitor("mesh")  # type: ignore[arg-type]


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([1.0], 0.99) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.51) == 3.0


def test_write_actions_validate_strictly_and_change_nothing_when_refused() -> None:
    clock = FakeClock()
    mesh, proxy = _mesh(clock)
    refused: list[tuple[dict[str, Any], str]] = [
        ({"action": "drop"}, "invalid action"),
        ({"action": "force_open"}, "missing parameter: breaker"),
        ({"action": "force_open", "breaker": 5}, "breaker must be a string"),
        ({"action": "reset", "breaker": "nope"}, "unknown breaker 'nope' (registered: api)"),
        ({"action": "set_strategy", "service": "api", "strategy": "fastest"}, "invalid strategy"),
        ({"action": "set_strategy", "service": "null", "strategy": "random"}, "unknown service"),
        ({"action": "set_health", "service": "api", "instance_id": "api-1"}, "missing parameter"),
        (
            {"action": "set_health", "service": "api", "instance_id": "api-1", "healthy": 0},
            "healthy must be a boolean",
        ),
        (
            {"action": "set_health", "service": "api", "instance_id": "x", "healthy": False},
            "unknown instance 'x'",
        ),
    ]
    for action, message in refused:
        result = apply_action(mesh, action)
        assert result["status"] == "error" and message in result["message"], (action, result)
    assert apply_action(mesh, [1])["status"] == "error"  # type: ignore[arg-type]
    assert proxy.circuit_breaker.state.value == "closed"
    assert proxy.load_balancer.strategy.value == "round_robin"
    assert all(i.healthy for i in proxy.load_balancer.instances)

    assert apply_action(mesh, {"action": "force_open", "breaker": "api"})["state"] == "forced_open"
    assert apply_action(mesh, {"action": "reset", "breaker": "api"})["state"] == "closed"
    done = apply_action(mesh, {"action": "set_strategy", "service": "api", "strategy": "RANDOM"})
    assert done["strategy"] == "random"
    down = {"action": "set_health", "service": "api", "instance_id": "api-2", "healthy": False}
    assert apply_action(mesh, down)["status"] == "success"
    assert proxy.load_balancer.get("api-2").healthy is False  # type: ignore[union-attr]


def test_tokens_and_urls() -> None:
    assert check_token("abc", "abc") and not check_token("abc", "abd")
    assert not check_token(None, "abc") and not check_token("abc", None)
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer(None) is None and bearer("Bearer ") is None
    assert status_url("127.0.0.1:8742") == "http://127.0.0.1:8742/status"
    assert status_url("http://h:1/mesh") == "http://h:1/mesh"
    for bad in ("", "ftp://h/status", "http://"):
        with pytest.raises(ValueError, match="url"):
            status_url(bad)


def _post(url: str, body: bytes, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_status_server_guards_writes_with_its_token() -> None:
    clock = FakeClock()
    mesh, proxy = _mesh(clock)
    force = json.dumps({"action": "force_open", "breaker": "api"}).encode()
    with serve_status(mesh, token=TOKEN, monitor=True) as server:
        actions = server.url + "/actions"
        assert _post(actions, force, None)[0] == 401
        assert _post(actions, force, "nope")[0] == 401
        assert _post(actions, b"{not json", TOKEN)[0] == 400
        assert proxy.circuit_breaker.state.value == "closed"
        assert _post(actions, force, TOKEN)[0] == 200
        assert proxy.circuit_breaker.state.value == "forced_open"
        remote = RemoteMesh(server.url, token=TOKEN)
        snapshot = remote.snapshot()
        assert "stats" in snapshot and snapshot["timeline"][-1]["new"] == "forced_open"
        assert remote.act({"action": "reset", "breaker": "api"})["status"] == "success"
        assert RemoteMesh(server.url).act({"action": "reset", "breaker": "api"}) == {
            "status": "error",
            "message": f"read-only: no token given for writes to {server.url}",
        }
    with serve_status(mesh) as plain:
        code, payload = _post(plain.url + "/actions", force, TOKEN)
        assert code == 403 and "read-only" in payload["message"]
        assert "stats" not in RemoteMesh(plain.url).snapshot()
        gone = plain.url
    with pytest.raises(RemoteError, match="nothing answered"):
        RemoteMesh(gone).snapshot()
    assert RemoteMesh(gone, token=TOKEN).act(json.loads(force))["status"] == "error"
    with pytest.raises(ValueError, match="token"):
        serve_status(mesh, token="")
