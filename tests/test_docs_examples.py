"""Every ``python`` block of docs/resilience.md runs, each in a fresh namespace.

A block is named by the heading above it, so a failure points at the feature
whose documentation went wrong.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "resilience.md"

_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)


def python_blocks(text: str) -> list[tuple[str, str]]:
    """(heading, code) for each fenced python block, in document order."""
    blocks = []
    for match in _FENCE.finditer(text):
        headings = _HEADING.findall(text, 0, match.start())
        blocks.append((headings[-1] if headings else "top", match.group(1)))
    return blocks


BLOCKS = python_blocks(DOC.read_text(encoding="utf-8"))


def test_the_document_has_an_example_per_feature() -> None:
    headings = [heading for heading, _ in BLOCKS]
    for feature in (
        "Failure-rate window",
        "Slow calls",
        "Classification: failure, success or ignored",
        "Result predicate",
        "Open-state backoff",
        "Operator states",
        "State-transition listeners",
        "Jitter modes",
        "Retrying on a result",
        "Retry-After",
        "Retry budgets",
        "Nested retries",
        "Testing switches",
        "Service proxy stages",
        "Fallback",
        "Bulkhead",
        "Hedging",
        "Per-attempt timeout",
        "The AWS backoff simulation",
    ):
        assert feature in headings, feature


@pytest.mark.parametrize(("heading", "code"), BLOCKS, ids=[h for h, _ in BLOCKS])
def test_example_runs(heading: str, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A module of its own, as a script would have (dataclasses look their module up).
    module = types.ModuleType("resilience_docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, f"{DOC.name}: {heading}", "exec"), module.__dict__)
