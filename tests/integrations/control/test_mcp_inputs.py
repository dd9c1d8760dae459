"""MCP input handling (issue 15, item 23), through the SDK's own in-process client.

Booleans are booleans, strings are strings, an ejected instance is not counted
healthy, and a breaker's ``last_failure_time`` does not move between reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp")

from mcp import Client
from mcp.types import CallToolResult

from codomyrmex.service_mesh import (
    CircuitBreaker,
    LoadBalancer,
    Mesh,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.integrations.mcp import configure, create_server, status
from codomyrmex.service_mesh.outlier import OutlierDetectionConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _mesh(clock: FakeClock | None = None) -> Mesh:
    mesh = Mesh()
    balancer = LoadBalancer(
        name="orders",
        clock=clock or FakeClock(),
        outlier_detection=OutlierDetectionConfig(consecutive_failures=1, max_ejection_percent=100),
    )
    for n in (1, 2, 3):
        balancer.register(ServiceInstance(f"orders-{n}", "127.0.0.1", 9000 + n))
    mesh.register_service(ServiceProxy("orders", balancer, CircuitBreaker("orders")))
    other = LoadBalancer(name="null")
    other.register(ServiceInstance("null-1", "127.0.0.1", 9100))
    mesh.register_service(ServiceProxy("null", other, CircuitBreaker("null")))
    return mesh


def _calls(mesh: Mesh, calls: list[tuple[str, dict[str, Any]]]) -> list[CallToolResult]:
    results: list[CallToolResult] = []

    async def run() -> None:
        async with Client(create_server(mesh)) as client:
            for tool, arguments in calls:
                results.append(await client.call_tool(tool, arguments))

    anyio.run(run)
    return results


def _healthy(mesh: Mesh, instance_id: str) -> bool:
    proxy = mesh.get_service("orders")
    assert proxy is not None
    instance = proxy.load_balancer.get(instance_id)
    assert instance is not None
    return instance.healthy


@pytest.mark.parametrize("value", [1, 0, "false", "true", "no", "off", 1.0, 0.0, None, [True]])
def test_healthy_must_be_a_real_boolean(value: Any) -> None:
    mesh = _mesh()
    arguments = {
        "service_name": "orders",
        "action": "set_health",
        "instance_id": "orders-1",
        "healthy": value,
    }
    if value in (1, "true", 1.0, [True]):  # a coerced value would then change it
        mesh.get_service("orders").load_balancer.mark_healthy("orders-1", False)  # type: ignore[union-attr]
    before = _healthy(mesh, "orders-1")
    (result,) = _calls(mesh, [("load_balancer_config", arguments)])
    assert result.is_error is True
    assert "healthy" in result.content[0].text  # type: ignore[union-attr]
    assert _healthy(mesh, "orders-1") is before, "a refused value changed nothing"


def test_real_booleans_still_work_and_include_instances_is_strict() -> None:
    mesh = _mesh()
    off, on, lax, strict = _calls(
        mesh,
        [
            (
                "load_balancer_config",
                {"service_name": "orders", "action": "set_health",
                 "instance_id": "orders-2", "healthy": False},
            ),
            (
                "load_balancer_config",
                {"service_name": "orders", "action": "set_health",
                 "instance_id": "orders-3", "healthy": True},
            ),
            ("service_mesh_status", {"include_instances": "true"}),
            ("service_mesh_status", {"include_instances": 1}),
        ],
    )  # fmt: skip
    assert off.is_error is False and off.structured_content["healthy_count"] == 2  # type: ignore[index]
    assert on.is_error is False
    assert lax.is_error is True and strict.is_error is True


def test_the_plain_function_refuses_non_booleans_too() -> None:
    mesh = _mesh()
    for value in (1, "false", 1.0):
        result = configure(mesh, "orders", "set_health", instance_id="orders-1", healthy=value)  # type: ignore[arg-type]
        assert result["status"] == "error"
        assert "healthy must be a boolean" in result["message"]
    assert _healthy(mesh, "orders-1") is True


def test_strings_are_taken_as_strings_not_json() -> None:
    mesh = _mesh()
    named_null, listy, breaker_null, number = _calls(
        mesh,
        [
            ("service_mesh_status", {"service_name": "null"}),
            ("service_mesh_status", {"service_name": "[1]"}),
            ("circuit_breaker_status", {"breaker_name": "null"}),
            ("service_mesh_status", {"service_name": "5"}),
        ],
    )
    assert named_null.is_error is False
    assert [s["name"] for s in named_null.structured_content["services"]] == ["null"]  # type: ignore[index]
    assert listy.is_error is False
    assert listy.structured_content["services"] == []  # type: ignore[index]
    assert [b["name"] for b in breaker_null.structured_content["breakers"]] == ["null"]  # type: ignore[index]
    assert number.structured_content["services"] == []  # type: ignore[index]


def test_an_ejected_instance_is_listed_as_ejected_and_not_counted_healthy() -> None:
    clock = FakeClock()
    mesh = _mesh(clock)
    balancer = mesh.get_service("orders").load_balancer  # type: ignore[union-attr]
    for _ in range(6):
        try:
            with balancer.connection() as instance:
                if instance.id == "orders-2":
                    raise ConnectionError("down")
        except ConnectionError:
            break
    assert [i.id for i in balancer.ejected_instances] == ["orders-2"]
    (orders,) = status(mesh, "orders", include_instances=True)["services"]
    listed_pickable = [i["id"] for i in orders["instances"] if i["healthy"] and not i["ejected"]]
    assert orders["healthy_count"] == len(listed_pickable) == 2
    assert {i["id"]: i["ejected"] for i in orders["instances"]} == {
        "orders-1": False,
        "orders-2": True,
        "orders-3": False,
    }


def test_last_failure_time_is_recorded_once() -> None:
    clock = FakeClock()
    mesh = Mesh()
    breaker = mesh.circuit_breaker("b", clock=clock)
    breaker.record_failure()
    first = breaker.last_failure_time
    assert first is not None
    clock.now += 3600.0  # the breaker's clock moves on (or the wall clock steps)
    assert breaker.last_failure_time == first
    (result,) = _calls(mesh, [("circuit_breaker_status", {"breaker_name": "b"})])
    shown = result.structured_content["breakers"][0]["last_failure_time"]  # type: ignore[index]
    assert datetime.fromisoformat(shown) == first
    breaker.record_failure()
    later = breaker.last_failure_time
    assert later is not None and later >= first
