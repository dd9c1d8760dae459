"""The ``service-mesh`` command (also ``python -m codomyrmex.service_mesh``).

    service-mesh demo                        # the main job: real backends, without/with the mesh
    service-mesh demo --requests 300 --json  # quick, machine-readable
    service-mesh demo --report report.html   # plus a self-contained HTML page with charts
    service-mesh status [--url URL] [--json] # the mesh status of a running demo or app
    service-mesh simulate --scenario linkerd  # load-balancing strategies on a virtual clock
    service-mesh mcp [--demo-mesh]           # the MCP tools over stdio

``status`` asks a running process for its mesh: a mesh lives inside one process,
so it reads the JSON snapshot (``Mesh.status()``) that the process serves over
HTTP, and prints it. The demo serves its mesh at
``http://127.0.0.1:8742/status`` while it runs (``--status-port``); an
application serves its own with ``serve_status`` from
:mod:`codomyrmex.service_mesh.integrations.status_http` (stdlib ``http.server`` on a
daemon thread, loopback by default), and ``status --url`` points at it. ``mcp``
exposes the same snapshot (and the balancer controls) as MCP tools.

Subcommands live in one table: a function decorated with ``@command(name, help)``
receives its ``argparse`` parser, adds its options, and returns the function
that runs it. Adding a subcommand (``mcp``, say) is one such function.

Optional dependencies are imported only by the subcommands that need them, so
``service-mesh --help`` and ``status`` work with the standard library alone
(``status`` draws its tables with rich when it is installed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from ._options import number, whole, writable_file
from .demo.options import DEFAULT_STATUS_PORT, DemoOptions
from .integrations.status_http import StatusServer, serve_status

__all__ = ["COMMANDS", "StatusServer", "build_parser", "command", "main", "serve_status"]

Run = Callable[[argparse.Namespace], int]
"""Runs a parsed subcommand; returns the exit status."""
Configure = Callable[[argparse.ArgumentParser], Run]
"""Adds a subcommand's options to its parser and returns the function that runs it."""


@dataclass(frozen=True)
class Command:
    """One row of the subcommand table."""

    help: str
    configure: Configure


COMMANDS: dict[str, Command] = {}
"""The subcommands, by name, in the order ``--help`` lists them."""


def command(name: str, help: str) -> Callable[[Configure], Configure]:
    """Register the decorated function as subcommand ``name`` (see the module docstring)."""

    def register(configure: Configure) -> Configure:
        COMMANDS[name] = Command(help, configure)
        return configure

    return register


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


_positive_int = whole(1)
_positive_float = number(0.0, above=True)


def _existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def _missing(extra: str, error: ImportError, hint: str = "") -> int:
    print(
        f"service-mesh: this needs {error.name}: pip install 'codomyrmex-service-mesh[{extra}]'"
        f"{hint}",
        file=sys.stderr,
    )
    return 2


# -- demo ---------------------------------------------------------------------------


