"""Scenario "overload" (virtual time): an adaptive limit keeps latency and goodput on target
while a backend driven at twice its capacity loses half of it; no limit collapses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from codomyrmex.service_mesh.simulation.overload import (
    OverloadScenario,
    format_overload_table,
    main,
    meets_target,
    plot_overload,
    setups,
    simulate_overload,
)

SETUPS = {setup.name: setup for setup in setups()}
SCENARIO = OverloadScenario(duration=10.0, drop_at=5.0)


def test_the_report_has_the_five_setups() -> None:
    assert list(SETUPS) == ["no limit", "static bulkhead", "AIMD", "Vegas", "Gradient2"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_aimd_meets_the_target_and_adapts_to_the_drop(seed: int) -> None:
    result = simulate_overload(SCENARIO, SETUPS["AIMD"], seed)
    assert result.p99 <= 2 * SCENARIO.service_time  # twice the unloaded latency
    assert result.goodput >= 0.9
    assert result.recovery <= 3.0
    assert meets_target(SCENARIO, result)
    # The limit follows the capacity: above 8 before the drop, below it after.
    before = [lim for end, lim, _, _ in result.series if 2.0 < end <= SCENARIO.drop_at]
    after = [lim for end, lim, _, _ in result.series if end > SCENARIO.drop_at + 1.0]
    assert min(before) >= 8 and max(after) < 8
    assert result.rejected > 0.4 * result.offered  # the excess is shed at once
    assert result.timed_out == 0


def test_a_static_bulkhead_misses_the_latency_target_after_the_drop() -> None:
    result = simulate_overload(SCENARIO, SETUPS["static bulkhead"])
    assert result.p99 > SCENARIO.target_latency
    assert math.isinf(result.recovery) and not meets_target(SCENARIO, result)


def test_without_a_limit_goodput_collapses() -> None:
    scenario = OverloadScenario(duration=4.0, drop_at=2.0, warmup=1.5, timeout=0.5)
    result = simulate_overload(scenario, SETUPS["no limit"])
    assert result.goodput < 0.1 and result.timed_out > 0.9 * result.offered
    assert result.rejected == 0


def test_runs_are_deterministic_and_validated() -> None:
    scenario = OverloadScenario(duration=2.0, drop_at=1.5)
    first = simulate_overload(scenario, SETUPS["Vegas"], seed=3)
    again = simulate_overload(scenario, SETUPS["Vegas"], seed=3)
    assert first == again
    with pytest.raises(ValueError, match="servers"):
        OverloadScenario(servers=7)
    with pytest.raises(ValueError, match="drop_at"):
        OverloadScenario(duration=5.0, drop_at=6.0)
    table = format_overload_table(scenario, [first])
    assert "| Vegas |" in table and "goodput" in table


def test_plot_and_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    scenario = OverloadScenario(duration=2.0, drop_at=1.5)
    result = simulate_overload(scenario, SETUPS["AIMD"])
    out = tmp_path / "overload.png"
    assert plot_overload(scenario, [result], out) is None
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--duration", "3", "--out", str(tmp_path / "all.png")]) == 0
    printed = capsys.readouterr().out
    assert all(f"| {name} |" in printed for name in SETUPS)
