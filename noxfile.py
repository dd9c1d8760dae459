"""Checks against other versions of the dependencies than the pinned ones (not part of CI).

    .venv/bin/nox -s latest     # the newest release of every dependency
    .venv/bin/nox -s minimum    # the minimum versions that pyproject.toml declares

``python3 dev.py test`` runs on the pinned tool chain (requirements/constraints.txt);
these sessions tell early when a new release, or an old one we still claim to
support, breaks something. They are advisory: a failure here is a lead to follow,
not a red build.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["latest", "minimum"]
nox.options.error_on_external_run = False

ROOT = Path(__file__).resolve().parent
EXTRAS = "all,test"
TESTS = ["pytest", "-q", "-p", "no:cacheprovider", "--ignore=tests/test_benchmarks_quick.py"]


def _unpinned(session: nox.Session) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}
    env["PIP_CONSTRAINT"] = ""  # neither the lock file nor a machine-wide cap applies here
    return env


@nox.session
def latest(session: nox.Session) -> None:
    """Install the newest releases that pyproject.toml allows, then run the tests."""
    session.env.update(_unpinned(session))
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", f".[{EXTRAS}]")
    session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=False)
    session.run(*TESTS, *session.posargs)


@nox.session
def minimum(session: nox.Session) -> None:
    """Install the minimum versions pyproject.toml declares (uv resolves them), then test."""
    session.env.update(_unpinned(session))
    session.install("uv==0.13.9")
    lowest = Path(session.create_tmp()) / "minimum.txt"
    session.run(
        "uv", "pip", "compile", str(ROOT / "pyproject.toml"), "--extra", "all", "--extra", "test",
        "--resolution", "lowest-direct", "--no-header", "--quiet", "-o", str(lowest),
    )  # fmt: skip
    session.install("-r", str(lowest))
    session.install("--no-deps", "-e", ".")
    session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=False)
    session.run(*TESTS, *session.posargs)
