"""The README's quick start runs as printed (it makes no network calls)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_quick_start_runs_and_picks_a_registered_instance(
    capsys: object,
) -> None:
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    namespace: dict[str, object] = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert re.fullmatch(r"GET http://10\.0\.0\.[12]:8080/orders/42\n", out), out
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
