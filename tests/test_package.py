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
    allowed = {"integrations", "demo", "simulation", "verify", "cli"}
    offenders = []
    for path in (ROOT / "src" / "codomyrmex" / "service_mesh").rglob("*.py"):
        relative = path.relative_to(ROOT / "src" / "codomyrmex" / "service_mesh")
        if relative.parts[0] in allowed:
            continue
        if pattern.search(path.read_text()):
            offenders.append(str(relative))
    assert offenders == []


INTEGRATION_EXTRAS = {
    # integration module: (the library it needs, the extra that installs it)
    "httpx": ("httpx", "httpx"),
    "redis": ("redis", "redis"),
    "redis_ratelimit": ("redis", "redis"),
    "prometheus": ("prometheus_client", "prometheus"),
    "otel": ("opentelemetry", "otel"),
    "tracing": ("opentelemetry", "otel"),
    "mcp": ("mcp", "mcp"),
    "yaml": ("yaml", "yaml"),
    "toml": ("tomli", "toml"),
    "dns": ("dns", "dns"),
    "etcd": ("httpx", "etcd"),
    "dashboard": ("starlette", "dashboard"),
    "requests": ("requests", "requests"),
    "aiohttp": ("aiohttp", "aiohttp"),
    "grpc": ("grpc", "grpc"),
}
STDLIB_INTEGRATIONS = {"status_http", "control", "protocol"}
"""Integration modules that need nothing beyond the standard library."""

_BLOCKER = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == {library!r} or name.startswith({library!r} + "."):
            raise ImportError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
try:
    import codomyrmex.service_mesh.integrations.{module}
except ImportError as exc:
    print(exc)
else:
    print("imported")
"""


def test_every_integration_module_is_listed_with_its_extra() -> None:
    folder = ROOT / "src" / "codomyrmex" / "service_mesh" / "integrations"
    modules = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
    modules |= {p.parent.name for p in folder.glob("*/__init__.py")}  # integration packages
    assert modules == set(INTEGRATION_EXTRAS) | STDLIB_INTEGRATIONS


def test_an_integration_without_its_library_names_the_extra_to_install() -> None:
    for module, (library, extra) in INTEGRATION_EXTRAS.items():
        code = _BLOCKER.format(library=library, module=module)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert f"pip install 'codomyrmex-service-mesh[{extra}]'" in out.stdout, (module, out)
        assert extra in pyproject_extras(), extra


def test_the_mcp_integration_names_its_extra_when_pydantic_is_missing() -> None:
    code = _BLOCKER.format(library="pydantic", module="mcp")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'codomyrmex-service-mesh[mcp]'" in out.stdout, out


def pyproject_extras() -> set[str]:
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])
