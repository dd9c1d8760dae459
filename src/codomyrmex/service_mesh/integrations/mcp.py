"""An MCP server over a mesh, built with the official ``mcp`` SDK (the ``[mcp]`` extra).

It exposes exactly the three tools of the MCP tool specification
(``service_mesh_status``, ``circuit_breaker_status``, ``load_balancer_config``)
over one :class:`Mesh`, by default the process's :func:`default_mesh`. Bad
input to ``load_balancer_config`` (an unknown service or instance, an invalid
strategy or action, a missing parameter) gives an error result
(``isError`` true, ``status: "error"`` and a ``message``), never a crash.

- ``create_server(mesh)``: a ready server; ``serve_stdio(mesh)`` runs one over stdio.
- ``add_tools(server, mesh)``: mount the tools on an app's own ``MCPServer``.
- ``python -m codomyrmex.service_mesh.integrations.mcp [--demo-mesh]``: a server
  process (``--demo-mesh`` fills the mesh with a few services and breakers).

The tool logic (``status``, ``breakers``, ``configure``) is plain functions over
a mesh returning JSON-ready dicts, usable without MCP.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from ._extras import missing_extra

try:  # pydantic and typing_extensions come with the SDK: guarded, so their absence names it too
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.tools import Tool
    from mcp.types import CallToolResult, TextContent, ToolAnnotations
    from pydantic import Field
    from typing_extensions import NotRequired, TypedDict
except ImportError as exc:
    raise missing_extra(__name__, "mcp", exc) from exc

from ..circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from ..load_balancer import LoadBalancer, LoadBalancerStrategy, ServiceInstance
from ..mesh import Mesh, balancer_status, breaker_status, default_mesh, instance_status
from ..proxy import ServiceProxy

__all__ = [
    "ACTIONS",
    "SERVER_NAME",
    "add_tools",
    "breakers",
    "configure",
    "create_server",
    "demo_mesh",
    "main",
    "serve_stdio",
    "status",
]

SERVER_NAME = "codomyrmex-service-mesh"
ACTIONS = ("get", "set_strategy", "set_health")
"""The actions of ``load_balancer_config``."""

_STRATEGIES = [strategy.value for strategy in LoadBalancerStrategy]

# The specification knows three breaker states; an operator state reads as the one it acts as.
_CONTRACT_STATE = {
    CircuitState.CLOSED.value: "closed",
    CircuitState.OPEN.value: "open",
    CircuitState.HALF_OPEN.value: "half_open",
    CircuitState.FORCED_OPEN.value: "open",
    CircuitState.DISABLED.value: "closed",
    CircuitState.METRICS_ONLY.value: "closed",
}


# -- output shapes (published as each tool's outputSchema) -------------------------


class InstanceInfo(TypedDict):
    id: str
    host: str
    port: int
    address: str
    weight: float
    healthy: bool
    connections: int
    metadata: dict[str, Any]


class ServiceInfo(TypedDict):
    name: str
    strategy: str
    instance_count: int
    healthy_count: int
    instances: NotRequired[list[InstanceInfo]]


class MeshStatus(TypedDict):
    services: list[ServiceInfo]
    total_services: int
    total_instances: int
    healthy_instances: int


class BreakerInfo(TypedDict):
    name: str
    state: Literal["closed", "open", "half_open"]
    failure_count: int
    failure_threshold: int
    last_failure_time: str | None


class BreakerStatus(TypedDict):
    breakers: list[BreakerInfo]
    total: int


class LoadBalancerConfig(TypedDict):
    status: Literal["success", "error"]
    service_name: str | None
    strategy: str | None
    instance_count: int
    healthy_count: int
    message: NotRequired[str]


# -- the tools' logic, over a mesh ------------------------------------------------------


def status(
    mesh: Mesh, service_name: str | None = None, include_instances: bool = False
) -> dict[str, Any]:
    """``service_mesh_status``: the services (all, or the one named), with their instances."""
    services = []
    for name, proxy in sorted(mesh.services().items()):
        if service_name is not None and name != service_name:
            continue
        counts = balancer_status(proxy.load_balancer, include_instances=include_instances)
        service: dict[str, Any] = {
            "name": name,
            "strategy": counts["strategy"],
            "instance_count": counts["instance_count"],
            "healthy_count": counts["healthy_count"],
        }
        if include_instances:
            service["instances"] = [_instance(i) for i in proxy.load_balancer.instances]
        services.append(service)
    return {
        "services": services,
        "total_services": len(services),
        "total_instances": sum(s["instance_count"] for s in services),
        "healthy_instances": sum(s["healthy_count"] for s in services),
    }


def breakers(mesh: Mesh, breaker_name: str | None = None) -> dict[str, Any]:
    """``circuit_breaker_status``: the breakers (all, or the one named)."""
    found = []
    for name, breaker in sorted(mesh.circuit_breakers().items()):
        if breaker_name is not None and name != breaker_name:
            continue
        full = breaker_status(breaker)
        found.append(
            {
                "name": name,
                "state": _CONTRACT_STATE[full["state"]],
                "failure_count": full["failure_count"],
                "failure_threshold": full["failure_threshold"],
                "last_failure_time": full["last_failure_time"],
            }
        )
    return {"breakers": found, "total": len(found)}


def configure(
    mesh: Mesh,
    service_name: str | None,
    action: str | None,
    strategy: str | None = None,
    instance_id: str | None = None,
    healthy: bool | None = None,
) -> dict[str, Any]:
    """``load_balancer_config``: get a service's balancer config, set its strategy or an
    instance's health. Returns ``status: "error"`` with a ``message`` for bad input."""
    proxy = mesh.get_service(service_name) if service_name else None

    def error(message: str) -> dict[str, Any]:
        return {"status": "error", **_config(service_name, proxy), "message": message}

    if not service_name:
        return error("missing parameter: service_name")
    if not action:
        return error(f"missing parameter: action (one of {', '.join(ACTIONS)})")
    if proxy is None:
        known = ", ".join(sorted(mesh.services())) or "none"
        return error(f"unknown service {service_name!r} (registered: {known})")
    balancer = proxy.load_balancer
    if action == "set_strategy":
        if not strategy:
            return error("missing parameter: strategy (required for set_strategy)")
        try:
            balancer.strategy = LoadBalancerStrategy.parse(strategy)
        except (TypeError, ValueError):
            return error(f"invalid strategy {strategy!r}: must be one of {', '.join(_STRATEGIES)}")
    elif action == "set_health":
        missing = [
            name for name, value in (("instance_id", instance_id), ("healthy", healthy))
            if value is None or value == ""
        ]  # fmt: skip
        if missing:
            return error(f"missing parameter: {' and '.join(missing)} (required for set_health)")
        assert instance_id is not None and healthy is not None
        if not balancer.mark_healthy(instance_id, healthy):
            known = ", ".join(i.id for i in balancer.instances) or "none"
            return error(
                f"unknown instance {instance_id!r} in service {service_name!r} (instances: {known})"
            )
    elif action != "get":
        return error(f"invalid action {action!r}: must be one of {', '.join(ACTIONS)}")
    return {"status": "success", **_config(service_name, proxy)}


