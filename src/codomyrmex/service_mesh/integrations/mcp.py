"""An MCP server over a mesh, built with the official ``mcp`` SDK (the ``[mcp]`` extra).

It exposes exactly the three tools of the MCP tool specification
(``service_mesh_status``, ``circuit_breaker_status``, ``load_balancer_config``)
over one :class:`Mesh`, by default the process's :func:`default_mesh`. Bad
input to ``load_balancer_config`` (an unknown service or instance, an invalid
strategy or action, a missing parameter) gives an error result
(``isError`` true, ``status: "error"`` and a ``message``), never a crash.

- ``create_server(mesh)``: a ready server; ``serve_stdio(mesh)`` runs one over stdio.
- ``add_tools(server, mesh)``: mount the tools on an app's own ``MCPServer``.
- ``python -m codomyrmex.service_mesh.integrations.mcp [--demo-mesh | --url URL]``: a
  server process (``--demo-mesh`` fills the mesh with a few services and breakers;
  ``--url`` serves a running service's mesh through its status endpoint, read-only
  unless ``--token`` gives the service's write token).

Every argument is taken strictly: a string is a string (``"null"`` is a name, not
JSON), a boolean is ``true`` or ``false`` (not 1, 0, ``"false"`` or 1.0); anything
else is an error result.

The tool logic (``status``, ``breakers``, ``configure``) is plain functions over
a mesh returning JSON-ready dicts, usable without MCP.
"""

from __future__ import annotations

__all__ = [
    "ACTIONS",
    "SERVER_NAME",
    "RemoteMesh",
    "Target",
    "add_arguments",
    "add_tools",
    "breakers",
    "configure",
    "create_server",
    "demo_mesh",
    "main",
    "serve_stdio",
    "status",
    "target_from",
]

import argparse
import json
import os
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from ..circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from ..load_balancer import LoadBalancer, LoadBalancerStrategy, ServiceInstance
from ..mesh import Mesh, default_mesh
from ..proxy import ServiceProxy
from ._extras import missing_extra
from .control import LocalMesh, MeshSource, RemoteError, RemoteMesh

try:  # pydantic and typing_extensions come with the SDK: guarded, so their absence names it too
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.tools import Tool
    from mcp.types import CallToolResult, TextContent, ToolAnnotations
    from pydantic import Field
    from typing_extensions import NotRequired, TypedDict
except ImportError as exc:
    raise missing_extra(__name__, "mcp", exc) from exc

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
    ejected: bool
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

Target = Mesh | MeshSource
"""What the tools read and steer: a mesh of this process, or a source such as
:class:`~.control.RemoteMesh` (another process's status endpoint)."""


def _source(target: Target) -> MeshSource:
    return LocalMesh(target) if isinstance(target, Mesh) else target


def _check_text(field: str, value: object) -> str | None:
    """An error message unless ``value`` is None or a string (never parsed: "null" is a name)."""
    if value is None or isinstance(value, str):
        return None
    return f"{field} must be a string, got {value!r}"


def status(
    mesh: Target, service_name: str | None = None, include_instances: bool = False
) -> dict[str, Any]:
    """``service_mesh_status``: the services (all, or the one named), with their instances.

    ``healthy_count`` counts the instances a pick can choose (healthy and not
    ejected); each listed instance says ``healthy`` and ``ejected``.
    """
    for message in (
        _check_text("service_name", service_name),
        None if isinstance(include_instances, bool) else (
            f"include_instances must be a boolean (true or false), got {include_instances!r}"
        ),
    ):  # fmt: skip
        if message:
            raise TypeError(message)
    snapshot = _source(mesh).snapshot()
    services = []
    for found in sorted(snapshot.get("services", []), key=lambda s: str(s.get("name"))):
        if service_name is not None and found.get("name") != service_name:
            continue
        service: dict[str, Any] = {
            "name": found["name"],
            "strategy": found["strategy"],
            "instance_count": found["instance_count"],
            "healthy_count": found["healthy_count"],
        }
        if include_instances:
            service["instances"] = [_instance(i) for i in found.get("instances", [])]
        services.append(service)
    return {
        "services": services,
        "total_services": len(services),
        "total_instances": sum(s["instance_count"] for s in services),
        "healthy_instances": sum(s["healthy_count"] for s in services),
    }


def breakers(mesh: Target, breaker_name: str | None = None) -> dict[str, Any]:
    """``circuit_breaker_status``: the breakers (all, or the one named)."""
    message = _check_text("breaker_name", breaker_name)
    if message:
        raise TypeError(message)
    found = []
    snapshot = _source(mesh).snapshot()
    for full in sorted(snapshot.get("breakers", []), key=lambda b: str(b.get("name"))):
        if breaker_name is not None and full.get("name") != breaker_name:
            continue
        found.append(
            {
                "name": full["name"],
                "state": _CONTRACT_STATE.get(full["state"], "closed"),
                "failure_count": full["failure_count"],
                "failure_threshold": full["failure_threshold"],
                "last_failure_time": full["last_failure_time"],
            }
        )
    return {"breakers": found, "total": len(found)}


