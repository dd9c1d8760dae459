"""Every CLI argument is checked before anything runs, and the error names the option typed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from codomyrmex.service_mesh.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "mesh.toml")


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["demo", "--status-port", "99999"],
            "argument --status-port: must be at most 65535, got 99999",
        ),
        (["demo", "--status-port", "-2"], "argument --status-port: must be at least -1, got -2"),
        (
            ["demo", "--status-port", "http"],
            "argument --status-port: must be a whole number, got 'http'",
        ),
        (["demo", "--requests", "abc"], "argument --requests: must be a whole number, got 'abc'"),
        (["demo", "--requests", "0"], "argument --requests: must be at least 1, got 0"),
        (
            ["demo", "--concurrency", "1.5"],
            "argument --concurrency: must be a whole number, got '1.5'",
        ),
        (["demo", "--rate", "0"], "argument --rate: must be greater than 0, got 0"),
        (["demo", "--rate", "nan"], "argument --rate: must be a finite number, got 'nan'"),
        (["demo", "--seed", "x"], "argument --seed: must be a whole number, got 'x'"),
        (
            ["demo", "--config", "/no/such/mesh.toml"],
            "argument --config: no such file: '/no/such/mesh.toml'",
        ),
        (["status", "--timeout", "-1"], "argument --timeout: must be greater than 0, got -1"),
        (
            ["simulate", "--servers", "0"],
            "argument --servers: each value must be at least 1, got 0 (in '0')",
        ),
        (
            ["simulate", "--servers", "abc"],
            "argument --servers: each value must be a whole number, got 'abc' (in 'abc')",
        ),
        (
            ["simulate", "--servers", "10,x"],
            "argument --servers: each value must be a whole number, got 'x' (in '10,x')",
        ),
        (["simulate", "--requests", "0"], "argument --requests: must be at least 1, got 0"),
        (["simulate", "--duration", "-5"], "argument --duration: must be greater than 0, got -5"),
        (["simulate", "--duration", "soon"], "argument --duration: must be a number, got 'soon'"),
        (["verify", EXAMPLE, "--requests", "0"], "argument --requests: must be at least 1, got 0"),
        (["verify", EXAMPLE, "--modes", "hang,boom"], "argument --modes: must be fault modes"),
        (
            ["verify", EXAMPLE, "--time-limit", "0"],
            "argument --time-limit: must be greater than 0, got 0",
        ),
        (["verify", "/no/such.toml"], "argument FILE: no such file: '/no/such.toml'"),
        (["config", "check", "/no/such.toml"], "argument FILE: no such file: '/no/such.toml'"),
    ],
)
def test_a_bad_value_is_refused_naming_the_option(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in refused(argv, capsys)


def test_a_report_into_a_missing_directory_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing" / "report.html"
    line = refused(["demo", "--report", str(target)], capsys)
    assert line.endswith(
        f"argument --report: directory '{tmp_path / 'missing'}' does not exist (for '{target}')"
    )
    line = refused(["demo", "--report", str(tmp_path)], capsys)
    assert "argument --report: is a directory" in line
    line = refused(["simulate", "--out", str(target)], capsys)
    assert "argument --out: directory" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_report_into_a_read_only_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        line = refused(["demo", "--report", str(folder / "r.html")], capsys)
    finally:
        folder.chmod(0o700)
    assert "argument --report: directory" in line and "is not writable" in line


def test_the_demo_refuses_an_invalid_config_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "mesh.toml"
    bad.write_text("[services.catalog.retry]\nmax_retries = -1\n")
    assert main(["demo", "--config", str(bad), "--json"]) == 2
    err = capsys.readouterr().err
    assert "services.catalog.retry.max_retries: must be >= 0, got -1" in err
    other = tmp_path / "other.toml"
    other.write_text("[services.orders]\n")
    assert main(["demo", "--config", str(other), "--json"]) == 2
    assert "services.catalog: missing" in capsys.readouterr().err


# -- config check / schema --------------------------------------------------------------


def test_config_check_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", EXAMPLE]) == 0
    assert capsys.readouterr().out.startswith(f"{EXAMPLE}: ok, 1 service(s): catalog")


def test_config_check_lists_every_error_with_path_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(
        "[services.orders.retry]\nmax_retries = -1\n[services.orders.breaker]\ntimeout = 3\n"
    )
    assert main(["config", "check", str(path), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    assert f"{path}: services.orders.retry.max_retries: must be >= 0, got -1" in result["errors"]
    assert any("services.orders.breaker.timeout: unknown setting" in e for e in result["errors"])
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "2 error(s)" in err and "services.orders.retry.max_retries: must be >= 0" in err


def test_config_check_names_environment_overrides(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_MESH__SERVICES__CATALOG__RETRY__MAX_RETRIES", "2")
    assert main(["config", "check", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert (
        "services.catalog.retry.max_retries set by $SERVICE_MESH__SERVICES__CATALOG__RETRY" in out
    )
    monkeypatch.setenv("SERVICE_MESH__SERVICES__CATALOG__RETRY__MAX_RETRIES", "-1")
    assert main(["config", "check", EXAMPLE]) == 1


def test_config_schema_prints_a_json_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema")
    retry = schema["properties"]["defaults"]["properties"]["retry"]["properties"]
    assert retry["max_retries"]["minimum"] == 0
    out = tmp_path / "schema.json"
    assert main(["config", "schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == schema