def _config(service_name: str | None, proxy: ServiceProxy | None) -> dict[str, Any]:
    if proxy is None:
        return {
            "service_name": service_name or None,
            "strategy": None,
            "instance_count": 0,
            "healthy_count": 0,
        }
    counts = balancer_status(proxy.load_balancer)
    return {
        "service_name": proxy.service_name,
        "strategy": counts["strategy"],
        "instance_count": counts["instance_count"],
        "healthy_count": counts["healthy_count"],
    }


def _instance(instance: ServiceInstance) -> dict[str, Any]:
    full = instance_status(instance)
    full.pop("ejected")
    # Metadata is the application's: anything JSON cannot carry travels as its str().
    full["metadata"] = json.loads(json.dumps(full["metadata"], default=str))
    return full


# -- the MCP server ----------------------------------------------------------------------


def _result(payload: dict[str, Any], *, is_error: bool = False) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(payload, indent=2))],
        structured_content=payload,
        is_error=is_error,
    )


def _tools(mesh: Mesh) -> list[Tool]:
    def service_mesh_status(
        service_name: Annotated[
            str | None, Field(description="Only this service; default all services.")
        ] = None,
        include_instances: Annotated[
            bool, Field(description="Add each service's instances.")
        ] = False,
    ) -> Annotated[CallToolResult, MeshStatus]:
        """The mesh's services: strategy, instance and healthy counts, optionally the
        instances. A name that matches nothing gives an empty list."""
        return _result(status(mesh, service_name, include_instances))

    def circuit_breaker_status(
        breaker_name: Annotated[
            str | None, Field(description="Only this breaker; default all breakers.")
        ] = None,
    ) -> Annotated[CallToolResult, BreakerStatus]:
        """The circuit breakers: state, failure count and threshold, last failure time.
        An unknown name gives an empty list."""
        return _result(breakers(mesh, breaker_name))

    def load_balancer_config(
        service_name: Annotated[str | None, Field(description="The service (required).")] = None,
        action: Annotated[
            str | None,
            Field(
                description="What to do (required): get, set_strategy or set_health.",
                json_schema_extra={"enum": list(ACTIONS)},
            ),
        ] = None,
        strategy: Annotated[
            str | None,
            Field(
                description="The new strategy; required for set_strategy.",
                json_schema_extra={"enum": _STRATEGIES},
            ),
        ] = None,
        instance_id: Annotated[
            str | None, Field(description="The instance; required for set_health.")
        ] = None,
        healthy: Annotated[
            bool | None, Field(description="Its new health; required for set_health.")
        ] = None,
    ) -> Annotated[CallToolResult, LoadBalancerConfig]:
        """Read a service's load balancer config, change its strategy, or mark an
        instance healthy or unhealthy. Every action is idempotent."""
        payload = configure(mesh, service_name, action, strategy, instance_id, healthy)
        return _result(payload, is_error=payload["status"] == "error")

    read_only = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
    tools = [
        Tool.from_function(service_mesh_status, annotations=read_only),
        Tool.from_function(circuit_breaker_status, annotations=read_only),
        Tool.from_function(
            load_balancer_config,
            annotations=ToolAnnotations(
                read_only_hint=False,
                destructive_hint=False,
                idempotent_hint=True,
                open_world_hint=False,
            ),
        ),
    ]
    # Advertised as required (as specified); still optional in the signature, so that a
    # missing one gets the tool's own error result rather than a bare validation error.
    tools[2].parameters["required"] = ["service_name", "action"]
    return tools