def configure(
    mesh: Target,
    service_name: str | None,
    action: str | None,
    strategy: str | None = None,
    instance_id: str | None = None,
    healthy: bool | None = None,
    *,
    writable: bool = True,
) -> dict[str, Any]:
    """``load_balancer_config``: get a service's balancer config, set its strategy or an
    instance's health. Returns ``status: "error"`` with a ``message`` for bad input,
    and for a write when ``writable`` is False (a read-only server)."""
    source = _source(mesh)
    service: dict[str, Any] | None = None

    def error(message: str) -> dict[str, Any]:
        return {"status": "error", **_config(service_name, service), "message": message}

    for field, value in (
        ("service_name", service_name),
        ("action", action),
        ("strategy", strategy),
        ("instance_id", instance_id),
    ):
        message = _check_text(field, value)
        if message:
            service_name = service_name if isinstance(service_name, str) else None
            return error(message)
    if healthy is not None and not isinstance(healthy, bool):
        return error(f"healthy must be a boolean (true or false), got {healthy!r}")
    if not service_name:
        return error("missing parameter: service_name")
    try:
        snapshot = source.snapshot()
    except RemoteError as exc:
        return error(str(exc))
    services = {s.get("name"): s for s in snapshot.get("services", [])}
    service = services.get(service_name)
    if not action:
        return error(f"missing parameter: action (one of {', '.join(ACTIONS)})")
    if service is None:
        known = ", ".join(sorted(str(name) for name in services)) or "none"
        return error(f"unknown service {service_name!r} (registered: {known})")
    if action == "get":
        return {"status": "success", **_config(service_name, service)}
    if action == "set_strategy":
        if not strategy:
            return error("missing parameter: strategy (required for set_strategy)")
        try:
            LoadBalancerStrategy.parse(strategy)
        except (TypeError, ValueError):
            return error(f"invalid strategy {strategy!r}: must be one of {', '.join(_STRATEGIES)}")
        write: dict[str, Any] = {"action": action, "service": service_name, "strategy": strategy}
    elif action == "set_health":
        missing = [
            name for name, value in (("instance_id", instance_id), ("healthy", healthy))
            if value is None or value == ""
        ]  # fmt: skip
        if missing:
            return error(f"missing parameter: {' and '.join(missing)} (required for set_health)")
        write = {
            "action": action,
            "service": service_name,
            "instance_id": instance_id,
            "healthy": healthy,
        }
    else:
        return error(f"invalid action {action!r}: must be one of {', '.join(ACTIONS)}")
    if not writable:
        return error(f"read-only: {action} needs a token (this server was started without one)")
    done = source.act(write)
    try:
        service = {s.get("name"): s for s in source.snapshot().get("services", [])}.get(
            service_name, service
        )
    except RemoteError as exc:
        return error(str(exc))
    if done.get("status") != "success":
        return error(str(done.get("message", "the write was refused")))
    return {"status": "success", **_config(service_name, service)}


def _config(service_name: str | None, service: dict[str, Any] | None) -> dict[str, Any]:
    if service is None:
        return {
            "service_name": service_name or None,
            "strategy": None,
            "instance_count": 0,
            "healthy_count": 0,
        }
    return {
        "service_name": service["name"],
        "strategy": service["strategy"],
        "instance_count": service["instance_count"],
        "healthy_count": service["healthy_count"],
    }


def _instance(full: dict[str, Any]) -> dict[str, Any]:
    picked = {key: full[key] for key in _INSTANCE_KEYS}
    # Metadata is the application's: anything JSON cannot carry travels as its str().
    picked["metadata"] = json.loads(json.dumps(full.get("metadata", {}), default=str))
    return picked


_INSTANCE_KEYS = ("id", "host", "port", "address", "weight", "healthy", "ejected", "connections")


# -- the MCP server ----------------------------------------------------------------------


def _result(payload: dict[str, Any], *, is_error: bool = False) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(payload, indent=2))],
        structured_content=payload,
        is_error=is_error,
    )


# The tools' arguments are declared exactly ``str`` / ``bool`` (with ``None`` defaults), see
# _tools; these aliases say so without spelling an implicit Optional.
_Text = str
_Flag = bool


def _one_of(choices: Sequence[str], description: str) -> Any:
    """A strict string argument's metadata, its JSON schema listing ``choices``."""
    return Field(strict=True, description=description, json_schema_extra={"enum": list(choices)})


def _answer(read: Callable[[], Any]) -> CallToolResult:
    """The result of a read-only tool: what ``read`` returns, or the error it raised."""
    try:
        return _result(read())
    except (TypeError, RemoteError) as exc:
        return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)


