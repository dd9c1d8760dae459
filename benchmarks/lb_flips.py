#!/usr/bin/env python3
"""What a health flip costs the next pick, by strategy and pool size (issue 15 item 11).

    .venv/bin/python benchmarks/lb_flips.py                 # sizes 10 and 10,000
    .venv/bin/python benchmarks/lb_flips.py --maglev-big    # plus MAGLEV with 1,000,003 slots
    PYTHONPATH=/path/to/other/src .venv/bin/python benchmarks/lb_flips.py   # another tree

One step is ``mark_healthy(x, False); get_instance(key); mark_healthy(x, True);
get_instance(key)``, with x cycling over the instances. For each strategy the
sizes are measured interleaved (small, large, small, large, ...), each sample
lasting at least ``--sample`` seconds, and the median per step is reported with
the ratio large / small: a flip that rebuilds a table shows a ratio near the
size ratio, an O(1) or O(log n) flip a small one. Nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import codomyrmex.service_mesh as sm
from codomyrmex.service_mesh import LoadBalancer, LoadBalancerStrategy, ServiceInstance

KEYED = {LoadBalancerStrategy.RING_HASH, LoadBalancerStrategy.MAGLEV}


def build(strategy: LoadBalancerStrategy, n: int, **options: Any) -> Callable[[int], None]:
    lb = LoadBalancer(strategy, name=f"flips-{strategy.value}-{n}", **options)
    ids = [f"i{k}" for k in range(n)]
    for k, i in enumerate(ids):
        lb.register(ServiceInstance(id=i, host="10.0.0.1", port=8080, weight=1 + k % 4))
    key = "user-42" if strategy in KEYED else None
    lb.get_instance(key=key)  # the first table is built before timing
    mark = lb.mark_healthy
    pick = lb.get_instance

    def steps(count: int) -> None:
        for s in range(count):
            target = ids[s % n]
            mark(target, False)
            pick(key=key)
            mark(target, True)
            pick(key=key)

    return steps


def per_step(steps: Callable[[int], None], sample: float) -> float:
    """Seconds per step over one sample of at least ``sample`` seconds."""
    count = 1
    while True:
        began = time.perf_counter()
        steps(count)
        elapsed = time.perf_counter() - began
        if elapsed >= sample or count >= 1 << 20:
            return elapsed / count
        grown = int(count * sample / elapsed) if elapsed > 0 else count * 2
        count = count * 2 if elapsed < sample / 10 else max(count + 1, grown)


def measure(
    strategy: LoadBalancerStrategy, sizes: list[int], repeats: int, sample: float, **options: Any
) -> list[float]:
    runners = [build(strategy, n, **options) for n in sizes]
    samples: list[list[float]] = [[] for _ in sizes]
    for _ in range(repeats):
        for k, runner in enumerate(runners):  # interleaved: load drifts hit every size alike
            samples[k].append(per_step(runner, sample))
    return [statistics.median(s) for s in samples]


def fmt(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:9.2f} ms"
    return f"{seconds * 1e6:9.2f} us"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample", type=float, default=0.2, help="seconds per sample")
    parser.add_argument("--only", action="append", default=[], help="strategy value(s)")
    parser.add_argument(
        "--maglev-big", action="store_true", help="also MAGLEV with maglev_table_size=1,000,003"
    )
    args = parser.parse_args(argv)
    strategies = [s for s in LoadBalancerStrategy if not args.only or s.value in args.only]
    sizes = [args.small, args.large]
    print(f"codomyrmex.service_mesh from {sm.__file__}")
    print(f"one step = 2 health flips + 2 picks; median of {args.repeats} interleaved samples")
    print(f"{'strategy':<22}{'n=' + str(sizes[0]):>14}{'n=' + str(sizes[1]):>14}{'ratio':>10}")
    rows: list[tuple[str, dict[str, Any]]] = [(s.value, {"strategy": s}) for s in strategies]
    if args.maglev_big:
        rows.append(
            (
                "maglev (1,000,003)",
                {"strategy": LoadBalancerStrategy.MAGLEV, "maglev_table_size": 1_000_003},
            )
        )
    for label, options in rows:
        strategy = options.pop("strategy")
        small, large = measure(strategy, sizes, args.repeats, args.sample, **options)
        print(f"{label:<22}{fmt(small):>14}{fmt(large):>14}{large / small:>9.1f}x")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
