"""``service-mesh status``: the mesh status a running process serves, as tables or JSON."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ._base import Run, add_status_url, command, positive_float


@command(
    "status",
    "Print the mesh status (services, instances, breakers) of a running `service-mesh demo` "
    "or of an app that serves it with serve_status().",
)
def _status(parser: argparse.ArgumentParser) -> Run:
    add_status_url(parser, "where the status is served")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.add_argument(
        "--timeout", type=positive_float, default=3.0, help="seconds to wait (default: 3)"
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
            print_status(status, url)
        return 0

    return run


def print_status(status: dict[str, Any], url: str) -> None:
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
    tables = [(instance_head, instances), (breaker_head, breakers)]
    discovery = discovery_rows(status)
    if discovery:
        tables.append((["service", "source", "state", "instances", "age"], discovery))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(headline)
        for head, rows in tables:
            widths = [max(len(str(c)) for c in column) for column in zip(head, *rows, strict=True)]
            for row in (head, *rows):
                print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            print()
        return
    console = Console()
    console.print(headline)
    for head, rows in tables:
        table = Table(*head)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def discovery_rows(status: dict[str, Any]) -> list[list[str]]:
    """One row per service with a resolver: its source, and fresh or how stale."""
    rows = []
    for service in status.get("services", []):
        found = service.get("discovery")
        if not isinstance(found, dict):
            continue
        age = found.get("age")
        state = "ok" if found.get("ok") else f"stale {found.get('stale', 0.0):.1f}s"
        if not found.get("ok") and found.get("error"):
            state += f" ({found['error']})"
        rows.append(
            [
                service["name"],
                str(found.get("source", "?")),
                state,
                str(found.get("instances", 0)),
                "never" if age is None else f"{age:.1f}s",
            ]
        )
    return rows