def _tools(mesh: Target, writable: bool) -> list[Tool]:
    # Arguments are declared as exactly ``str`` / ``bool`` (``None`` defaults aside) and
    # validated strictly: the SDK JSON-decodes a string argument whose annotation is not
    # exactly ``str`` (so "null" would read as None), and lax booleans take 1, "no", 1.0.
    def service_mesh_status(
        service_name: Annotated[
            _Text, Field(strict=True, description="Only this service; default all services.")
        ] = None,  # type: ignore[assignment]
        include_instances: Annotated[
            bool, Field(strict=True, description="Add each service's instances.")
        ] = False,
    ) -> Annotated[CallToolResult, MeshStatus]:
        """The mesh's services: strategy, instance and healthy counts, optionally the
        instances. A name that matches nothing gives an empty list."""
        return _answer(lambda: status(mesh, service_name, include_instances))

    def circuit_breaker_status(
        breaker_name: Annotated[
            _Text, Field(strict=True, description="Only this breaker; default all breakers.")
        ] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, BreakerStatus]:
        """The circuit breakers: state, failure count and threshold, last failure time.
        An unknown name gives an empty list."""
        return _answer(lambda: breakers(mesh, breaker_name))

    def load_balancer_config(
        service_name: Annotated[
            _Text, Field(strict=True, description="The service (required).")
        ] = None,  # type: ignore[assignment]
        action: Annotated[
            _Text, _one_of(ACTIONS, "What to do (required): get, set_strategy or set_health.")
        ] = None,  # type: ignore[assignment]
        strategy: Annotated[
            _Text, _one_of(_STRATEGIES, "The new strategy; required for set_strategy.")
        ] = None,  # type: ignore[assignment]
        instance_id: Annotated[
            _Text, Field(strict=True, description="The instance; required for set_health.")
        ] = None,  # type: ignore[assignment]
        healthy: Annotated[
            _Flag, Field(strict=True, description="Its new health; required for set_health.")
        ] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, LoadBalancerConfig]:
        """Read a service's load balancer config, change its strategy, or mark an
        instance healthy or unhealthy. Every action is idempotent."""
        payload = configure(
            mesh, service_name, action, strategy, instance_id, healthy, writable=writable
        )
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


def add_tools(
    server: MCPServer[Any], mesh: Target | None = None, *, writable: bool = True
) -> MCPServer[Any]:
    """Mount the three tools on ``server`` (an app's own ``MCPServer``) over ``mesh``
    (or a source such as a :class:`RemoteMesh`); ``writable=False`` refuses the writes."""
    for tool in _tools(mesh if mesh is not None else default_mesh(), writable):
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


def create_server(
    mesh: Target | None = None, *, name: str = SERVER_NAME, writable: bool | None = None
) -> MCPServer[Any]:
    """An MCP server exposing the three tools over ``mesh`` (default: the default mesh).

    ``mesh`` may also be a source such as :class:`RemoteMesh` (another process's
    status endpoint). ``writable`` defaults to True for a mesh of this process and,
    for a remote one, to whether it was given a token: a read-only server answers
    ``set_strategy`` and ``set_health`` with an error result.
    """
    if writable is None:
        writable = bool(getattr(mesh, "writable", True))
    return MCPServer(
        name,
        instructions=(
            "Look into a running service mesh and steer it: services and instances "
            "(service_mesh_status), circuit breakers (circuit_breaker_status), and a "
            "service's load balancer strategy and instance health (load_balancer_config)."
        ),
        tools=_tools(mesh if mesh is not None else default_mesh(), writable),
    )


def serve_stdio(mesh: Target | None = None) -> None:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options (shared with ``service-mesh mcp``)."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--demo-mesh",
        action="store_true",
        help="serve a small demo mesh instead of this process's (empty) default mesh",
    )
    which.add_argument(
        "--url",
        help="serve the mesh of a running service, read from its status endpoint "
        "(serve_status(mesh, ...) or `service-mesh demo`)",
    )
    parser.add_argument(
        "--token",
        help="with --url: the service's write token (default: $SERVICE_MESH_TOKEN); "
        "without one the tools are read-only",
    )


def target_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Target | None:
    """The mesh the parsed options name (argparse errors for bad ones)."""
    token = args.token or os.environ.get("SERVICE_MESH_TOKEN") or None
    if args.url is None:
        if args.token:
            parser.error("--token needs --url")
        return demo_mesh() if args.demo_mesh else None
    try:
        return RemoteMesh(args.url, token=token)
    except ValueError as exc:
        parser.error(f"--url: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m codomyrmex.service_mesh.integrations.mcp [--demo-mesh | --url URL]``."""
    parser = argparse.ArgumentParser(
        prog="python -m codomyrmex.service_mesh.integrations.mcp",
        description="Serve the service mesh MCP tools over stdio.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    serve_stdio(target_from(args, parser))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
