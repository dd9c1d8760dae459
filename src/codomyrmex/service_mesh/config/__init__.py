"""Run a mesh from a configuration file, and reload it without losing state.

``Mesh.from_config(source)`` reads a mapping or a TOML, YAML (the ``[yaml]``
extra) or JSON file: shared ``defaults`` plus named ``services`` that override
them, for the breaker, retry (and its budget), balancing, outlier detection,
bulkhead, hedging and resolver of each service. Environment variables override
any setting (``SERVICE_MESH__SERVICES__ORDERS__RETRY__MAX_RETRIES=1``). Every
error names its full path and value, e.g.
``services.orders.retry.max_retries: must be >= 0, got -1``.

``mesh.reload()`` (or :class:`ConfigWatcher` on file changes, or
:func:`reload_on_sighup`) applies a new configuration in place: breaker states,
in-flight counts and ejections are kept; an invalid configuration is refused
whole and the old one stays. :func:`json_schema` is the schema for editors
(``service-mesh config schema``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._apply import ConfigBinding, apply_config, build_proxy
from ._fields import HTTP, INSTANCE_BREAKER, SECTIONS, Field, field_schema
from ._model import (
    ENV_PREFIX,
    ConfigError,
    MeshConfig,
    ServiceSettings,
    load_config,
    parse_config,
    read_source,
)
from .resolvers import Resolution, ResolverKind, register_resolver, resolver_kinds

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = [
    "ENV_PREFIX",
    "ConfigBinding",
    "ConfigError",
    "ConfigWatcher",
    "Field",
    "MeshConfig",
    "Resolution",
    "ResolverKind",
    "ServiceSettings",
    "apply_config",
    "build_proxy",
    "json_schema",
    "load_config",
    "parse_config",
    "read_source",
    "register_resolver",
    "reload_on_sighup",
    "resolver_kinds",
]

logger = logging.getLogger(__name__)


def _object(fields: dict[str, Field], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {name: field_schema(spec) for name, spec in fields.items()},
        "additionalProperties": False,
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a configuration, for editors and CI checks."""
    resolvers = []
    for name, kind in sorted(resolver_kinds().items()):
        schema = _object(dict(kind.fields), kind.description or f"The {name} resolver.")
        schema["properties"] = {"type": {"const": name}, **schema["properties"]}
        schema["required"] = ["type", *kind.required]
        resolvers.append(schema)
    sections = {
        name: _object(fields, f"The {name.replace('_', ' ')} settings.")
        for name, fields in SECTIONS.items()
    }
    service = {
        "type": "object",
        "properties": {**sections, "resolver": {"oneOf": resolvers}},
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/docxology/codomyrmex-service-mesh/config.schema.json",
        "title": "codomyrmex-service-mesh configuration",
        "type": "object",
        "properties": {
            "version": {"const": 1, "description": "The layout's version."},
            "defaults": {**service, "description": "Settings every service shares."},
            "services": {
                "type": "object",
                "description": "Named services; each overrides the defaults key by key.",
                "additionalProperties": {"anyOf": [service, {"type": "null"}]},
            },
            "http": _object(HTTP, "Options of the httpx transports."),
            "instance_breaker": _object(
                INSTANCE_BREAKER, "The httpx transports' breaker per instance."
            ),
        },
        "additionalProperties": False,
    }


class ConfigWatcher:
    """Reload a mesh when its configuration file changes (polled every ``interval`` s).

    :meth:`check` looks once (tests and custom loops call it); :meth:`start` runs it
    on a daemon thread until :meth:`close`. A reload that fails is logged, kept in
    ``last_error``, and the mesh keeps its configuration.
    """

    def __init__(
        self,
        mesh: Mesh,
        path: str | os.PathLike[str] | None = None,
        *,
        interval: float = 1.0,
        on_reload: Callable[[MeshConfig | None, BaseException | None], None] | None = None,
    ) -> None:
        config = mesh.config
        if path is None:
            if config is None or config.source is None:
                raise ValueError("the mesh was not built from a file; pass path")
            path = config.source
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.mesh = mesh
        self.path = os.fspath(path)
        self.interval = interval
        self.on_reload = on_reload
        self.last_error: BaseException | None = None
        self.reloads = 0
        self._seen = self._stamp()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def check(self) -> bool:
        """Reload if the file changed since the last look; True if it reloaded."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            config = self.mesh.reload(self.path)
        except (ConfigError, OSError) as error:
            self.last_error = error
            logger.error(  # noqa: TRY400 - the error is the message, not a bug
                "configuration %s refused, the old one stays:\n%s", self.path, error
            )
            if self.on_reload is not None:
                self.on_reload(None, error)
            return False
        self.last_error = None
        self.reloads += 1
        logger.info("configuration %s reloaded", self.path)
        if self.on_reload is not None:
            self.on_reload(config, None)
        return True

    def start(self) -> ConfigWatcher:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"config-watcher:{self.path}", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # never let the watcher die silently
                logger.exception("configuration watcher of %s failed", self.path)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ConfigWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def reload_on_sighup(
    mesh: Mesh,
    on_reload: Callable[[MeshConfig | None, BaseException | None], None] | None = None,
) -> Callable[[], None]:
    """Reload ``mesh`` from its source on SIGHUP (POSIX; main thread only).

    The reload runs on a thread of its own, not inside the signal handler (which
    may have interrupted code holding a breaker's lock). Returns a function that
    puts the previous handler back.
    """
    if not hasattr(signal, "SIGHUP"):
        raise RuntimeError("SIGHUP does not exist on this platform")

    def reload() -> None:
        try:
            config = mesh.reload()
        except (ConfigError, OSError) as error:
            logger.error(  # noqa: TRY400 - the error is the message, not a bug
                "configuration refused on SIGHUP, the old one stays:\n%s", error
            )
            if on_reload is not None:
                on_reload(None, error)
            return
        logger.info("configuration reloaded on SIGHUP")
        if on_reload is not None:
            on_reload(config, None)

    def handler(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=reload, name="config-sighup", daemon=True).start()

    previous = signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore
