"""The benchmark suite's quick mode runs every workload and writes its result files.

Nothing here is about speed (CI machines are noisy): only that each workload ran for
ours and every peer, and that results.json, table.md and ratios.png were written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
NEEDED = (
    "pybreaker",
    "circuitbreaker",
    "purgatory",
    "interlock",
    "pyresilience",
    "aiobreaker",
    "tenacity",
    "backoff",
    "stamina",
    "matplotlib",
)
RUNAWAY_S = 900  # quick mode takes ~10 s on 2 cores; a safety limit for a hung run, no speed check


def _missing() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def _workload_keys() -> list[str]:
    listing = subprocess.run(
        [sys.executable, str(RUN), "--list"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]


def test_quick_run_runs_every_workload_and_writes_results(tmp_path: Path) -> None:
    missing = _missing()
    if missing and not os.environ.get("CI"):
        pytest.skip(
            f"benchmark peers not installed ({', '.join(missing)}); "
            "install the bench extra: pip install -e '.[bench]' (or python3 dev.py bench)"
        )
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=RUNAWAY_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for name in ("results.json", "table.md", "ratios.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["quick"] is True
    for field in ("date", "python", "platform", "cpu", "command"):
        assert data[field], field
    assert [w["key"] for w in data["workloads"]] == _workload_keys()

    errors = [
        f"{w['key']} / {c['label']}: {c['error']}"
        for w in data["workloads"]
        for c in w["contenders"]
        if c["error"]
    ]
    assert not errors, "\n".join(errors)
    for workload in data["workloads"]:
        roles = {c["role"] for c in workload["contenders"]}
        assert "ours" in roles, workload["key"]
        for contender in workload["contenders"]:
            assert len(contender["samples"]) == data["repeats"], contender["label"]
            assert contender["median"] > 0, contender["label"]
        assert all(cmp["ratio"] is not None for cmp in workload["comparisons"]), workload["key"]

    table = (tmp_path / "table.md").read_text()
    assert data["cpu"] in table
    assert "| Workload |" in table
    assert "Targets (informational)" in proc.stdout
