"""``python -m codomyrmex.service_mesh.simulation``: run scenarios, print tables, plot."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._options import count_list, number, whole, writable_file
from ..load_balancer import LoadBalancerStrategy
from ..outlier import OutlierDetectionConfig
from .engine import Result, simulate
from .model import Policy, Scenario
from .report import format_table, plot
from .scenarios import linkerd_stuck_backend, power_of_two_choices

__all__ = ["DESCRIPTION", "add_arguments", "build_parser", "main", "run"]

SCENARIO_NAMES = ("linkerd", "p2c")


DESCRIPTION = (
    "Discrete-event simulation of load-balancing strategies: a real ServiceProxy and "
    "LoadBalancer on a virtual clock against simulated backends. Prints success rate "
    "and latency percentiles per strategy; reproduces Linkerd's stuck-backend "
    "experiment (linkerd) and Mitzenmacher's power of two choices (p2c)."
)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's argument parser (``prog`` lets a host CLI mount it as a subcommand)."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m codomyrmex.service_mesh.simulation", description=DESCRIPTION
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser`` (its own, or a host CLI's subcommand)."""
    parser.add_argument(
        "--scenario",
        choices=(*SCENARIO_NAMES, "all"),
        default="all",
        help="which published case to run (default: all)",
    )
    parser.add_argument(
        "--strategy",
        action="append",
        metavar="NAME",
        help="a strategy to compare (repeatable; default: the scenario's own list); one of "
        + ", ".join(s.value for s in LoadBalancerStrategy),
    )
    parser.add_argument(
        "--outlier-detection",
        action="store_true",
        help="also run each strategy with passive outlier detection (Envoy defaults)",
    )
    parser.add_argument("--seed", type=whole(), default=1, help="random seed (default: 1)")
    parser.add_argument(
        "--duration",
        type=number(0.0, above=True),
        default=60.0,
        metavar="SECONDS",
        help="linkerd: virtual seconds to run (default: 60)",
    )
    parser.add_argument(
        "--servers",
        type=count_list(1),
        default="10,100",
        metavar="N[,N...]",
        help="p2c: pool sizes to run (default: 10,100)",
    )
    parser.add_argument(
        "--requests",
        type=whole(1),
        default=200_000,
        metavar="N",
        help="p2c: requests per run (default: 200000)",
    )
    parser.add_argument(
        "--out",
        metavar="PNG",
        type=writable_file,
        help="write a plot of the results to this file",
    )


def _policies(scenario: Scenario, args: argparse.Namespace) -> list[Policy]:
    if args.strategy:
        strategies = [LoadBalancerStrategy.parse(s, "--strategy") for s in args.strategy]
    else:
        strategies = list(scenario.strategies)
    policies = [Policy(s) for s in strategies]
    if args.outlier_detection:
        policies += [Policy(s, outlier_detection=OutlierDetectionConfig()) for s in strategies]
    return policies


def _scenarios(args: argparse.Namespace) -> list[Scenario]:
    chosen = SCENARIO_NAMES if args.scenario == "all" else (args.scenario,)
    out: list[Scenario] = []
    if "linkerd" in chosen:
        out.append(linkerd_stuck_backend(duration=args.duration))
    if "p2c" in chosen:
        for servers in args.servers:
            out.append(power_of_two_choices(servers=servers, requests=args.requests))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator with command-line arguments; return the exit status."""
    parser = build_parser()
    return run(parser.parse_args(argv), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the simulator with parsed arguments (``parser`` reports bad values)."""
    try:
        scenarios = _scenarios(args)
        runs: list[tuple[Scenario, list[Result]]] = []
        for scenario in scenarios:
            policies = _policies(scenario, args)
            results = [simulate(scenario, policy, args.seed) for policy in policies]
            runs.append((scenario, results))
            print(format_table(scenario, results), end="\n\n", flush=True)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if args.out:
        note = plot(runs, args.out)
        print(note if note is not None else f"plot written to {args.out}", file=sys.stderr)
    return 0
