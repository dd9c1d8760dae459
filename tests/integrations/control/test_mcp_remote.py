"""``service-mesh mcp --url``: the MCP tools over a running service's mesh.

The service is this test process: its mesh is served by a real ``StatusServer`` on
127.0.0.1. The MCP server is a real subprocess started by the SDK's stdio client;
it reads the mesh through the status endpoint and writes only with the token.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    LoadBalancer,
    Mesh,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.integrations.status_http import serve_status

TOKEN = "s3cret-token-for-tests"


def _service_mesh() -> Mesh:
    mesh = Mesh()
    balancer = LoadBalancer(name="orders")
    for n in (1, 2):
        balancer.register(ServiceInstance(f"orders-{n}", "127.0.0.1", 9000 + n))
    config = CircuitBreakerConfig(failure_threshold=2, timeout_seconds=3600.0)
    mesh.register_service(ServiceProxy("orders", balancer, CircuitBreaker("orders", config)))
    mesh.circuit_breaker("orders").record_failure()
    return mesh


def _session(
    tmp_path: Path, args: list[str], body: Callable[[ClientSession], Awaitable[None]]
) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "codomyrmex.service_mesh.integrations.mcp", *args],
    )

    async def run() -> None:
        with (tmp_path / "mcp-stderr.log").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    with anyio.fail_after(60):
                        await body(session)

    anyio.run(run)


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error is False, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def test_mcp_url_reads_a_running_service_and_is_read_only_without_a_token(
    tmp_path: Path,
) -> None:
    mesh = _service_mesh()
    with serve_status(mesh, token=TOKEN) as server:

        async def body(session: ClientSession) -> None:
            listed = _ok(
                await session.call_tool("service_mesh_status", {"include_instances": True})
            )
            (orders,) = listed["services"]
            assert [i["id"] for i in orders["instances"]] == ["orders-1", "orders-2"]
            breakers = _ok(await session.call_tool("circuit_breaker_status", {}))
            assert breakers["breakers"][0]["failure_count"] == 1
            assert breakers["breakers"][0]["last_failure_time"] is not None
            refused = await session.call_tool(
                "load_balancer_config",
                {
                    "service_name": "orders",
                    "action": "set_health",
                    "instance_id": "orders-1",
                    "healthy": False,
                },
            )
            assert refused.is_error is True
            assert "read-only" in refused.structured_content["message"]  # type: ignore[index]
            got = _ok(
                await session.call_tool(
                    "load_balancer_config", {"service_name": "orders", "action": "get"}
                )
            )
            assert got["healthy_count"] == 2
            bad = await session.call_tool("service_mesh_status", {"include_instances": 1})
            assert bad.is_error is True

        _session(tmp_path, ["--url", server.url], body)
    assert mesh.get_service("orders").load_balancer.get("orders-1").healthy is True  # type: ignore[union-attr]


def test_mcp_url_with_the_token_steers_the_service(tmp_path: Path) -> None:
    mesh = _service_mesh()
    with serve_status(mesh, token=TOKEN) as server:

        async def body(session: ClientSession) -> None:
            done = _ok(
                await session.call_tool(
                    "load_balancer_config",
                    {
                        "service_name": "orders",
                        "action": "set_health",
                        "instance_id": "orders-1",
                        "healthy": False,
                    },
                )
            )
            assert done["healthy_count"] == 1
            strategy = _ok(
                await session.call_tool(
                    "load_balancer_config",
                    {"service_name": "orders", "action": "set_strategy", "strategy": "random"},
                )
            )
            assert strategy["strategy"] == "random"
            unknown = await session.call_tool(
                "load_balancer_config",
                {
                    "service_name": "orders",
                    "action": "set_health",
                    "instance_id": "orders-9",
                    "healthy": True,
                },
            )
            assert unknown.is_error is True
            assert "orders-9" in unknown.structured_content["message"]  # type: ignore[index]

        _session(tmp_path, ["--url", server.url, "--token", TOKEN], body)
    balancer = mesh.get_service("orders").load_balancer  # type: ignore[union-attr]
    assert balancer.get("orders-1").healthy is False  # type: ignore[union-attr]
    assert balancer.strategy.value == "random"


def test_mcp_url_with_a_wrong_token_changes_nothing(tmp_path: Path) -> None:
    mesh = _service_mesh()
    with serve_status(mesh, token=TOKEN) as server:

        async def body(session: ClientSession) -> None:
            refused = await session.call_tool(
                "load_balancer_config",
                {"service_name": "orders", "action": "set_strategy", "strategy": "random"},
            )
            assert refused.is_error is True
            assert "token" in refused.structured_content["message"]  # type: ignore[index]

        _session(tmp_path, ["--url", server.url, "--token", "wrong"], body)
    assert mesh.get_service("orders").load_balancer.strategy.value == "round_robin"  # type: ignore[union-attr]


def test_mcp_url_when_nothing_answers_gives_error_results(tmp_path: Path) -> None:
    with serve_status(Mesh()) as server:
        url = server.url  # closed below: the port then refuses connections

    async def body(session: ClientSession) -> None:
        gone = await session.call_tool("service_mesh_status", {})
        assert gone.is_error is True
        assert "nothing answered" in gone.content[0].text  # type: ignore[union-attr]
        config = await session.call_tool(
            "load_balancer_config", {"service_name": "orders", "action": "get"}
        )
        assert config.is_error is True

    _session(tmp_path, ["--url", url], body)
