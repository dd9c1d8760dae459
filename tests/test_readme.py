"""The README's quick start runs as printed, against real servers on 127.0.0.1."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{self.server.server_address[1]} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend) for _ in range(3)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_quick_start_runs_and_picks_a_registered_instance(
    capsys: pytest.CaptureFixture[str], backends: list[http.server.ThreadingHTTPServer]
) -> None:
    text = README.read_text()
    section = text[text.index("## Quick start") : text.index("The API reference is")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    code = "\n".join(blocks)
    # The README's addresses (10.0.0.N:8080) become the real servers on loopback.
    ports = [server.server_address[1] for server in backends]
    for n, port in enumerate(ports, 1):
        code = code.replace(f'host="10.0.0.{n}", port=8080', f'host="127.0.0.1", port={port}')
    assert "10.0.0." not in code, "every address of the quick start is replaced"
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    status, line = out.splitlines()
    assert status == "200"
    assert re.fullmatch(r"GET http://127\.0\.0\.1:(\d+)/orders/42", line), line
    assert int(line.split(":")[2].split("/")[0]) in ports
    assert callable(namespace["call_auth"])
    assert namespace["call_auth"].circuit_breaker.config.failure_threshold == 3  # type: ignore[attr-defined]


def test_every_relative_link_in_the_docs_resolves_inside_the_repository() -> None:
    """README.md and docs/*.md link only to files of this repository (a clone has no more)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    broken = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in link.findall(doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            if not path.is_relative_to(root) or not path.exists():
                broken.append(f"{doc.relative_to(root)} -> {target}")
    assert broken == []


def test_no_document_or_test_points_outside_the_repository() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    outside = "../" + "shared"  # split, so this file does not name it itself
    offenders = [
        str(path.relative_to(root))
        for folder in ("tests", "docs", "src")
        for path in (root / folder).rglob("*")
        if path.suffix in {".py", ".md"} and outside in path.read_text(encoding="utf-8")
    ]
    offenders += ["README.md"] if outside in (root / "README.md").read_text() else []
    assert offenders == []
