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
