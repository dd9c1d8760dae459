"""YAML configuration files for :mod:`codomyrmex.service_mesh.config` (the ``[yaml]`` extra)."""

from __future__ import annotations

from typing import Any

try:
    import yaml
except ImportError as exc:
    from ._extras import missing_extra

    raise missing_extra(__name__, "yaml", exc) from exc

__all__ = ["load_yaml"]


def load_yaml(text: str) -> Any:
    """One YAML document as plain Python values (safe loading: no Python objects)."""
    return yaml.safe_load(text)
