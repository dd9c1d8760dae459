"""Results out: the stdout table, results.json, table.md and the ratios.png chart."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .harness import APP_CONTEXT_VARS, Comparison, ContenderResult, Settings, WorkloadResult
from .peers import DISTRIBUTIONS, version_of

REPRODUCE = "python3 dev.py bench"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def source_revision() -> str:
    """The commit measured, marked "+dirty" when src/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def load_average() -> float | None:
    """The 1-minute load average: other work on the machine inflates absolute timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(settings: Settings, argv: list[str]) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([REPRODUCE, *argv]),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "quick": settings.quick,
        "repeats": settings.repeats,
        "revision": source_revision(),
        "load_average_start": load_average(),
        "versions": {dist: version_of(dist) for dist in DISTRIBUTIONS},
    }


# --------------------------------------------------------------------------- formatting


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "error"
    if unit == "calls/s":
        return f"{value / 1e6:,.3f} M/s"
    if unit == "B/breaker":
        return f"{value:,.0f} B"
    return f"{value:,.1f} ns"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.3f}" if ratio < 10 else f"{ratio:,.1f}"


def spread(result: ContenderResult) -> str:
    if result.median is None or len(result.samples) < 2 or not result.median:
        return ""
    return f"{(max(result.samples) - min(result.samples)) / result.median:.0%}"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def text_report(results: Iterable[WorkloadResult], settings: Settings) -> str:
    out: list[str] = []
    for wr in results:
        out.append("")
        out.append(f"== {wr.title}  [{wr.unit}, median of {settings.repeats}, {wr.seconds:.1f}s]")
        if wr.description:
            out.append(f"   {wr.description}")
        rows = [["contender", "median", "spread", "n", "note"]]
        for c in wr.contenders:
            label = f"{c.label} (ref)" if c.role == "ref" else c.label
            note = c.error or c.note
            rows.append([label, fmt_value(c.median, wr.unit), spread(c), f"{c.n:,}", note])
        out.extend(_table(rows))
        if wr.comparisons:
            rows = [[wr.ratio_label, "ratio", "target", "status"]]
            rows.extend(
                [
                    f"{cmp.numerator}  /  {cmp.denominator}",
                    fmt_ratio(cmp.ratio),
                    cmp.target or "",
                    cmp.status,
                ]
                for cmp in wr.comparisons
            )
            out.append("")
            out.extend(_table(rows))
    targeted = [c for wr in results for c in wr.comparisons if c.target]
    passed = sum(c.status == "PASS" for c in targeted)
    missed = [(wr, c) for wr in results for c in wr.comparisons if c.status == "MISS"]
    out.append("")
    out.append(f"Targets (informational): {passed}/{len(targeted)} PASS")
    out.extend(
        f"  MISS {wr.key}: {c.numerator} / {c.denominator} = {fmt_ratio(c.ratio)} "
        f"(target {c.target})"
        for wr, c in missed
    )
    errors = [(wr, c) for wr in results for c in wr.contenders if c.error]
    if errors:
        out.append(f"Errors: {len(errors)} contender(s) could not run")
        out.extend(f"  {wr.key} / {c.label}: {c.error}" for wr, c in errors)
    return "\n".join(out)


# --------------------------------------------------------------------------- files


def write_json(path: Path, info: dict[str, Any], results: list[WorkloadResult]) -> None:
    payload = {
        **info,
        "workloads": [dataclasses.asdict(wr) for wr in results],
    }
    for wr_json, wr in zip(payload["workloads"], results, strict=True):
        for c_json, c in zip(wr_json["contenders"], wr.contenders, strict=True):
            c_json["median"] = c.median
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown(info: dict[str, Any], results: list[WorkloadResult]) -> str:
    """A README-ready section: ratio matrix, load balancer scaling, then every measurement."""
    mode = "quick mode (not for publishing)" if info["quick"] else "full run"
    lines = [
        "### Benchmark results",
        "",
        f"- Command: `{info['command']}` (runs `.venv/bin/python benchmarks/run.py`)",
        f"- Date: {info['date']}; {mode}, median of {info['repeats']} interleaved repeats; "
        f"source revision {info['revision']}",
        f"- Python {info['python']} ({info['implementation']}) on {info['platform']}",
        f"- CPU: {info['cpu']} ({info['cores']} cores); 1-minute load average "
        f"{info['load_average_start']} at start, {info.get('load_average_end')} at end",
        "",
        *(
            [
                "The machine was busy with other work during this run: absolute times are "
                "inflated and noisy; ratios hold better, since every contender was sampled "
                "round-robin through the same period.",
                "",
            ]
            if (info.get("load_average_start") or 0) > 1
            else []
        ),
        "Ratios are ours/peer, each peer in its idiomatic decorated form: below 1 means ours "
        "costs less per call; for throughput (calls/s) and nowhere else, above 1 means ours "
        "is faster. The issue's targets are shown as (target PASS/MISS), for information. "
        "Timed loops run with the garbage collector off, in a context holding "
        f"{len(APP_CONTEXT_VARS)} context variables as a service's would.",
        "",
    ]
    by_peer = [wr for wr in results if wr.ratio_label == "ours/peer" and wr.comparisons]
    peers = list(dict.fromkeys(_peer_key(c) for wr in by_peer for c in wr.comparisons))
    if by_peer:
        lines.append(_md_row(["Workload", "Ours", *peers]))
        lines.append(_md_row(["---", "---", *(["---:"] * len(peers))]))
        for wr in by_peer:
            for mine in dict.fromkeys(c.numerator for c in wr.comparisons):
                cells = {_peer_key(c): _md_ratio(c) for c in wr.comparisons if c.numerator == mine}
                lines.append(_md_row([wr.key, mine, *(cells.get(p, "") for p in peers)]))
        fastest = [
            f"{wr.key}: {c.denominator}"
            for wr in by_peer
            for c in wr.comparisons
            if c.denominator.startswith("fastest")
        ]
        if fastest:
            lines += ["", "Fastest listed peer: " + "; ".join(dict.fromkeys(fastest)) + "."]
    for wr in results:
        if wr.ratio_label != "ours/peer" and wr.comparisons:
            lines += ["", f"{wr.title} ({wr.unit}; ratio = {wr.ratio_label}):", ""]
            lines.append(_md_row(["Compared", wr.ratio_label, "Values"]))
            lines.append(_md_row(["---", "---:", "---"]))
            lines.extend(
                _md_row(
                    [
                        f"{c.numerator} vs {c.denominator}",
                        _md_ratio(c),
                        f"{fmt_value(c.numerator_value, wr.unit)} / "
                        f"{fmt_value(c.denominator_value, wr.unit)}",
                    ]
                )
                for c in wr.comparisons
            )
    lines += [
        "",
        "<details><summary>All measurements (medians)</summary>",
        "",
        _md_row(["Workload", "Contender", "Median", "Spread", "Note"]),
        _md_row(["---", "---", "---:", "---:", "---"]),
    ]
    for wr in results:
        for c in wr.contenders:
            label = f"{c.label} (reference)" if c.role == "ref" else c.label
            lines.append(
                _md_row([wr.key, label, fmt_value(c.median, wr.unit), spread(c), c.error or c.note])
            )
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _peer_key(cmp: Comparison) -> str:
    return "fastest listed peer" if cmp.denominator.startswith("fastest") else cmp.denominator


def _md_ratio(cmp: Comparison) -> str:
    if cmp.ratio is None:
        return "error"
    text = fmt_ratio(cmp.ratio)
    return f"{text} ({cmp.target} {cmp.status})" if cmp.target else text


def write_chart(path: Path, info: dict[str, Any], results: list[WorkloadResult]) -> None:
    """Horizontal bars of the ratios that have a target (all ratios if none has one).

    Log scale; the target is a black tick on its bar. The full set is in table.md.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(wr, c) for wr in results for c in wr.comparisons if c.ratio is not None]
    if any(c.target for _, c in rows):
        rows = [(wr, c) for wr, c in rows if c.target]
    rows.reverse()  # first workload at the top
    height = max(3.0, 0.3 * len(rows) + 1.6)
    fig, ax = plt.subplots(figsize=(11, height))
    colors = {"PASS": "#2e7d32", "MISS": "#c62828", "": "#78909c"}
    for y, (wr, cmp) in enumerate(rows):
        ratio = cmp.ratio or 0.0
        ax.barh(y, ratio, color=colors.get(cmp.status, "#78909c"), height=0.7)
        if cmp.target:
            value = float(cmp.target.split()[-1])
            ax.plot([value, value], [y - 0.45, y + 0.45], color="black", linewidth=1.5)
        ax.text(ratio * 1.05, y, fmt_ratio(ratio), va="center", fontsize=7)
    labels = [
        f"{wr.key}{' (calls/s)' if wr.unit == 'calls/s' else ''}: "
        f"{cmp.numerator} / {cmp.denominator}"
        for wr, cmp in rows
    ]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("ratio (log scale); black tick = target; green = target met, red = missed")
    mode = "QUICK MODE" if info["quick"] else f"median of {info['repeats']}"
    ax.set_title(
        f"codomyrmex.service_mesh vs peers - {mode}\n"
        f"Python {info['python']}, {info['cpu']}, {info['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out: Path, info: dict[str, Any], results: list[WorkloadResult]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "table.md", out / "ratios.png"]
    write_json(written[0], info, results)
    written[1].write_text(markdown(info, results))
    try:
        write_chart(written[2], info, results)
    except ImportError as exc:
        print(f"chart skipped: {exc}", file=sys.stderr)
        written.pop()
    return written
