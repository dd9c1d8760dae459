"""The ``service-mesh`` command: its parser, its subcommand table, and ``status``.

``status`` is tested against a real status server (``serve_status``) on 127.0.0.1.
The demo subcommand itself runs in tests/demo/test_demo.py.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    LoadBalancer,
    Mesh,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.cli import COMMANDS, build_parser, command, main, serve_status


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def mesh() -> Mesh:
    mesh = Mesh()
    balancer = LoadBalancer(name="orders")
    balancer.register(ServiceInstance("orders-1", "10.0.0.1", 8080))
    balancer.register(ServiceInstance("orders-2", "10.0.0.2", 8080, healthy=False))
    breaker = CircuitBreaker("orders", CircuitBreakerConfig(failure_threshold=2))
    breaker.record_failure()
    breaker.record_failure()
    mesh.register_service(ServiceProxy("orders", balancer, breaker))
    return mesh


# -- parser and subcommand table --------------------------------------------------


def test_help_needs_neither_rich_nor_httpx() -> None:
    code = (
        "import sys\n"
        "from codomyrmex.service_mesh.cli import build_parser\n"
        "build_parser().format_help()\n"
        "print(sorted(m for m in ('rich', 'httpx') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: service-mesh {name}")
    assert COMMANDS[name].help.split()[0] in out


def test_top_level_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2  # no subcommand: the help, and a usage error
    out = capsys.readouterr().out
    assert "demo" in out and "status" in out


def test_module_and_console_script_run_the_same_main() -> None:
    module = subprocess.run(
        [sys.executable, "-m", "codomyrmex.service_mesh", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert module.returncode == 0
    assert "usage: service-mesh" in module.stdout
    script = Path(sys.executable).with_name("service-mesh")
    if script.exists():
        installed = subprocess.run(
            [str(script), "--version"], capture_output=True, text=True, timeout=60
        )
        assert installed.returncode == 0
        assert installed.stdout.startswith("service-mesh ")


def test_a_subcommand_is_one_decorated_function(capsys: pytest.CaptureFixture[str]) -> None:
    @command("hello", "Say hello.")
    def hello(parser: argparse.ArgumentParser) -> Any:
        parser.add_argument("--name", default="mesh")

        def run(args: argparse.Namespace) -> int:
            print(f"hello {args.name}")
            return 7

        return run

    try:
        assert "hello" in build_parser().format_help()
        assert main(["hello", "--name", "you"]) == 7
        assert capsys.readouterr().out == "hello you\n"
    finally:
        del COMMANDS["hello"]


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--requests", "0"],
        ["demo", "--concurrency", "-1"],
        ["demo", "--rate", "0"],
        ["demo", "--requests", "many"],
    ],
)
def test_demo_rejects_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


# -- status ----------------------------------------------------------------------


def test_status_prints_the_served_snapshot_as_json(
    mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_status(mesh) as server:
        assert main(["status", "--url", server.url, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads(json.dumps(mesh.status()))
    assert printed["services"] == expected["services"]
    assert printed["services"][0]["healthy_count"] == 1
    # Timing fields move between the two snapshots; the rest is the same.
    stable = ("name", "state", "failure_count", "failure_threshold")
    assert [{k: b[k] for k in stable} for b in printed["breakers"]] == [
        {k: b[k] for k in stable} for b in expected["breakers"]
    ]
    assert printed["breakers"][0]["state"] == "open"
    assert _refused(server.port)


def test_status_prints_tables(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    with serve_status(mesh) as server:
        base_url = f"127.0.0.1:{server.port}"  # no scheme, no path: both filled in
        assert main(["status", "--url", base_url]) == 0
    out = capsys.readouterr().out
    assert "1 services, 1/2 instances healthy, 1 breakers" in out
    for text in ("orders-1", "10.0.0.2:8080", "open", "2/2"):
        assert text in out


def test_status_prints_plain_text_without_rich(
    mesh: Mesh, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich now fails
    monkeypatch.setitem(sys.modules, "rich.console", None)
    with serve_status(mesh) as server:
        assert main(["status", "--url", server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["service", "instance", "address", "healthy", "connections"]
    assert lines[3].split() == ["orders", "orders-2", "10.0.0.2:8080", "no", "0"]
    assert ["orders", "open", "2/2"] == lines[-2].split()[:3]


def test_status_when_nothing_is_served(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["status", "--url", f"http://127.0.0.1:{port}/status"]) == 1
    err = capsys.readouterr().err
    assert "nothing answered" in err and "serve_status" in err
    assert main(["status", "--url", "file:///etc/passwd"]) == 2


def test_status_server_serves_only_the_status(mesh: Mesh) -> None:
    with serve_status(mesh, port=0) as server:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert json.load(response)["total_services"] == 1
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
        assert error.value.code == 404
    server.close()  # closing twice is fine
    with pytest.raises(TypeError, match="mesh"):
        serve_status("not a mesh")  # type: ignore[arg-type]


def test_demo_without_rich_points_at_the_extra_and_at_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("httpx")
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    assert main(["demo", "--status-port", "-1"]) == 2  # refused before any server starts
    err = capsys.readouterr().err
    assert "pip install 'codomyrmex-service-mesh[cli]'" in err and "--json" in err


def test_simulate_runs_the_p2c_case_and_prints_its_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["simulate", "--scenario", "p2c", "--servers", "10", "--requests", "3000", "--seed", "3"]
    )
    assert code == 0
    out = capsys.readouterr().out
    for strategy in ("random", "power_of_two"):
        assert strategy in out


def test_simulate_rejects_an_unknown_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--scenario", "p2c", "--strategy", "no_such_strategy"])
    assert exit_info.value.code == 2
    assert "no_such_strategy" in capsys.readouterr().err
