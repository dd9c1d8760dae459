"""The ``service-mesh`` command (also ``python -m codomyrmex.service_mesh``).

    service-mesh demo                        # the main job: real backends, without/with the mesh
    service-mesh demo --requests 300 --json  # quick, machine-readable
    service-mesh demo --report report.html   # plus a self-contained HTML page with charts
    service-mesh status [--url URL] [--json] # the mesh status of a running demo or app
    service-mesh simulate --scenario linkerd  # load-balancing strategies on a virtual clock
    service-mesh mcp [--demo-mesh]           # the MCP tools over stdio
    service-mesh mcp --url URL [--token T]   # ... over a running service's mesh
    service-mesh dashboard --url URL         # a live web page of it, on 127.0.0.1:8743

``status`` asks a running process for its mesh: a mesh lives inside one process,
so it reads the JSON snapshot (``Mesh.status()``) that the process serves over
HTTP, and prints it. The demo serves its mesh at
``http://127.0.0.1:8742/status`` while it runs (``--status-port``); an
application serves its own with ``serve_status`` from
:mod:`codomyrmex.service_mesh.integrations.status_http` (stdlib ``http.server`` on a
daemon thread, loopback by default), and ``status --url`` points at it. ``mcp``
exposes the same snapshot (and the balancer controls) as MCP tools.

Subcommands live in one table (:mod:`._base`): a function decorated with ``@command(name, help)``
receives its ``argparse`` parser, adds its options, and returns the function
that runs it. Adding a subcommand (``mcp``, say) is one such function.

Optional dependencies are imported only by the subcommands that need them, so
``service-mesh --help`` and ``status`` work with the standard library alone
(``status`` draws its tables with rich when it is installed).

One module per command group: :mod:`.demo`, :mod:`.status`, :mod:`.tools` (simulate,
mcp, dashboard) and :mod:`.config` (config, verify).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..integrations.status_http import StatusServer, serve_status

# Each module registers its commands on import, in the order --help lists them.
# isort: off
from . import demo, status, tools, config  # noqa: F401

# isort: on
from ._base import COMMANDS, Run, command
from .status import print_status as _print_status  # noqa: F401  (its old name, for tests)

__all__ = ["COMMANDS", "StatusServer", "build_parser", "command", "main", "serve_status"]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one sub-parser per registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="service-mesh",
        description="Resilient service-to-service calls: see them work on real HTTP servers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, entry in COMMANDS.items():
        sub = subparsers.add_parser(name, help=entry.help, description=entry.help)
        sub.set_defaults(run=entry.configure(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``service-mesh`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Run | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        print("service-mesh: interrupted", file=sys.stderr)
        return 130
