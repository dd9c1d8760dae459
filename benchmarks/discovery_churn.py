#!/usr/bin/env python3
"""Do 1,000 membership changes per second stall picks? Pick latency with and without churn.

    .venv/bin/python benchmarks/discovery_churn.py              # 3 s per phase
    .venv/bin/python benchmarks/discovery_churn.py --seconds 1 --strategy WEIGHTED

A pool of 1,000 instances; a thread hands a discovery Resolver a listing every 10 ms in
which 10 members changed (5 leave, 5 new), applied with LoadBalancer.update_members. The
main thread picks in blocks of 100 and times each block: the p50, p99 and worst block,
and the pick rate, are compared between a quiet phase and a churning phase run in
alternation. The same workload runs in ``benchmarks/run.py`` (``discovery_churn``).
Informational: nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from meshbench.discovery import CHANGES_PER_S, POOL, Churn

BLOCK = 100
MAX_BLOCKS = 5_000_000  # the loop's bound; a phase ends on time long before


def phase(churn: Churn, seconds: float, churning: bool) -> dict[str, float]:
    get = churn.balancer.get_instance
    blocks: list[float] = []
    changes_before = churn.changes
    if churning:
        churn.start()
    start = time.perf_counter()
    try:
        for _ in range(MAX_BLOCKS):
            t0 = time.perf_counter_ns()
            for _ in range(BLOCK):
                get()
            blocks.append((time.perf_counter_ns() - t0) / BLOCK)
            if time.perf_counter() - start >= seconds:
                break
    finally:
        if churning:
            churn.stop()
    elapsed = time.perf_counter() - start
    blocks.sort()
    return {
        "picks_per_s": len(blocks) * BLOCK / elapsed,
        "p50_ns": statistics.median(blocks),
        "p99_ns": blocks[int(0.99 * (len(blocks) - 1))],
        "max_ns": blocks[-1],
        "changes_per_s": (churn.changes - changes_before) / elapsed,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one phase")
    parser.add_argument("--rounds", type=int, default=3, help="quiet/churn alternations")
    parser.add_argument("--strategy", default="ROUND_ROBIN", help="a LoadBalancerStrategy name")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be > 0 and --rounds >= 1")
    churn = Churn(args.strategy)
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for churning in (False, True):
            results[churning].append(phase(churn, args.seconds, churning))
    print(f"{args.strategy}, pool {POOL:,}, target {CHANGES_PER_S:,} changes/s, block {BLOCK}")
    keys = ("picks_per_s", "p50_ns", "p99_ns", "max_ns", "changes_per_s")
    print(f"{'phase':<8}" + "".join(f"{k:>15}" for k in keys))
    medians = {}
    for churning, rows in results.items():
        medians[churning] = {k: statistics.median(r[k] for r in rows) for k in keys}
        name = "churn" if churning else "quiet"
        print(f"{name:<8}" + "".join(f"{medians[churning][k]:>15,.0f}" for k in keys))
    q, c = medians[False], medians[True]
    print(
        f"churn/quiet: picks/s x{c['picks_per_s'] / q['picks_per_s']:.2f}, "
        f"p50 x{c['p50_ns'] / q['p50_ns']:.2f}, p99 x{c['p99_ns'] / q['p99_ns']:.2f}; "
        f"worst batch lateness {churn.lag * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
