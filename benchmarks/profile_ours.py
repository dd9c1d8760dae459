#!/usr/bin/env python3
"""Profile our side of a benchmark workload with cProfile: where does a call's time go?

    .venv/bin/python benchmarks/profile_ours.py breaker_open
    .venv/bin/python benchmarks/profile_ours.py lb_scale --match WEIGHTED --n 200000

For each of our contenders in the workload (optionally filtered by --match), the same
timed loop the suite runs is run once under cProfile, and the functions are listed by
own time with ns per call. cProfile adds its own overhead to every Python-level call,
so read the shares and call counts, and take absolute speed from run.py.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from meshbench.harness import LoopRunner, Settings
from run import WORKLOADS


def _where(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename.startswith("<bench"):
        return "the timed loop (statement inlined)"
    if filename == "~":
        return name  # a built-in
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else filename
    return f"{name} ({short}:{line})"


def report(profile: cProfile.Profile, calls: int, top: int) -> None:
    stats = pstats.Stats(profile)
    rows = []
    # pstats keeps its table in an undocumented attribute; stable for decades.
    table = stats.stats  # type: ignore[attr-defined]
    for func, (_cc, ncalls, tottime, cumtime, _callers) in table.items():
        if ncalls >= calls // 100:  # per-call work, not the harness around the loop
            rows.append((tottime, cumtime, ncalls, func))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows) or 1.0
    print(f"  {'own %':>6} {'own ns/call':>12} {'cum ns/call':>12} {'calls/op':>9}  function")
    for tottime, cumtime, ncalls, func in rows[:top]:
        own, cum = tottime / ncalls * 1e9, cumtime / ncalls * 1e9
        print(
            f"  {tottime / total:6.1%} {own:12.1f} {cum:12.1f} {ncalls / calls:9.2f}"
            f"  {_where(func)}"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=list(WORKLOADS))
    parser.add_argument("--match", default="", help="only contenders whose label has this")
    parser.add_argument("--n", type=int, default=100_000, help="calls to profile")
    parser.add_argument("--top", type=int, default=12, help="functions to list")
    parser.add_argument("--all", action="store_true", help="peers too, not only ours")
    args = parser.parse_args(argv)
    settings = Settings.make(quick=True, repeats=1)
    workload = WORKLOADS[args.workload]()
    for contender in workload.contenders:
        if not (args.all or contender.role == "ours") or args.match not in contender.label:
            continue
        runner = contender.build(settings)
        if not isinstance(runner, LoopRunner):
            print(f"{contender.label}: not a loop workload, skipped")
            continue
        runner.n = args.n
        plain = runner.sample()
        profile = cProfile.Profile()
        profile.enable()
        runner.sample()
        profile.disable()
        runner.close()
        print(f"\n== {workload.key} / {contender.label}: {plain:,.1f} ns/call unprofiled")
        report(profile, args.n, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
