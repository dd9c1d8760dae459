"""The commands that mount another part of the package: ``simulate`` (the simulator),
``mcp`` (the MCP server) and ``dashboard`` (the live web page)."""

from __future__ import annotations

import argparse
import sys

from ._base import Run, add_status_url, command, missing, positive_float


@command(
    "simulate",
    "Simulate load-balancing strategies on a virtual clock (a real proxy and balancer "
    "against simulated backends): success rate and latency percentiles per strategy.",
)
def _simulate(parser: argparse.ArgumentParser) -> Run:
    from ..simulation.cli import add_arguments
    from ..simulation.cli import run as run_simulation

    add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        return run_simulation(args, parser)

    return run


@command(
    "mcp",
    "Serve the mesh's MCP tools (service_mesh_status, circuit_breaker_status, "
    "load_balancer_config) over stdio, for an MCP client to start.",
)
def _mcp(parser: argparse.ArgumentParser) -> Run:
    try:
        from ..integrations.mcp import add_arguments
    except ImportError:
        parser.add_argument("--demo-mesh", action="store_true", help="(needs the [mcp] extra)")
    else:
        add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        # Nothing may be printed to stdout here: stdio carries the protocol.
        try:
            from ..integrations.mcp import serve_stdio, target_from
        except ImportError as error:
            return missing("mcp", error)
        serve_stdio(target_from(args, parser))
        return 0

    return run


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


@command(
    "dashboard",
    "Serve a live web dashboard of a running service's mesh (breaker states, success and "
    "request rates, latency percentiles, instances, transitions) from its status endpoint.",
)
def _dashboard(parser: argparse.ArgumentParser) -> Run:
    add_status_url(
        parser,
        "the service's status endpoint: serve_status(mesh, monitor=True, token=...) "
        "or `service-mesh demo`",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=_port, default=8743, help="port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--token",
        help="the service's write token (default: $SERVICE_MESH_TOKEN); the page's write "
        "actions need it, and are refused without one",
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        help="seconds between reads of the status endpoint (default: %(default)s)",
    )

    def run(args: argparse.Namespace) -> int:
        import os

        try:
            from ..integrations.control import RemoteMesh
            from ..integrations.dashboard import serve
        except ImportError as error:
            return missing("dashboard", error)
        token = args.token or os.environ.get("SERVICE_MESH_TOKEN") or None
        try:
            remote = RemoteMesh(args.url, token=token)
        except ValueError as error:
            parser.error(f"--url: {error}")
        mode = "writes need the token" if token else "read-only: no token"

        def ready(url: str) -> None:
            print(f"service-mesh dashboard of {remote.url} on {url} ({mode})", file=sys.stderr)
            sys.stderr.flush()

        try:
            serve(
                remote,
                host=args.host,
                port=args.port,
                token=token,
                interval=args.interval,
                ready=ready,
            )
        except OSError as error:
            print(f"service-mesh dashboard: cannot listen on {args.host}:{args.port}: {error}",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0

    return run
