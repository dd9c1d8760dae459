"""The package's shape, checked from its source: the rules issue #13 set.

- no import cycles between modules (imports under ``if TYPE_CHECKING:`` do not count:
  they never run);
- the core never imports the integrations, the demo, the simulation, the verifier or
  the command line, not even lazily: those depend on the library, not the other way;
- an integration reaches the core through public names only: it imports no
  underscored name from the core, and it reads no underscored attribute that the
  core defines and the integrations do not;
- no module is longer than about 600 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "codomyrmex.service_mesh"
ROOT = Path(__file__).resolve().parents[1] / "src" / "codomyrmex" / "service_mesh"
MAX_LINES = 600
# Layers above the core: they may import the core, the core may not import them.
APPLICATION = ("integrations", "demo", "simulation", "verify", "cli", "__main__")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([PACKAGE, *parts])] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, *, lazy: bool) -> Iterator[tuple[str, ast.AST]]:
    """The package modules ``module`` imports: at import time, or (``lazy``) anywhere."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))

    def walk(nodes: list[ast.stmt], top: bool) -> Iterator[tuple[str, ast.AST]]:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # only the type checker runs these
            if isinstance(node, ast.Import) and (top or lazy):
                for alias in node.names:
                    if alias.name in MODULES:
                        yield alias.name, node
            elif isinstance(node, ast.ImportFrom) and (top or lazy):
                target = _resolve(module, node)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in MODULES:
                        yield sub, node
                    elif target in MODULES:
                        yield target, node
            body_top = top and not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    for child in children:
                        if isinstance(child, ast.ExceptHandler):
                            yield from walk(child.body, body_top)
                        elif isinstance(child, ast.stmt):
                            yield from walk([child], body_top)

    yield from walk(tree.body, True)


def _layer(module: str) -> str:
    rest = module[len(PACKAGE) + 1 :] if module != PACKAGE else ""
    return rest.split(".", 1)[0]


def _is_core(module: str) -> bool:
    return module != PACKAGE and _layer(module) not in APPLICATION


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``graph`` closes, as a path back to its start."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return cycles


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_there_is_no_import_cycle() -> None:
    # Function-local imports count: an import moved into a function to dodge a cycle
    # is still a cycle. A package's own __init__ re-exporting its submodules is the
    # usual shape, so an edge from a submodule into its own ancestor package does not
    # count as a way back.
    graph = {
        name: {t for t, _ in _imports(name, lazy=True) if not name.startswith(t + ".")}
        for name in MODULES
    }
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# The one allowed way up, lazily: reading a config file in a format the standard
# library does not parse goes through that format's integration (its own extra).
FILE_FORMATS = {f"{PACKAGE}.integrations.toml", f"{PACKAGE}.integrations.yaml"}


def test_the_core_never_imports_the_layers_above_it() -> None:
    wrong = [
        f"{name} imports {target} (line {getattr(node, 'lineno', '?')})"
        for name in MODULES
        if _is_core(name)
        for target, node in _imports(name, lazy=True)
        if not _is_core(target) and target != PACKAGE
        if not (_layer(name) == "config" and target in FILE_FORMATS)
    ]
    assert not wrong, "\n".join(wrong)


def _integration_modules() -> list[str]:
    return [name for name in MODULES if _layer(name) == "integrations"]


def _defined_in(modules: list[str]) -> set[str]:
    """The names that ``modules`` define: functions, classes, attributes, slots."""
    names: set[str] = set()
    for name in modules:
        for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)  # class attributes and __slots__-style names
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # names listed in __slots__
    return names


def test_integrations_use_only_public_names_of_the_core() -> None:
    integrations = _integration_modules()
    own = _defined_in(integrations)
    core = _defined_in([name for name in MODULES if _is_core(name)])
    wrong: list[str] = []
    for name in _integration_modules():
        path = MODULES[name]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(name, node)
                if target.startswith(PACKAGE) and _is_core(target):
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            wrong.append(f"{path.name}:{node.lineno} imports {alias.name}")
            elif isinstance(node, ast.Attribute):
                attr = node.attr
                if not attr.startswith("_") or attr.startswith("__"):
                    continue
                if attr in own or attr not in core:
                    continue  # the integration's own, or a third-party library's
                base = node.value
                if isinstance(base, ast.Name) and base.id in {"self", "cls"}:
                    continue
                wrong.append(f"{path.name}:{node.lineno} reads {ast.unparse(node)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(MODULES), ids=lambda m: m[len(PACKAGE) + 1 :] or "-")
def test_no_module_is_over_the_size_limit(module: str) -> None:
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (limit {MAX_LINES})"
