"""The package as users get it: namespace, public names, no optional imports in the core."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import codomyrmex.service_mesh as mesh

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("httpx", "redis", "rich", "prometheus_client", "opentelemetry", "mcp", "matplotlib")


def test_codomyrmex_is_a_namespace_package() -> None:
    import codomyrmex

    assert getattr(codomyrmex, "__file__", None) is None
    assert not (ROOT / "src" / "codomyrmex" / "__init__.py").exists()


def test_the_spec_names_are_public() -> None:
    spec_names = {
        "CircuitState",
        "LoadBalancerStrategy",
        "CircuitBreakerConfig",
        "CircuitBreaker",
        "ServiceInstance",
        "LoadBalancer",
        "RetryPolicy",
        "ServiceProxy",
        "with_circuit_breaker",
        "with_retry",
        "CircuitOpenError",
        "NoHealthyInstanceError",
        "ServiceMeshError",
    }
    assert spec_names <= set(mesh.__all__)
    for name in mesh.__all__:
        assert getattr(mesh, name) is not None, name


def test_importing_the_core_imports_no_optional_dependency() -> None:
    code = (
        "import sys, codomyrmex.service_mesh\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_optional_dependencies_are_imported_only_in_integration_modules() -> None:
    pattern = re.compile(rf"^\s*(?:import|from)\s+({'|'.join(OPTIONAL)})\b", re.M)
    allowed = {"integrations", "demo", "simulation"}
    offenders = []
    for path in (ROOT / "src" / "codomyrmex" / "service_mesh").rglob("*.py"):
        relative = path.relative_to(ROOT / "src" / "codomyrmex" / "service_mesh")
        if relative.parts[0] in allowed or relative.name == "cli.py":
            continue
        if pattern.search(path.read_text()):
            offenders.append(str(relative))
    assert offenders == []
