"""Results as a text table and, when matplotlib is installed, a PNG plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine import Result
from .model import Scenario

__all__ = ["format_table", "plot"]


def _time(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms"
    return f"{value:.3f}"


def format_table(scenario: Scenario, results: Sequence[Result]) -> str:
    """A fixed-width table of one scenario's results, with its title and reference."""
    unit = scenario.unit
    header = ["policy", "requests", "success", "mean", "p50", "p99", "p99.9"]
    rows = [
        [
            r.policy,
            f"{r.requests:,}",
            f"{100 * r.success_rate:.3f}%",
            _time(r.mean, unit),
            _time(r.p50, unit),
            _time(r.p99, unit),
            _time(r.p999, unit),
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    out = [f"{scenario.name}: {scenario.title}"]
    if scenario.reference:
        out.append(f"  {scenario.reference}")
    if unit != "s":
        out.append(f"  times in {unit}")
    out.append(line(header))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def _label_bars(ax: Any, bars: Any, labels: Sequence[str]) -> None:
    """Write each label above its bar."""
    for bar, label in zip(bars, labels, strict=True):
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )


def plot(runs: Sequence[tuple[Scenario, Sequence[Result]]], path: str | Path) -> str | None:
    """Write a PNG with one panel per scenario; return a note instead if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'codomyrmex-service-mesh[bench]'): no plot"
    figure, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 4.6), squeeze=False)
    for ax, (scenario, results) in zip(axes[0], runs, strict=True):
        names = [r.policy for r in results]
        if scenario.unit == "s":
            values = [r.p99 * 1000 for r in results]
            bars = ax.bar(names, values, color="#4c72b0")
            ax.set_yscale("log")
            ax.set_ylabel("p99 latency (ms, log scale)")
            _label_bars(ax, bars, [f"{100 * r.success_rate:.2f}% ok" for r in results])
        else:
            values = [r.mean for r in results]
            bars = ax.bar(names, values, color="#55a868")
            ax.set_ylabel(f"mean time in system ({scenario.unit})")
            _label_bars(ax, bars, [f"{value:.2f}" for value in values])
            top = max([*values, *(level for _, level in scenario.expected)])
            ax.set_ylim(0, top * 1.18)
            for label, level in scenario.expected:
                ax.axhline(level, linestyle="--", color="#c44e52", linewidth=1)
                ax.annotate(
                    f"{label}: {level:.2f}",
                    (len(names) - 0.5, level),
                    xytext=(-2, 2),
                    textcoords="offset points",
                    ha="right",
                    fontsize=8,
                    color="#c44e52",
                )
        ax.set_title(f"{scenario.name}: {scenario.title}", fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
