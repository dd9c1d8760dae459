#!/usr/bin/env python3
"""The core workloads of ``run.py`` counted in instructions (callgrind), one tree against another.

Timings of a 2 µs call move by 10-40% from one round to the next on a shared machine;
instruction counts do not. This runs each of our contenders of the chosen workloads in a
process of its own under ``valgrind --tool=callgrind``, counting only ``--calls`` calls
after a warm-up, once with the source of ``--base`` (a checkout of an older commit) and
once with this tree's, and prints instructions per call of both and the change. The
peers' code is the same in both trees, so a contender's change is the change of its
ratio to any peer.

    git worktree add /tmp/base 8e3a431
    .venv/bin/python benchmarks/core_callgrind.py --base /tmp/base
    .venv/bin/python benchmarks/core_callgrind.py --base /tmp/base --only proxy_call
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve()
TREE = HERE.parent.parent
DEFAULT = (
    "breaker_success,breaker_open,retry_success,retry_failures,proxy_call,"
    "async_breaker_success,async_retry_success,async_proxy_call"
)


def child(benchmarks: str, key: str, label: str, n: int) -> None:
    """Warm up, then ``n`` calls of one contender inside ``functools.reduce``."""
    sys.path.insert(0, benchmarks)
    import run  # the run.py of the tree under test
    from meshbench.harness import Settings

    contender = next(c for c in run.WORKLOADS[key]().contenders if c.label == label)
    runner = contender.build(Settings.make(quick=True, repeats=1))
    loop = runner._run  # type: ignore[attr-defined]  # LoopRunner: n calls
    loop(2000)
    functools.reduce(lambda _, n: loop(n), [n], 0)  # collection is on only in here
    runner.close()


def measure(tree: Path, key: str, label: str, n: int, tmp: Path) -> float:
    """Instructions per call of one contender with ``tree``'s source."""
    out = tmp / f"{abs(hash((str(tree), key, label)))}.cg"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=functools_reduce",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(HERE),
        "--child",
        str(tree / "benchmarks"),
        key,
        label,
        str(n),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(tree / "src")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{key}/{label} in {tree} failed: {done.stderr[-2000:]}")
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1]) / n
    raise RuntimeError(f"{key}/{label}: no totals in {out}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--child", nargs=4, metavar=("BENCHMARKS", "KEY", "LABEL", "N"))
    parser.add_argument("--base", type=Path, help="a checkout of the tree to compare with")
    parser.add_argument("--only", default=DEFAULT, help="comma-separated workloads")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    if args.child:
        benchmarks, key, label, n = args.child
        child(benchmarks, key, label, int(n))
        return 0
    if args.base is None or not (args.base / "src").is_dir():
        parser.error(f"--base must be a checkout with a src/ folder, got {args.base}")
    sys.path.insert(0, str(HERE.parent))
    import run

    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in run.WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}")
    jobs = [
        (key, c.label)
        for key in keys
        for c in run.WORKLOADS[key]().contenders
        if c.label.startswith("ours")
    ]
    trees = [args.base.resolve(), TREE]
    with (
        tempfile.TemporaryDirectory(prefix="meshbench-core-cg-") as tmp,
        ThreadPoolExecutor(args.jobs) as pool,
    ):
        found = {
            (tree, key, label): pool.submit(measure, tree, key, label, args.calls, Path(tmp))
            for key, label in jobs
            for tree in trees
        }
        print("| workload | contender | base instr/call | this tree | change |")
        print("|---|---|---|---|---|")
        for key, label in jobs:
            before, after = (found[(tree, key, label)].result() for tree in trees)
            print(f"| {key} | {label} | {before:,.0f} | {after:,.0f} | {after / before - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