def add_tools(server: MCPServer[Any], mesh: Mesh | None = None) -> MCPServer[Any]:
    """Mount the three tools on ``server`` (an app's own ``MCPServer``) over ``mesh``."""
    for tool in _tools(mesh if mesh is not None else default_mesh()):
        server.add_tool(
            tool.fn,
            name=tool.name,
            description=tool.description,
            annotations=tool.annotations,
        )
        registered = server._tool_manager.get_tool(tool.name)
        if registered is not None:
            registered.parameters = tool.parameters
    return server


def create_server(mesh: Mesh | None = None, *, name: str = SERVER_NAME) -> MCPServer[Any]:
    """An MCP server exposing the three tools over ``mesh`` (default: the default mesh)."""
    return MCPServer(
        name,
        instructions=(
            "Look into a running service mesh and steer it: services and instances "
            "(service_mesh_status), circuit breakers (circuit_breaker_status), and a "
            "service's load balancer strategy and instance health (load_balancer_config)."
        ),
        tools=_tools(mesh if mesh is not None else default_mesh()),
    )


def serve_stdio(mesh: Mesh | None = None) -> None:
    """Serve the tools over stdio until the client disconnects (blocks)."""
    create_server(mesh).run("stdio")


def demo_mesh() -> Mesh:
    """A small mesh for trying the tools: three services, one instance down, one breaker open."""
    mesh = Mesh()
    layout = {
        "orders": (LoadBalancerStrategy.ROUND_ROBIN, 3),
        "payments": (LoadBalancerStrategy.LEAST_CONNECTIONS, 2),
        "inventory": (LoadBalancerStrategy.WEIGHTED, 2),
    }
    for port, (service, (strategy, count)) in enumerate(sorted(layout.items()), start=1):
        balancer = LoadBalancer(strategy, name=service)
        for n in range(1, count + 1):
            balancer.register(
                ServiceInstance(
                    f"{service}-{n}",
                    "127.0.0.1",
                    8000 + 10 * port + n,
                    weight=float(n),
                    metadata={"zone": f"zone-{'ab'[n % 2]}"},
                )
            )
        config = CircuitBreakerConfig(failure_threshold=3, timeout_seconds=3600.0)
        mesh.register_service(ServiceProxy(service, balancer, CircuitBreaker(service, config)))
    mesh.get_service("orders").load_balancer.mark_healthy("orders-3", False)  # type: ignore[union-attr]
    payments = mesh.circuit_breaker("payments")
    for _ in range(payments.config.failure_threshold):
        payments.record_failure()
    mesh.circuit_breaker("search-index", CircuitBreakerConfig(failure_threshold=5)).record_failure()
    return mesh


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m codomyrmex.service_mesh.integrations.mcp [--demo-mesh]``."""
    parser = argparse.ArgumentParser(
        prog="python -m codomyrmex.service_mesh.integrations.mcp",
        description="Serve the service mesh MCP tools over stdio.",
    )
    parser.add_argument(
        "--demo-mesh",
        action="store_true",
        help="serve a small demo mesh instead of this process's (empty) default mesh",
    )
    args = parser.parse_args(argv)
    serve_stdio(demo_mesh() if args.demo_mesh else None)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
