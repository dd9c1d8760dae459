"""TOML configuration files on Python 3.10, through tomli (the ``[toml]`` extra).

Python 3.11 and later read TOML with the standard library's ``tomllib``.
"""

from __future__ import annotations

try:
    import tomli as tomllib
except ImportError as exc:
    from ._extras import missing_extra

    raise missing_extra(__name__, "toml", exc) from exc

__all__ = ["tomllib"]
