"""``service-mesh verify FILE``: the fault matrix against a configuration, on real servers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

pytest.importorskip("httpx")

from codomyrmex.service_mesh.cli import main
from codomyrmex.service_mesh.config import load_config, parse_config
from codomyrmex.service_mesh.verify.report import (
    CONFIG,
    VerifyOptions,
    config_setup,
    format_report,
    run_verify,
)

ROOT = Path(__file__).resolve().parents[2]

# An unsafe set-up: no retry, one breaker for the whole service that opens after 3
# failed calls, nothing that takes an instance out -- the bad instance's failures reach
# the caller and soon open the service's breaker.
FRAGILE = """
[defaults.retry]
max_retries = 0
initial_delay = 0.0

[defaults.breaker]
failure_threshold = 3
timeout_seconds = 30

[defaults.outlier_detection]
enabled = false

[http]
failure_statuses = [500, 502, 503, 504]

[services.orders]
"""


def test_a_fragile_config_is_flagged_with_the_breaker_as_the_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(FRAGILE)
    code = main(
        ["verify", str(path), "--modes", "error503", "--requests", "40", "--concurrency", "8"]
    )
    out = capsys.readouterr().out
    assert code == 1, out
    assert "plain client" in out and "3-try loop" in out and "config (orders)" in out
    assert "<< worse" in out
    assert "the service breaker opened after 3 failures of one instance" in out


def test_the_report_holds_every_contender_and_the_config_s_own_settings() -> None:
    config = load_config(ROOT / "examples" / "mesh.toml", environ={})
    options = VerifyOptions(
        requests=30, concurrency=8, modes=("refuse",), flavours=("sync", "async")
    )
    report = run_verify(config, "catalog", options)
    contenders = [(c.load.flavour, c.contender) for c in report.cells]
    assert contenders == [
        ("sync", "plain"),
        ("sync", "loop"),
        ("sync", CONFIG),
        ("async", "plain"),
        ("async", "loop"),
        ("async", CONFIG),
    ]
    for cell in report.cells:
        assert len(cell.latencies) == 30
    # The example routes around a refusing instance in both flavours.
    for cell in report.cells:
        if cell.contender == CONFIG:
            assert cell.success_rate >= 0.95, format_report(report)
    summary = json.loads(json.dumps(report.summary()))
    assert summary["service"] == "catalog" and len(summary["cells"]) == 6


def test_the_config_contender_uses_the_configured_transport_options() -> None:
    config = parse_config(
        {
            "http": {"failure_statuses": [503]},
            "instance_breaker": {"failure_threshold": 2},
            "services": {"orders": {"retry": {"max_retries": 1}}},
        },
        environ={},
    )
    setup = config_setup(config, "orders")
    assert setup.transport_options["failure_statuses"] == [503]
    assert setup.transport_options["instance_breaker"].failure_threshold == 2
    with pytest.raises(KeyError, match="no service 'users'"):
        config_setup(config, "users")


def test_the_time_limit_skips_what_it_leaves_out_without_starting_backends() -> None:
    config = parse_config({"services": {"orders": {}}}, environ={})
    ticks = itertools.count(0.0, 100.0)  # every look at the clock is 100 s later
    report = run_verify(
        config,
        "orders",
        VerifyOptions(modes=("hang", "reset"), time_limit=50.0),
        clock=lambda: next(ticks),
    )
    assert report.cells == []
    assert report.skipped == [
        "hang, sync burst",
        "hang, async burst",
        "reset, sync burst",
        "reset, async burst",
    ]
    assert not report.ok
    assert "not run (time limit 50 s)" in format_report(report)


def test_verify_refuses_an_unknown_service_and_an_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(FRAGILE)
    assert main(["verify", str(path), "--service", "users"]) == 2
    assert "--service: no service 'users'" in capsys.readouterr().err
    path.write_text("[services.orders.retry]\nmax_retries = -1\n")
    assert main(["verify", str(path)]) == 2
    assert "services.orders.retry.max_retries: must be >= 0, got -1" in capsys.readouterr().err
