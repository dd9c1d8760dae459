"""The AWS backoff experiment on virtual time: what jitter does to contending clients.

``clients`` clients all want one successful call to a shared resource, and all
try at once. An attempt succeeds only if no other client attempted within the
``window`` seconds before it (the resource is still busy with that attempt);
of attempts at the same instant the resource serves one first, so it wins and
the rest fail. A client learns of a failure ``latency`` seconds later (the
round trip), waits what :meth:`RetryPolicy.get_delay` gives for its jitter mode
(with a seeded RNG), and tries again. Per mode we report the work (total
calls) and the completion time (when the last client succeeded), the two
measures of Marc Brooker's "Exponential Backoff And Jitter" (AWS Architecture
Blog, 2015), whose simulator used a 5 ms base, a 2 s cap and about 10 ms per
network hop. Nothing sleeps: time is a number in a heap.

    python -m codomyrmex.service_mesh.simulation.backoff --runs 20
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields

from .._validate import check_int, check_number
from ..retry import JITTER_MODES, RetryPolicy

__all__ = ["Contention", "ModeResult", "Run", "compare", "format_table", "main", "simulate"]


@dataclass(frozen=True, slots=True)
class Contention:
    """The experiment's parameters (seconds), after the AWS simulator's.

    - ``clients``: clients that all start at time 0 and each need one success;
    - ``window``: how long an attempt keeps the resource busy (later attempts within
      it fail);
    - ``latency``: the round trip, how long a client takes to learn that its attempt
      failed;
    - ``base`` and ``cap``: the retry policy's ``initial_delay`` and ``max_delay``;
    - ``max_attempts``: attempts after which a client gives up (bounds every run).
    """

    clients: int = 100
    window: float = 0.001
    latency: float = 0.02
    base: float = 0.005
    cap: float = 2.0
    max_attempts: int = 10_000

    def __post_init__(self) -> None:
        check_int("clients", self.clients, 1)
        check_number("window", self.window, 0.0)
        check_number("latency", self.latency, 0.0)
        check_number("base", self.base, 0.0)
        check_number("cap", self.cap, 0.0)
        check_int("max_attempts", self.max_attempts, 1)


@dataclass(frozen=True, slots=True)
class Run:
    """One simulated contention episode."""

    calls: int
    """Attempts made by all clients together (the work done)."""
    completion: float
    """Virtual seconds until the last client succeeded."""
    unfinished: int
    """Clients that gave up after ``max_attempts`` (0 unless the bound was hit)."""


@dataclass(frozen=True, slots=True)
class ModeResult:
    """A jitter mode's runs, averaged."""

    mode: str
    calls: float
    completion: float
    unfinished: int


def simulate(jitter: str, setup: Contention = Contention(), seed: int = 0) -> Run:
    """Run one episode: every client starts at time 0 and retries until it succeeds.

    Delays come from ``RetryPolicy(initial_delay=base, max_delay=cap, jitter=jitter)``
    with ``random.Random(seed)``; decorrelated jitter is given each client's own
    previous wait.
    """
    if jitter not in JITTER_MODES:
        raise ValueError(f"jitter must be one of {JITTER_MODES}, got {jitter!r}")
    policy = RetryPolicy(
        max_retries=setup.max_attempts,
        initial_delay=setup.base,
        max_delay=setup.cap,
        jitter=jitter,
        rng=random.Random(seed),
    )
    window, latency, max_attempts = setup.window, setup.latency, setup.max_attempts
    # (time, client): simultaneous attempts are served in client order.
    pending = [(0.0, client) for client in range(setup.clients)]
    heapq.heapify(pending)
    failures = [0] * setup.clients
    previous: list[float | None] = [None] * setup.clients
    last_at, last_client = -math.inf, -1
    other_at = -math.inf  # the latest attempt by someone other than ``last_client``
    calls = unfinished = 0
    completion = 0.0
    while pending:
        now, client = heapq.heappop(pending)
        calls += 1
        busy_since = last_at if last_client != client else other_at
        if last_client != client:
            other_at, last_client = last_at, client
        last_at = now
        if now - busy_since >= window:
            completion = now
            continue
        attempt = failures[client]
        if attempt + 1 >= max_attempts:
            unfinished += 1
            continue
        delay = policy.get_delay(attempt, previous[client])
        failures[client] = attempt + 1
        previous[client] = delay
        heapq.heappush(pending, (now + latency + delay, client))
    return Run(calls, completion, unfinished)


def compare(
    setup: Contention = Contention(),
    modes: Sequence[str] = JITTER_MODES,
    *,
    runs: int = 10,
    seed: int = 0,
) -> list[ModeResult]:
    """Average ``runs`` episodes (seeds ``seed`` .. ``seed + runs - 1``) per jitter mode."""
    check_int("runs", runs, 1)
    results = []
    for mode in modes:
        episodes = [simulate(mode, setup, seed + k) for k in range(runs)]
        results.append(
            ModeResult(
                mode,
                statistics.fmean(e.calls for e in episodes),
                statistics.fmean(e.completion for e in episodes),
                sum(e.unfinished for e in episodes),
            )
        )
    return results


def format_table(results: Sequence[ModeResult], clients: int) -> str:
    """A plain-text table: work and completion time per jitter mode."""
    lines = [f"{'jitter':<13} {'total calls':>12} {'calls/client':>13} {'completion (s)':>15}"]
    for r in results:
        lines.append(
            f"{r.mode:<13} {r.calls:>12.1f} {r.calls / clients:>13.2f} {r.completion:>15.3f}"
            + (f"  ({r.unfinished} clients gave up)" if r.unfinished else "")
        )
    return "\n".join(lines)


_HELP = {
    "clients": "contending clients",
    "window": "seconds an attempt keeps the resource busy",
    "latency": "seconds until a client learns that it failed",
    "base": "initial backoff delay (s)",
    "cap": "maximum backoff delay (s)",
    "max_attempts": "attempts after which a client gives up",
}


def main(argv: Sequence[str] | None = None) -> int:
    """The command: simulate every jitter mode and print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m codomyrmex.service_mesh.simulation.backoff",
        description="AWS backoff experiment: clients contending for one resource, per jitter mode.",
    )
    for option in fields(Contention):
        parser.add_argument(
            f"--{option.name.replace('_', '-')}",
            dest=option.name,
            type=int if option.type == "int" else float,
            default=option.default,
            help=f"{_HELP[option.name]} (default {option.default})",
        )
    parser.add_argument("--runs", type=int, default=10, help="episodes averaged per mode")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    args = parser.parse_args(argv)
    try:
        setup = Contention(
            **{option.name: getattr(args, option.name) for option in fields(Contention)}
        )
        results = compare(setup, runs=args.runs, seed=args.seed)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    print(
        f"{setup.clients} clients, attempt window {setup.window}s, latency {setup.latency}s, "
        f"base {setup.base}s, cap {setup.cap}s; mean of {args.runs} runs, virtual time"
    )
    print(format_table(results, setup.clients))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
