"""The MCP server, driven by the official SDK's own client.

The main tests start the server as a real subprocess
(``python -m codomyrmex.service_mesh.integrations.mcp --demo-mesh``) and talk to
it over stdio with ``ClientSession`` + ``stdio_client``: each tool, each error
case, and the server still answering after every error. Smaller tests connect
the SDK's client in-process to a server over a mesh built here.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp")

from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult

from codomyrmex.service_mesh import (
    CircuitBreaker,
    LoadBalancer,
    LoadBalancerStrategy,
    Mesh,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.integrations.mcp import (
    add_tools,
    breakers,
    configure,
    create_server,
    demo_mesh,
    main,
    status,
)

TOOLS = ["service_mesh_status", "circuit_breaker_status", "load_balancer_config"]
SERVICE_KEYS = {"name", "strategy", "instance_count", "healthy_count"}
INSTANCE_KEYS = {
    "id",
    "host",
    "port",
    "address",
    "weight",
    "healthy",
    "ejected",
    "connections",
    "metadata",
}
BREAKER_KEYS = {"name", "state", "failure_count", "failure_threshold", "last_failure_time"}
CONFIG_KEYS = {"status", "service_name", "strategy", "instance_count", "healthy_count"}

Session = Callable[[str, dict[str, Any]], Awaitable[CallToolResult]]


def _over_stdio(tmp_path: Path, body: Callable[[ClientSession], Awaitable[None]]) -> None:
    """Run ``body`` against a real server subprocess (its stderr kept in a file)."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "codomyrmex.service_mesh.integrations.mcp", "--demo-mesh"],
    )

    async def run() -> None:
        with (tmp_path / "server-stderr.log").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    with anyio.fail_after(30):
                        await body(session)

    anyio.run(run)