@command(
    "demo",
    "Start five real HTTP backends on 127.0.0.1 (healthy, slow, flaky, one that dies and "
    "comes back, one that starts late) and send the same requests twice: from a plain httpx "
    "client, then through the mesh. Shows both live, then compares them.",
)
def _demo(parser: argparse.ArgumentParser) -> Run:
    defaults = DemoOptions()
    parser.add_argument(
        "--requests",
        type=_positive_int,
        default=defaults.requests,
        help="requests per run (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=defaults.concurrency,
        help="requests in flight at most (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=whole(),
        default=defaults.seed,
        help="fixes the request stream and the backends' behaviour (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=defaults.rate,
        help="requests started per second (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a machine-readable summary on stdout instead of the live view",
    )
    parser.add_argument(
        "--report",
        metavar="PATH",
        type=writable_file,
        help="also write a self-contained HTML report with charts to PATH",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=_existing_file,
        help="the mesh settings to run (default: the demo's own, examples/mesh.toml)",
    )
    parser.add_argument(
        "--status-port",
        type=whole(-1, 65535),
        default=defaults.status_port,
        metavar="PORT",
        help="serve the mesh status as JSON on 127.0.0.1:PORT while running, for "
        "`service-mesh status` (default: %(default)s; 0: any free port; -1: none)",
    )

    def run(args: argparse.Namespace) -> int:
        try:
            from .demo.runner import demo_settings, load_demo_config, run_demo
        except ImportError as error:
            return _missing("cli", error)
        from .config import ConfigError

        try:
            config = load_demo_config(args.config)
        except ConfigError as error:
            print(
                f"service-mesh demo: --config: the configuration is invalid:\n{error}",
                file=sys.stderr,
            )
            return 2
        options = DemoOptions(
            requests=args.requests,
            concurrency=args.concurrency,
            seed=args.seed,
            rate=args.rate,
            status_port=None if args.status_port < 0 else args.status_port,
        )
        # Breaker transitions are the live view's business; as log lines they would tear it.
        logging.getLogger("codomyrmex.service_mesh").setLevel(logging.ERROR)
        if args.json:
            result = run_demo(options, config=config)
            print(json.dumps(result.summary(), indent=2))
        else:
            try:
                from rich.console import Console

                from .demo.live import LiveView, print_summary
            except ImportError as error:
                return _missing("cli", error, " (or use --json)")
            console = Console()
            console.print(
                f"[bold]service-mesh demo[/bold]: {options.requests} requests, "
                f"{options.concurrency} at a time, {options.rate:g}/s, seed {options.seed}; "
                "five backends on 127.0.0.1. A plain client, a hand-written 3-try retry loop, "
                f"then the mesh with the settings of {config.source}."
            )
            result = run_demo(options, LiveView(console, demo_settings(config)), config)
            print_summary(console, result)
        if args.report:
            from .demo.report import write_report

            write_report(result, args.report)
            print(f"report written to {args.report}", file=sys.stderr)
        return 0

    return run


# -- status -------------------------------------------------------------------------


