"""The demo as CI runs it: quick mode on real servers on 127.0.0.1, Ctrl-C, and the HTML report.

The report is opened in headless Chromium (Debian's ``chromium``); that test is
skipped when Chromium is missing, except under CI (``CI`` set), where it fails.
It leaves a screenshot in benchmarks/results/demo-report.png.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx")

from codomyrmex.service_mesh.demo.options import DemoOptions
from codomyrmex.service_mesh.demo.report import write_report
from codomyrmex.service_mesh.demo.runner import DemoResult, run_demo

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "codomyrmex.service_mesh", "demo"]
SCREENSHOT = ROOT / "benchmarks" / "results" / "demo-report.png"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _living_children() -> list[int]:
    """Processes whose parent is this one and that have not exited (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


@pytest.fixture(scope="module")
def quick_run() -> tuple[DemoResult, set[int | None], set[int]]:
    threads_before = {t.ident for t in threading.enumerate()}
    # Children alive before the run (e.g. multiprocessing's resource tracker, left by
    # earlier tests that used spawn) are not the demo's.
    children_before = set(_living_children()) if Path("/proc/self/stat").exists() else set()
    result = run_demo(DemoOptions(requests=300, status_port=0))
    return result, threads_before, children_before


def _check_story(summary: dict[str, Any], requests: int) -> None:
    plain, mesh = summary["runs"]["plain"], summary["runs"]["mesh"]
    loop = summary["runs"]["loop"]
    assert list(summary["runs"]) == ["plain", "loop", "mesh"]
    assert plain["requests"] == loop["requests"] == mesh["requests"] == requests
    # The hand-written loop: at most three tries a request, and it beats no retries at all.
    assert loop["attempts"] <= 3 * requests
    assert loop["retries"] > 0 and loop["success_rate"] > plain["success_rate"]
    assert loop["open_breaker_requests"] is None
    # The settings shown are the configuration's.
    settings = summary["settings"]
    assert settings["source"].endswith("mesh.toml")
    assert settings["sections"]["instance_breaker"]["failure_threshold"] == 3
    assert mesh["success_rate"] > plain["success_rate"]
    assert mesh["dead_backend_requests"] < plain["dead_backend_requests"]
    assert mesh["open_breaker_requests"] == 0
    assert plain["open_breaker_requests"] is None  # no breakers there
    assert plain["retries"] == 0 < mesh["retries"]
    assert summary["servers_stopped"] is True


def test_quick_mode_json(tmp_path: Path) -> None:
    """What CI runs: ``service-mesh demo --requests 300 --json``."""
    done = subprocess.run(
        [*DEMO, "--requests", "300", "--json", "--status-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    _check_story(summary, 300)
    assert [b["name"] for b in summary["backends"]] == [
        "steady",
        "slow",
        "flaky",
        "unstable",
        "late",
    ]
    ports = [b["port"] for b in summary["backends"]]
    status_port = int(summary["status_url"].rsplit(":", 1)[1].split("/")[0])
    assert all(_refused(port) for port in [*ports, status_port])


def test_in_process_run_stops_every_server_and_thread(
    quick_run: tuple[DemoResult, set[int | None], set[int]],
) -> None:
    result, threads_before, children_before = quick_run
    _check_story(result.summary(), 300)
    assert all(_refused(port) for port in result.ports)
    assert result.status_url is not None
    assert _refused(int(result.status_url.rsplit(":", 1)[1].split("/")[0]))
    left = [t for t in threading.enumerate() if t.ident not in threads_before]
    assert left == []
    if Path("/proc/self/stat").exists():
        assert set(_living_children()) - children_before == set()
    # Each run met the faults (the plain client hit dead ports: see _check_story).
    assert {label for _, label in result.mesh.events} == {"unstable down", "unstable up", "late up"}
    opened = {name for _, name, state in result.mesh.transitions if state == "open"}
    assert "catalog" not in opened  # one bad instance at a time: the service never failed
    assert all(name.startswith("catalog/") for name in opened), opened
    # The dying and the late instance refused some of the mesh's tries. A refused instance
    # then carries a load penalty (LEAST_CONNECTIONS) and outlier detection watches it, so
    # its own breaker need not open (it may): each was met while down, and routed around.
    backends = result.mesh.summary()["backends"]
    for name in ("unstable", "late"):
        assert backends[name]["failures"] >= 1, (name, backends)
    assert backends["unstable"]["attempts"] > backends["unstable"]["failures"]  # used while up


def test_ctrl_c_stops_every_server() -> None:
    status_port = _free_port()
    demo = subprocess.Popen(
        [*DEMO, "--requests", "100000", "--status-port", str(status_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait (bounded) until the demo serves its status and its backends answer.
        ports: list[int] = []
        serving = False
        deadline = time.monotonic() + 60
        while not serving and time.monotonic() < deadline and demo.poll() is None:
            try:
                if not ports:
                    url = f"http://127.0.0.1:{status_port}/status"
                    with urllib.request.urlopen(url, timeout=2) as response:
                        status = json.load(response)
                    ports = [i["port"] for s in status["services"] for i in s["instances"]]
                serving = not all(_refused(port) for port in ports)
            except OSError:
                pass
            if not serving:
                time.sleep(0.1)  # the demo is still starting its servers
        assert serving, "the demo never served its status and backends"
        assert len(ports) == 5

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 130
    finally:
        if demo.poll() is None:
            demo.kill()
        _, err = demo.communicate(timeout=30)
    assert "interrupted" in err
    assert "Traceback" not in err
    assert all(_refused(port) for port in [*ports, status_port])


# -- the HTML report -------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("CI must check the demo report, but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this check")
    return path


PROBE = """<script>
const charts = [...document.querySelectorAll("svg.chart")].map((svg) => {
  const box = svg.getBoundingClientRect();
  const marks = [...svg.querySelectorAll("polyline.series, rect.bar")].map((mark) => {
    const b = mark.getBBox();
    return b.width * b.height > 0 || (b.width > 0 && mark.tagName === "polyline");
  });
  return {id: svg.id, width: box.width, height: box.height,
          marks: marks.length, drawn: marks.filter(Boolean).length};
});
document.title = "PROBE:" + JSON.stringify(charts);
</script>"""


def test_report_renders_in_chromium(
    quick_run: tuple[DemoResult, set[int | None], set[int]], tmp_path: Path
) -> None:
    chromium = _chromium()
    result, _, _ = quick_run
    report = tmp_path / "report.html"
    write_report(result, str(report))
    page = report.read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")

    dumped = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'p1'}",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"<title>PROBE:(.*?)</title>", dumped.stdout, re.S)
    assert match, f"no probe result; chromium said: {dumped.stderr[-2000:]}"
    charts = json.loads(html.unescape(match.group(1)))
    assert [c["id"] for c in charts] == ["chart-success", "chart-latency", "chart-traffic"]
    for chart in charts:
        assert chart["width"] > 100 and chart["height"] > 100, chart
        assert chart["marks"] > 0 and chart["drawn"] == chart["marks"], chart

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'p2'}",
            "--window-size=900,1800",
            f"--screenshot={SCREENSHOT}",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    png = SCREENSHOT.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (900, 1800)


def test_the_demo_runs_from_its_config_file(tmp_path: Path) -> None:
    """``--config`` changes the mesh the demo runs; the summary shows what was used."""
    config = tmp_path / "mesh.toml"
    example = (ROOT / "examples" / "mesh.toml").read_text()
    config.write_text(example.replace("max_retries = 4 ", "max_retries = 1 "))
    done = subprocess.run(
        [*DEMO, "--requests", "100", "--json", "--status-port", "-1", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["settings"]["source"] == str(config)
    assert summary["settings"]["sections"]["retry"]["max_retries"] == 1
    # One retry at most per request: attempts beyond the first stay within the requests.
    assert summary["runs"]["mesh"]["retries"] <= 100


def test_the_report_and_the_live_view_show_the_settings(
    quick_run: tuple[DemoResult, set[int | None], set[int]],
) -> None:
    from rich.console import Console

    from codomyrmex.service_mesh.demo.live import print_summary
    from codomyrmex.service_mesh.demo.report import render_report

    result = quick_run[0]
    page = render_report(result)
    assert "The mesh&#x27;s settings" in page or "The mesh's settings" in page
    assert "instance_breaker: failure_threshold=3" in page
    assert "3-try retry loop" in page
    console = Console(record=True, width=160)
    print_summary(console, result)
    text = console.export_text()
    assert "3-try retry loop" in text and "retry: max_retries=4" in text
    assert "settings from" in text and "mesh.toml" in text


def test_report_is_self_contained(quick_run: tuple[DemoResult, set[int | None], set[int]]) -> None:
    from codomyrmex.service_mesh.demo.report import render_report

    page = render_report(quick_run[0])
    outside = re.findall(r"""(?:src|href)\s*=|<script|@import|url\(|<link""", page, re.I)
    assert outside == []
    addresses = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert addresses <= {"http://www.w3.org/2000/svg"}  # the SVG namespace, never fetched
    assert page.count('<svg class="chart"') == 3
