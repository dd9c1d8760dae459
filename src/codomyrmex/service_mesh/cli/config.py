"""The commands about a configuration file: ``config check``/``config schema`` and
``verify`` (the fault matrix run against it)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .._options import whole, writable_file
from ._base import Run, command, existing_file, missing, positive_float


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
    check.add_argument("file", metavar="FILE", type=existing_file, help="the file to check")
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
        from ..config import ConfigError, json_schema, load_config

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


def _modes(text: str) -> tuple[str, ...]:
    from ..verify.faults import MODES

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
    parser.add_argument("file", metavar="FILE", type=existing_file, help="the configuration")
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
        type=positive_float,
        default=50.0,
        metavar="SECONDS",
        help="start no cell after this many seconds (default: %(default)s)",
    )
    parser.add_argument("--seed", type=whole(), default=1, help="random seed (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")

    def run(args: argparse.Namespace) -> int:
        from ..config import ConfigError, load_config

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
            from ..verify.faults import MODES
            from ..verify.report import VerifyOptions, format_report, run_verify
        except ImportError as error:
            return missing("httpx", error)
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