@command(
    "status",
    "Print the mesh status (services, instances, breakers) of a running `service-mesh demo` "
    "or of an app that serves it with serve_status().",
)
def _status(parser: argparse.ArgumentParser) -> Run:
    parser.add_argument(
        "--url",
        default=f"http://127.0.0.1:{DEFAULT_STATUS_PORT}/status",
        help="where the status is served (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.add_argument(
        "--timeout", type=_positive_float, default=3.0, help="seconds to wait (default: 3)"
    )

    def run(args: argparse.Namespace) -> int:
        url = args.url if "://" in args.url else f"http://{args.url}"
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            print(f"service-mesh status: not an http(s) URL: {args.url}", file=sys.stderr)
            return 2
        if parts.path in ("", "/"):
            url = urllib.parse.urlunsplit(parts._replace(path="/status"))
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as response:
                status = json.load(response)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            print(
                f"service-mesh status: nothing answered at {url} ({reason}).\n"
                "Start `service-mesh demo` (it serves its mesh there while it runs), or serve "
                "your app's mesh with serve_status(mesh, host, port) from "
                "codomyrmex.service_mesh.integrations.status_http.",
                file=sys.stderr,
            )
            return 1
        except ValueError as error:
            print(f"service-mesh status: {url} did not answer JSON: {error}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            _print_status(status, url)
        return 0

    return run


def _print_status(status: dict[str, Any], url: str) -> None:
    """Services, instances and breakers as tables (rich when installed, else plain text)."""
    instances = [
        [
            service["name"],
            inst["id"],
            inst["address"],
            "yes" if inst["healthy"] else "no",
            str(inst["connections"]),
        ]
        for service in status.get("services", [])
        for inst in service.get("instances", [])
    ]
    breakers = [
        [
            b["name"],
            b["state"],
            f"{b['failure_count']}/{b['failure_threshold']}",
            "never" if b.get("retry_after") is None else f"{b['retry_after']:.2f}s",
        ]
        for b in status.get("breakers", [])
    ]
    headline = (
        f"{status.get('total_services', 0)} services, {status.get('healthy_instances', 0)}/"
        f"{status.get('total_instances', 0)} instances healthy, "
        f"{status.get('total_breakers', 0)} breakers ({url})"
    )
    instance_head = ["service", "instance", "address", "healthy", "connections"]
    breaker_head = ["breaker", "state", "failures", "retry after"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(headline)
        for head, rows in ((instance_head, instances), (breaker_head, breakers)):
            widths = [max(len(str(c)) for c in column) for column in zip(head, *rows, strict=True)]
            for row in (head, *rows):
                print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            print()
        return
    console = Console()
    console.print(headline)
    for head, rows in ((instance_head, instances), (breaker_head, breakers)):
        table = Table(*head)
        for row in rows:
            table.add_row(*row)
        console.print(table)


# -- simulate -----------------------------------------------------------------------


@command(
    "simulate",
    "Simulate load-balancing strategies on a virtual clock (a real proxy and balancer "
    "against simulated backends): success rate and latency percentiles per strategy.",
)
def _simulate(parser: argparse.ArgumentParser) -> Run:
    from .simulation.cli import add_arguments
    from .simulation.cli import run as run_simulation

    add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        return run_simulation(args, parser)

    return run


# -- mcp ----------------------------------------------------------------------------


@command(
    "mcp",
    "Serve the mesh's MCP tools (service_mesh_status, circuit_breaker_status, "
    "load_balancer_config) over stdio, for an MCP client to start.",
)
def _mcp(parser: argparse.ArgumentParser) -> Run:
    parser.add_argument(
        "--demo-mesh",
        action="store_true",
        help="serve a small demo mesh (three services, one instance down, one breaker open) "
        "instead of this process's empty default mesh",
    )

    def run(args: argparse.Namespace) -> int:
        # Nothing may be printed to stdout here: stdio carries the protocol.
        try:
            from .integrations.mcp import demo_mesh, serve_stdio
        except ImportError as error:
            return _missing("mcp", error)
        serve_stdio(demo_mesh() if args.demo_mesh else None)
        return 0

    return run


# -- config -------------------------------------------------------------------------


@command(
    "config",
    "Work with a mesh configuration file (TOML, YAML or JSON): `config check FILE` validates "
    "it without running anything, `config schema` prints its JSON Schema for editors.",
)
def _config(parser: argparse.ArgumentParser) -> Run:
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action")
    check = actions.add_parser(
        "check",
        help="validate FILE: every error with its full path and value (exit 1 if any)",
        description="Validate a configuration file (environment overrides applied) without "
        "running anything. Every error names its full path and value.",
    )
    check.add_argument("file", metavar="FILE", type=_existing_file, help="the file to check")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    schema = actions.add_parser(
        "schema",
        help="print the JSON Schema of a configuration",
        description="Print the JSON Schema (draft 2020-12) of a configuration file.",
    )
    schema.add_argument(
        "--out", metavar="PATH", type=writable_file, help="write it to PATH instead of stdout"
    )

    def run(args: argparse.Namespace) -> int:
        from .config import ConfigError, json_schema, load_config

        if args.action == "schema":
            text = json.dumps(json_schema(), indent=2) + "\n"
            if args.out:
                with open(args.out, "w", encoding="utf-8") as out:
                    out.write(text)
                print(f"schema written to {args.out}", file=sys.stderr)
            else:
                sys.stdout.write(text)
            return 0
        if args.action != "check":
            parser.print_help()
            return 2
        try:
            config = load_config(args.file)
        except ConfigError as error:
            if args.json:
                print(
                    json.dumps({"file": args.file, "ok": False, "errors": error.errors}, indent=2)
                )
            else:
                print(f"{args.file}: {len(error.errors)} error(s)", file=sys.stderr)
                for line in error.errors:
                    print(f"  {line}", file=sys.stderr)
            return 1
        names = sorted(config.services)
        if args.json:
            print(
                json.dumps(
                    {
                        "file": args.file,
                        "ok": True,
                        "services": names,
                        "environment_overrides": dict(config.overrides),
                    },
                    indent=2,
                )
            )
        else:
            print(f"{args.file}: ok, {len(names)} service(s): {', '.join(names) or 'none'}")
            for path, variable in sorted(config.overrides.items()):
                print(f"  {path} set by ${variable}")
        return 0

    return run


# -- verify -------------------------------------------------------------------------


def _modes(text: str) -> tuple[str, ...]:
    from .verify.faults import MODES

    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in chosen if m not in MODES]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(
            f"must be fault modes separated by commas ({', '.join(MODES)}), got {text!r}"
        )
    return chosen


@command(
    "verify",
    "Run the fault matrix against your configuration: real backends on 127.0.0.1, one bad "
    "instance of three in each fault mode, sync and async; your settings next to a plain "
    "client and a hand-written retry loop. Flags every cell where the configuration does "
    "worse than the loop and says why. Exit 1 if any.",
)
def _verify(parser: argparse.ArgumentParser) -> Run:
    parser.add_argument("file", metavar="FILE", type=_existing_file, help="the configuration")
    parser.add_argument(
        "--service",
        metavar="NAME",
        help="the service whose settings to verify (default: the only one, else all of them)",
    )
    parser.add_argument(
        "--requests", type=whole(1), default=60, help="requests per cell (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency",
        type=whole(1),
        default=32,
        help="requests in flight at most (default: %(default)s)",
    )
    parser.add_argument(
        "--modes", type=_modes, help="fault modes to run, comma-separated (default: all)"
    )
    parser.add_argument(
        "--flavour",
        choices=("sync", "async", "both"),
        default="both",
        help="threads, tasks or both (default: both)",
    )
    parser.add_argument(
        "--pacing",
        choices=("burst", "paced", "both"),
        default="burst",
        help="send each cell's requests at once, at 200/s, or both (default: burst)",
    )
    parser.add_argument(
        "--time-limit",
        type=number(0.0, above=True),
        default=50.0,
        metavar="SECONDS",
        help="start no cell after this many seconds (default: %(default)s)",
    )
    parser.add_argument("--seed", type=whole(), default=1, help="random seed (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")

    def run(args: argparse.Namespace) -> int:
        from .config import ConfigError, load_config

        try:
            config = load_config(args.file)
        except ConfigError as error:
            print(f"service-mesh verify: {args.file} is invalid:\n{error}", file=sys.stderr)
            return 2
        if args.service is not None and args.service not in config.services:
            print(
                f"service-mesh verify: --service: no service {args.service!r} in {args.file}; "
                f"it has {', '.join(sorted(config.services)) or 'none'}",
                file=sys.stderr,
            )
            return 2
        names = [args.service] if args.service else sorted(config.services)
        if not names:
            print(f"service-mesh verify: {args.file} has no services", file=sys.stderr)
            return 2
        try:
            from .verify.faults import MODES
            from .verify.report import VerifyOptions, format_report, run_verify
        except ImportError as error:
            return _missing("httpx", error)
        pacings = {"burst": (None,), "paced": (200.0,), "both": (200.0, None)}[args.pacing]
        flavours = ("sync", "async") if args.flavour == "both" else (args.flavour,)
        logging.getLogger("codomyrmex.service_mesh").setLevel(logging.ERROR)
        found = False
        summaries = []
        for name in names:
            options = VerifyOptions(
                requests=args.requests,
                concurrency=args.concurrency,
                modes=args.modes or MODES,
                flavours=flavours,
                pacings=pacings,
                time_limit=args.time_limit / len(names),
                seed=args.seed,
            )

            def progress(step: str) -> None:
                if not args.json:
                    print(f"  running {step} ...", file=sys.stderr, flush=True)

            report = run_verify(config, name, options, progress=progress)
            found = found or not report.ok
            if args.json:
                summaries.append(report.summary())
            else:
                print(format_report(report), flush=True)
                print()
        if args.json:
            print(json.dumps({"file": args.file, "services": summaries}, indent=2))
        return 1 if found else 0

    return run
