#!/usr/bin/env python3
"""Set up a local virtual environment and run the project's jobs.

    python3 dev.py demo    # install, then run the main job (the service-mesh demo)
    python3 dev.py test    # install, then run the test suite, ruff and mypy
    python3 dev.py bench   # install the peer libraries too, then run the benchmarks
    python3 dev.py lock    # refresh requirements/constraints.txt (the pinned tool chain)

Only the standard library is needed to run this file; everything else goes into
``.venv`` next to it. Extra arguments after the job name are passed on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")

EXTRAS = {
    "demo": "all",
    "test": "all,test,bench",
    "bench": "all,test,bench",
    "lint": "all,test,bench",
    "lock": "",
}
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
"""Every package the jobs install, pinned (made by ``python3 dev.py lock`` with uv)."""
PIP = "pip==26.3"
"""The installer, pinned like the rest."""
UV = "uv==0.13.9"
"""The resolver that writes the constraints file, itself pinned."""


def _run(*cmd: str | os.PathLike[str]) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    # PIP_CONSTRAINT reaches pip's isolated build environments too (the build back end).
    env = {**os.environ, "PIP_CONSTRAINT": str(CONSTRAINTS)}
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, env=env)


def ensure_env(extras: str) -> None:
    """Create .venv once and install the package (editable) with the given extras."""
    if not PY.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        _run(PY, "-m", "pip", "install", "--quiet", PIP)
    if not extras:
        return
    stamp = VENV / f".installed-{extras.replace(',', '-')}"
    newest = max(p.stat().st_mtime for p in (ROOT / "pyproject.toml", CONSTRAINTS))
    if stamp.exists() and stamp.stat().st_mtime >= newest:
        return
    _run(PY, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]")
    stamp.touch()


def lock() -> None:
    """Resolve every extra afresh (for Python 3.10 and newer) into the constraints file."""
    _run(PY, "-m", "pip", "install", "--quiet", UV)
    _run(
        BIN / "uv", "pip", "compile", "pyproject.toml", ROOT / "requirements" / "build.in",
        "--universal",
        "--python-version", "3.10", "--extra", "all", "--extra", "test", "--extra", "bench",
        "--no-header", "--quiet", "-o", CONSTRAINTS,
    )  # fmt: skip


SYSTEM_TOOLS = {
    "redis-server": "redis-server",
    "chromium": "chromium",
    "dnsmasq": "dnsmasq-base",
    "etcd": "etcd-server",
    "nginx": "nginx-light",
    "haproxy": "haproxy",
}
"""Programs some tests and benchmarks need (a private Redis server, headless Chromium, a DNS
server and etcd for discovery, nginx and HAProxy for the client benchmarks), by Debian package."""


def ensure_system_tools() -> None:
    """Install the test suite's system programs with apt-get when missing and allowed.

    Without them (not root, or not Debian), the tests that need them skip with a
    reason; under CI they fail instead.
    """
    missing = [pkg for tool, pkg in SYSTEM_TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    can_apt = shutil.which("apt-get") is not None and hasattr(os, "geteuid") and os.geteuid() == 0
    if not can_apt:
        print(f"note: {', '.join(missing)} not installed; the tests that need them will skip")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    ensure_env(EXTRAS[job])
    try:
        if job == "demo":
            _run(BIN / "service-mesh", "demo", *rest)
        elif job == "test":
            ensure_system_tools()
            _run(PY, "-m", "pytest", *rest)
            _run(PY, "-m", "ruff", "check", "src", "tests", "benchmarks")
            _run(PY, "-m", "mypy", "src/codomyrmex/service_mesh", "tests/typing")
        elif job == "lint":
            _run(PY, "-m", "ruff", "check", "src", "tests", "benchmarks")
            _run(PY, "-m", "mypy", "src/codomyrmex/service_mesh", "tests/typing")
        elif job == "bench":
            _run(PY, "benchmarks/run.py", *rest)
        elif job == "lock":
            lock()
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