async def _call(session: ClientSession, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    result = await session.call_tool(tool, arguments)
    assert isinstance(result, CallToolResult)
    return result


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error is False, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def _error(result: CallToolResult, *words: str) -> dict[str, Any]:
    assert result.is_error is True
    payload = result.structured_content
    assert isinstance(payload, dict)
    assert payload["status"] == "error"
    assert set(payload) == CONFIG_KEYS | {"message"}
    for word in words:
        assert word in payload["message"]
    return payload


# -- over stdio, against a subprocess -----------------------------------------------------


def test_the_server_lists_exactly_the_three_tools(tmp_path: Path) -> None:
    async def body(session: ClientSession) -> None:
        listed = await session.list_tools()
        tools = {tool.name: tool for tool in listed.tools}
        assert list(tools) == TOOLS
        config = tools["load_balancer_config"]
        assert config.input_schema["required"] == ["service_name", "action"]
        assert set(config.input_schema["properties"]) == {
            "service_name",
            "action",
            "strategy",
            "instance_id",
            "healthy",
        }
        assert config.input_schema["properties"]["strategy"]["enum"] == [
            s.value for s in LoadBalancerStrategy
        ]
        assert set(tools["service_mesh_status"].input_schema["properties"]) == {
            "service_name",
            "include_instances",
        }
        assert set(tools["circuit_breaker_status"].input_schema["properties"]) == {"breaker_name"}
        assert not tools["service_mesh_status"].input_schema.get("required")
        for name in TOOLS[:2]:
            annotations = tools[name].annotations
            assert annotations is not None
            assert annotations.read_only_hint and annotations.idempotent_hint
        assert config.annotations is not None and config.annotations.idempotent_hint
        assert all(tool.output_schema for tool in tools.values())

    _over_stdio(tmp_path, body)


def test_each_tool_over_stdio(tmp_path: Path) -> None:
    async def body(session: ClientSession) -> None:
        everything = _ok(await _call(session, "service_mesh_status", {}))
        assert set(everything) == {
            "services",
            "total_services",
            "total_instances",
            "healthy_instances",
        }
        assert [s["name"] for s in everything["services"]] == ["inventory", "orders", "payments"]
        assert all(set(s) == SERVICE_KEYS for s in everything["services"])
        assert (everything["total_instances"], everything["healthy_instances"]) == (7, 6)

        orders = _ok(
            await _call(
                session,
                "service_mesh_status",
                {"service_name": "orders", "include_instances": True},
            )
        )
        (service,) = orders["services"]
        assert (service["instance_count"], service["healthy_count"]) == (3, 2)
        assert [i["id"] for i in service["instances"]] == ["orders-1", "orders-2", "orders-3"]
        assert all(set(i) == INSTANCE_KEYS for i in service["instances"])
        assert service["instances"][2]["healthy"] is False
        assert service["instances"][0]["address"] == "127.0.0.1:8021"
        nothing = _ok(await _call(session, "service_mesh_status", {"service_name": "nope"}))
        assert nothing == {
            "services": [],
            "total_services": 0,
            "total_instances": 0,
            "healthy_instances": 0,
        }

        all_breakers = _ok(await _call(session, "circuit_breaker_status", {}))
        assert all_breakers["total"] == 4
        by_name = {b["name"]: b for b in all_breakers["breakers"]}
        assert all(set(b) == BREAKER_KEYS for b in by_name.values())
        assert by_name["payments"]["state"] == "open"
        assert by_name["payments"]["failure_count"] == 3
        assert datetime.fromisoformat(by_name["payments"]["last_failure_time"]).tzinfo
        assert by_name["orders"] == {
            "name": "orders",
            "state": "closed",
            "failure_count": 0,
            "failure_threshold": 3,
            "last_failure_time": None,
        }
        one = _ok(await _call(session, "circuit_breaker_status", {"breaker_name": "payments"}))
        assert [b["name"] for b in one["breakers"]] == ["payments"]
        assert _ok(await _call(session, "circuit_breaker_status", {"breaker_name": "x"})) == {
            "breakers": [],
            "total": 0,
        }

        got = _ok(
            await _call(
                session, "load_balancer_config", {"service_name": "orders", "action": "get"}
            )
        )
        assert got == {
            "status": "success",
            "service_name": "orders",
            "strategy": "round_robin",
            "instance_count": 3,
            "healthy_count": 2,
        }
        for _ in range(2):  # idempotent
            changed = _ok(
                await _call(
                    session,
                    "load_balancer_config",
                    {
                        "service_name": "orders",
                        "action": "set_strategy",
                        "strategy": "least_connections",
                    },
                )
            )
            assert changed["strategy"] == "least_connections"
        by_name_too = _ok(
            await _call(
                session,
                "load_balancer_config",
                {"service_name": "orders", "action": "set_strategy", "strategy": "POWER_OF_TWO"},
            )
        )
        assert by_name_too["strategy"] == "power_of_two"
        for _ in range(2):
            healed = _ok(
                await _call(
                    session,
                    "load_balancer_config",
                    {
                        "service_name": "orders",
                        "action": "set_health",
                        "instance_id": "orders-3",
                        "healthy": True,
                    },
                )
            )
            assert healed["healthy_count"] == 3
        after = _ok(await _call(session, "service_mesh_status", {"service_name": "orders"}))
        assert after["services"][0]["strategy"] == "power_of_two"
        assert after["healthy_instances"] == 3

    _over_stdio(tmp_path, body)


def test_error_results_and_the_server_keeps_serving(tmp_path: Path) -> None:
    bad_calls: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        ({"service_name": "nope", "action": "get"}, ("unknown service", "nope", "orders")),
        (
            {
                "service_name": "orders",
                "action": "set_health",
                "instance_id": "x9",
                "healthy": False,
            },
            ("unknown instance", "x9", "orders-1"),
        ),
        (
            {"service_name": "orders", "action": "set_strategy", "strategy": "fastest"},
            ("invalid strategy", "fastest", "round_robin"),
        ),
        ({"action": "get"}, ("missing parameter", "service_name")),
        ({"service_name": "orders"}, ("missing parameter", "action")),
        ({"service_name": "orders", "action": "set_strategy"}, ("missing parameter", "strategy")),
        (
            {"service_name": "orders", "action": "set_health", "instance_id": "orders-1"},
            ("missing parameter", "healthy"),
        ),
        ({"service_name": "orders", "action": "set_health"}, ("instance_id and healthy",)),
        ({"service_name": "orders", "action": "delete"}, ("invalid action", "delete")),
    ]

    async def body(session: ClientSession) -> None:
        for arguments, words in bad_calls:
            payload = _error(await _call(session, "load_balancer_config", arguments), *words)
            if arguments.get("service_name") == "orders":
                assert payload["service_name"] == "orders"
                assert payload["strategy"] == "round_robin", "nothing changed"
                assert payload["instance_count"] == 3
            still = _ok(await _call(session, "service_mesh_status", {}))
            assert still["total_services"] == 3

        wrong_type = await _call(
            session, "load_balancer_config", {"service_name": 5, "action": "get"}
        )
        assert wrong_type.is_error is True
        assert "service_name" in wrong_type.content[0].text  # type: ignore[union-attr]
        unknown_tool = await _call(session, "drop_all_tables", {})
        assert unknown_tool.is_error is True
        unchanged = _ok(
            await _call(
                session, "load_balancer_config", {"service_name": "orders", "action": "get"}
            )
        )
        assert (unchanged["strategy"], unchanged["healthy_count"]) == ("round_robin", 2)

    _over_stdio(tmp_path, body)


