#!/usr/bin/env python3
"""Benchmark codomyrmex.service_mesh against its peers, all in one interleaved run.

    python3 dev.py bench                      # full run (installs the peers first)
    python3 dev.py bench --quick              # a few thousand iterations (CI, tests)
    .venv/bin/python benchmarks/run.py --only breaker_success --repeats 9

Prints a table, and writes results.json, table.md and ratios.png to --out. Targets
from the issue are shown as PASS/MISS for information; nothing here fails on speed.
Exit status: 0, or 1 with --strict when some contender could not run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients
from meshbench import breakers, discovery, limits, mesh, retries
from meshbench.harness import Settings, Workload, WorkloadResult, run_workload
from meshbench.report import load_average, machine_info, text_report, write_all

WORKLOADS: dict[str, Callable[[], Workload]] = {
    "breaker_success": breakers.breaker_success,
    "breaker_open": breakers.breaker_open,
    "breaker_threads": breakers.breaker_threads,
    "retry_success": retries.retry_success,
    "retry_failures": retries.retry_failures,
    "lb_scale": mesh.lb_scale,
    "proxy_call": mesh.proxy_call,
    "discovery_churn": discovery.discovery_churn,
    "breaker_memory": breakers.breaker_memory,
    "async_breaker_success": breakers.async_breaker_success,
    "async_breaker_open": breakers.async_breaker_open,
    "async_retry_success": retries.async_retry_success,
    "async_proxy_call": mesh.async_proxy_call,
    "limiter_success": limits.limiter_success,
    "async_limiter_success": limits.async_limiter_success,
    **clients.WORKLOADS,  # the client integrations on the real path (loopback servers)
}

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few thousand iterations")
    parser.add_argument(
        "--repeats", type=int, default=None, help="samples per contender (default 7, quick 3)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORKLOAD",
        help="run only this workload (repeatable, or comma-separated): " + ", ".join(WORKLOADS),
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 if any contender could not run"
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    only = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = [name for name in only if name not in WORKLOADS]
    if unknown:
        parser.error(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    args.only = only
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list:
        for key, make in WORKLOADS.items():
            print(f"{key:24} {make().title}")
        return 0
    settings = Settings.make(quick=args.quick, repeats=args.repeats)
    info = machine_info(settings, argv)
    log(
        f"benchmarks: {'quick' if settings.quick else 'full'} run, {settings.repeats} repeats, "
        f"Python {info['python']}, {info['cpu']}"
    )
    started = time.perf_counter()
    results: list[WorkloadResult] = []
    for key in args.only or list(WORKLOADS):
        workload = WORKLOADS[key]()
        log(f"- {key}: {len(workload.contenders)} contenders")
        results.append(run_workload(workload, settings, log))
    info["load_average_end"] = load_average()
    print(text_report(results, settings))
    written = write_all(args.out, info, results)
    print(f"\nwrote {', '.join(str(p) for p in written)} in {time.perf_counter() - started:.1f}s")
    failed = any(c.error for wr in results for c in wr.contenders)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
