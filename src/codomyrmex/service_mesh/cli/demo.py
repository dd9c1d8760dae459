"""``service-mesh demo``, the main job: a plain client, a retry loop and the mesh, side by
side on real backends."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .._options import whole, writable_file
from ..demo.options import DemoOptions
from ._base import Run, command, existing_file, missing, positive_float, positive_int


@command(
    "demo",
    "Start five real HTTP backends on 127.0.0.1 (healthy, slow, flaky, one that dies and "
    "comes back, one that starts late) and send the same requests twice: from a plain httpx "
    "client, then through the mesh. Shows both live, then compares them.",
)
def _demo(parser: argparse.ArgumentParser) -> Run:
    defaults = DemoOptions()
    for field, parse, meaning in (
        ("requests", positive_int, "requests per run"),
        ("concurrency", positive_int, "requests in flight at most"),
        ("seed", whole(), "fixes the request stream and the backends' behaviour"),
        ("rate", positive_float, "requests started per second"),
    ):
        parser.add_argument(
            f"--{field}",
            type=parse,
            default=getattr(defaults, field),
            help=f"{meaning} (default: %(default)s)",
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
        type=existing_file,
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
            from ..demo.runner import demo_settings, load_demo_config, run_demo
        except ImportError as error:
            return missing("cli", error)
        from ..config import ConfigError

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

                from ..demo.live import LiveView, print_summary
            except ImportError as error:
                return missing("cli", error, " (or use --json)")
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
            from ..demo.report import write_report

            write_report(result, args.report)
            print(f"report written to {args.report}", file=sys.stderr)
        return 0

    return run
