"""The breaker package's shape: old import paths, the leaf state module, the store seam."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import codomyrmex.service_mesh.breaker as breaker_package
from codomyrmex.service_mesh import CircuitBreaker, CircuitBreakerConfig, CircuitState
from codomyrmex.service_mesh.breaker import state as state_module
from codomyrmex.service_mesh.breaker.store import SharedState

OLD_PATHS = {
    "codomyrmex.service_mesh.circuit_breaker": "codomyrmex.service_mesh.breaker",
    "codomyrmex.service_mesh.store": "codomyrmex.service_mesh.breaker.store",
    "codomyrmex.service_mesh.windows": "codomyrmex.service_mesh.breaker.windows",
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_module_paths_re_export_the_same_objects(old: str) -> None:
    module = importlib.import_module(old)
    assert module.__all__
    for name in module.__all__:
        value = getattr(module, name)
        home = importlib.import_module(OLD_PATHS[old])
        if hasattr(home, name):
            assert getattr(home, name) is value, name


def test_old_circuit_breaker_module_keeps_its_state_aliases() -> None:
    import codomyrmex.service_mesh.circuit_breaker as old

    assert [old.CLOSED, old.OPEN, old.HALF_OPEN] == [
        CircuitState.CLOSED,
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
    ]
    assert old.TRANSITIONS is state_module.TRANSITIONS


def test_the_state_module_imports_nothing_of_the_package() -> None:
    # errors, events and stores name CircuitState; importing it must not import the breaker.
    tree = ast.parse(Path(state_module.__file__).read_text(encoding="utf-8"))
    relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    absolute = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
        if "codomyrmex" in (getattr(node, "module", None) or alias.name)
    ]
    assert relative == [] and absolute == []


def test_every_state_has_a_row_in_the_transition_table() -> None:
    assert set(state_module.TRANSITIONS) == set(CircuitState)
    for targets in state_module.TRANSITIONS.values():
        assert state_module.OPERATOR_STATES <= targets  # an operator may always step in


def test_a_store_adopts_and_announces_through_the_public_seam() -> None:
    seen: list[tuple[CircuitState, CircuitState]] = []
    breaker = CircuitBreaker("seam", CircuitBreakerConfig(timeout_seconds=5.0))
    breaker.add_listener(lambda old, new: seen.append((old, new)))
    changes = breaker.adopt(SharedState(CircuitState.OPEN, version=1, retry_after=5.0))
    assert changes == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert seen == [], "adopt alone announces nothing"
    breaker.announce(changes)
    assert seen == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert breaker.stored_state is CircuitState.OPEN


def test_the_package_lists_its_modules() -> None:
    doc = breaker_package.__doc__ or ""
    here = Path(breaker_package.__file__).parent
    modules = sorted(p.stem for p in here.glob("*.py") if p.stem != "__init__")
    assert modules, "no modules found"
    for stem in modules:
        assert f":mod:`.{stem}`" in doc, stem
