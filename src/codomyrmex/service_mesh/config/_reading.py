"""Reading a mesh configuration: its text (TOML, YAML or JSON) and the environment
variables that override it. Standard library only (YAML and TOML on Python 3.10 through
their integrations, imported when such a file is read)."""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ENV_PREFIX",
    "FORMATS",
    "ConfigError",
    "apply_environment",
    "parse_text",
    "read_source",
]

ENV_PREFIX = "SERVICE_MESH__"
"""Environment variables starting with this override settings."""

FORMATS = ("toml", "yaml", "json")


class ConfigError(ValueError):
    """A configuration that cannot be used; ``errors`` lists every problem, path first."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# -- reading ---------------------------------------------------------------------------


def _parse_toml(text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        from ..integrations.toml import tomllib
    return tomllib.loads(text)


def _parse_yaml(text: str) -> Any:
    from ..integrations.yaml import load_yaml

    return load_yaml(text)


def parse_text(text: str, fmt: str, where: str = "<text>") -> dict[str, Any]:
    """Parse configuration text in ``fmt`` (``toml``, ``yaml`` or ``json``)."""
    fmt = fmt.lower().lstrip(".")
    fmt = {"yml": "yaml"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ConfigError([f"{where}: unknown format {fmt!r} (expected toml, yaml or json)"])
    try:
        if fmt == "toml":
            data = _parse_toml(text)
        elif fmt == "yaml":
            data = _parse_yaml(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise
    except Exception as error:  # each parser has its own error type
        raise ConfigError([f"{where}: not valid {fmt.upper()}: {error}"]) from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: must be a table (mapping) at the top, got {data!r}"])
    return data


def read_source(source: Any, *, format: str | None = None) -> tuple[dict[str, Any], str | None]:
    """The raw mapping of ``source`` and the file it came from (None for a mapping).

    ``source`` is a mapping, or the path of a ``.toml``, ``.yaml``/``.yml`` or
    ``.json`` file (``format`` overrides the suffix).
    """
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        fmt = format or os.path.splitext(path)[1]
        if not fmt:
            raise ConfigError([f"{path}: cannot tell the format; name it .toml, .yaml or .json"])
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise ConfigError([f"{path}: cannot read it: {error.strerror or error}"]) from error
        return parse_text(text, fmt, path), path
    raise TypeError(f"source must be a mapping or a file path, got {source!r}")


# -- environment overrides -------------------------------------------------------------


def _norm(key: str) -> str:
    return key.lower().replace("-", "_")


def _env_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_environment(
    data: dict[str, Any], environ: Mapping[str, str], prefix: str = ENV_PREFIX
) -> dict[str, str]:
    """Override settings of ``data`` in place; return each overridden path's variable."""
    origins: dict[str, str] = {}
    for name in sorted(environ):
        if not name.upper().startswith(prefix.upper()) or len(name) <= len(prefix):
            continue
        parts = [p for p in name[len(prefix) :].split("__") if p]
        if not parts:
            continue
        node: Any = data
        path: list[str] = []
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                break
            key = next((k for k in node if isinstance(k, str) and _norm(k) == _norm(part)), None)
            if key is None:
                key = part.lower()
            path.append(key)
            if i == len(parts) - 1:
                node[key] = _env_value(environ[name])
                origins[".".join(path)] = name
            else:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
    return origins
