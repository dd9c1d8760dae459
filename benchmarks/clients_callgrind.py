#!/usr/bin/env python3
"""The client workloads of ``clients.py`` counted in instructions (callgrind), not time.

Client CPU per request on a shared, noisy machine moves by +-100 µs from one round to
the next, more than the mesh adds; instruction counts do not. Each contender runs in a
process of its own under ``valgrind --tool=callgrind``, collecting only inside the
measured loop (``--toggle-collect`` on ``functools.reduce``, which runs the loop once):
start-up, imports, server start and a warm-up of ``--warmup`` requests are not counted.
The servers (nginx, HAProxy, the gRPC server) are other processes, never counted; so
are the client's system calls (kernel time), which the mesh does not add to.

    .venv/bin/python benchmarks/clients_callgrind.py            # every client
    .venv/bin/python benchmarks/clients_callgrind.py --only client_httpx,client_grpc

Prints, per client, instructions per request of each contender, what each adds to the
plain client, and that converted to microseconds at the plain client's own rate
(``--rate`` instructions per µs; by default measured from a short ``process_time``
run of the plain client: CPU time per request / instructions per request).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients
from meshbench.harness import Settings

HERE = Path(__file__).resolve()


def child(key: str, label: str, n: int, warmup: int) -> None:
    """Run one contender: warm up, then ``n`` requests inside ``functools.reduce``."""
    workload = clients.WORKLOADS[key]()
    contender = next(c for c in workload.contenders if c.label == label)
    runner = contender.build(Settings.make(quick=True, repeats=1))
    run = runner._run  # type: ignore[attr-defined]  # CpuRunner: n requests, CPU ns
    run(warmup)
    cpu = functools.reduce(lambda _, n: run(n), [n], 0)  # collection is on only in here
    runner.close()
    clients.SERVERS.stop()
    print(json.dumps({"cpu_ns": cpu}))


def measure(key: str, label: str, n: int, warmup: int, tmp: Path) -> int:
    """Instructions of ``n`` requests of one contender (a callgrind run)."""
    out = tmp / f"{key}-{label.replace(' ', '_')}.cg"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=functools_reduce",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(HERE),
        "--child",
        key,
        label,
        str(n),
        str(warmup),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{key}/{label} failed: {done.stderr[-2000:]}")
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{key}/{label}: no totals in {out}")


def plain_rate(key: str) -> float:
    """Instructions per µs of the plain client here: from a short process_time run."""
    workload = clients.WORKLOADS[key]()
    plain = next(c for c in workload.contenders if c.label == "plain")
    settings = Settings.make(quick=False, repeats=5)
    runner = plain.build(settings)
    runner.calibrate(settings)
    samples = sorted(runner.sample() for _ in range(5))
    runner.close()
    return samples[len(samples) // 2] / 1000  # µs per request


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=4, metavar=("KEY", "LABEL", "N", "WARMUP"))
    parser.add_argument("--only", default="")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        key, label, n, warmup = args.child
        child(key, label, int(n), int(warmup))
        return 0
    keys = [k.strip() for k in args.only.split(",") if k.strip()] or [
        k for k in clients.WORKLOADS if k != "client_httpx_memory"
    ]
    jobs = [(key, c.label) for key in keys for c in clients.WORKLOADS[key]().contenders]
    with (
        tempfile.TemporaryDirectory(prefix="meshbench-cg-") as tmp,
        ThreadPoolExecutor(args.jobs) as pool,
    ):
        found = pool.map(lambda job: measure(*job, args.requests, args.warmup, Path(tmp)), jobs)
        counts = dict(zip(jobs, found))
    per = {job: count / args.requests for job, count in counts.items()}
    rows = [
        "| client | plain instr/req | plain µs/req | mesh adds | hand-written adds | "
        "HAProxy sidecar adds | mesh / hand-written |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        title = clients.WORKLOADS[key]().title.split(" on ")[0]
        plain = per[(key, "plain")]
        us = plain_rate(key)
        rate = plain / us  # instructions per µs of this client's own work

        def added(label: str, key: str = key, plain: float = plain, rate: float = rate) -> str:
            value = per.get((key, label))
            if value is None:
                return "-"
            return f"{(value - plain) / 1000:+.1f}k instr ≈ {(value - plain) / rate:+.1f} µs"

        mesh = per[(key, "mesh")] - plain
        hand = per[(key, "hand-written")] - plain
        ratio = f"{mesh / hand:.2f}" if hand > 0 else "-"
        rows.append(
            f"| {title} | {plain / 1000:.0f}k | {us:.0f} | {added('mesh')} | "
            f"{added('hand-written')} | {added('haproxy sidecar')} | {ratio} |"
        )
    print(
        f"callgrind, {args.requests} requests per contender after {args.warmup} warm-up; "
        "µs at the plain client's measured instructions per µs"
    )
    print("\n".join(rows))
    if args.json:
        print(json.dumps({f"{k}/{label}": v for (k, label), v in per.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