# -- in-process ---------------------------------------------------------------------------


def _mesh() -> Mesh:
    mesh = Mesh()
    balancer = LoadBalancer(name="api")
    balancer.register(
        ServiceInstance("api-1", "10.0.0.1", 80, metadata={"since": datetime(2020, 1, 1)})
    )
    mesh.register_service(ServiceProxy("api", balancer, CircuitBreaker("api")))
    mesh.circuit_breaker("forced").force_open()
    mesh.circuit_breaker("off").disable()
    return mesh


def test_a_server_over_an_apps_own_mesh_in_process() -> None:
    mesh = _mesh()

    async def run() -> None:
        async with Client(create_server(mesh)) as client:
            result = await client.call_tool("service_mesh_status", {"include_instances": True})
            (instance,) = result.structured_content["services"][0]["instances"]
            assert instance["metadata"] == {"since": "2020-01-01 00:00:00"}
            result = await client.call_tool("circuit_breaker_status", {})
            states = {b["name"]: b["state"] for b in result.structured_content["breakers"]}
            assert states == {"api": "closed", "forced": "open", "off": "closed"}

    anyio.run(run)


def test_add_tools_mounts_them_on_an_apps_own_server() -> None:
    app = MCPServer("my-app")

    @app.tool()
    def ping() -> str:
        return "pong"

    add_tools(app, _mesh())

    async def run() -> None:
        async with Client(app) as client:
            listed = await client.list_tools()
            names = [tool.name for tool in listed.tools]
            assert names == ["ping", *TOOLS]
            config = next(t for t in listed.tools if t.name == "load_balancer_config")
            assert config.input_schema["required"] == ["service_name", "action"]
            result = await client.call_tool(
                "load_balancer_config", {"service_name": "api", "action": "get"}
            )
            assert result.structured_content["instance_count"] == 1
            result = await client.call_tool("load_balancer_config", {"action": "get"})
            assert result.is_error

    anyio.run(run)


def test_the_tool_logic_is_plain_functions_over_a_mesh() -> None:
    mesh = _mesh()
    assert status(mesh)["total_services"] == 1
    assert breakers(mesh, "off")["total"] == 1
    assert configure(mesh, "api", "set_strategy", strategy="random")["strategy"] == "random"
    assert mesh.get_service("api").load_balancer.strategy is LoadBalancerStrategy.RANDOM  # type: ignore[union-attr]
    unhealthy = configure(mesh, "api", "set_health", instance_id="api-1", healthy=False)
    assert (unhealthy["status"], unhealthy["healthy_count"]) == ("success", 0)
    assert configure(mesh, "", "get")["message"] == "missing parameter: service_name"


def test_the_demo_mesh_and_the_command_line() -> None:
    mesh = demo_mesh()
    assert sorted(mesh.services()) == ["inventory", "orders", "payments"]
    assert mesh.circuit_breaker("payments").state.value == "open"
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0


def test_the_service_mesh_mcp_command_serves_the_tools(tmp_path: Path) -> None:
    """``service-mesh mcp --demo-mesh`` (the console command) speaks MCP over stdio."""
    script = Path(sys.executable).with_name("service-mesh")
    params = StdioServerParameters(command=str(script), args=["mcp", "--demo-mesh"])

    async def run() -> None:
        with (tmp_path / "cli-stderr.log").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    with anyio.fail_after(30):
                        listed = await session.list_tools()
                        assert sorted(t.name for t in listed.tools) == sorted(TOOLS)
                        payload = _ok(await _call(session, "service_mesh_status", {}))
                        assert payload["total_services"] == len(payload["services"]) > 0

    if not script.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    anyio.run(run)
