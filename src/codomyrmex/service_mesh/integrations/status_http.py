"""Serve a mesh's status as JSON over HTTP (stdlib only), for ``service-mesh status``.

``serve_status(mesh, host, port)`` answers ``GET /status`` with ``mesh.status()``
from a daemon thread until closed; the demo serves its mesh this way while it runs.

With ``monitor=True`` (or a :class:`~.control.MeshMonitor`) the status also carries
live statistics and a timeline (``service-mesh dashboard --url`` shows them). With a
``token``, ``POST /status/actions`` performs write actions (force open, reset, set
health, set strategy; see :mod:`.control`) for requests that present it as
``Authorization: Bearer <token>``; without one, every write is refused.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .._validate import check_instance
from ..mesh import Mesh
from .control import LocalMesh, MeshMonitor, handle_write

__all__ = ["StatusServer", "serve_status"]


class StatusServer:
    """Serves ``mesh.status()`` as JSON at ``GET /status`` from a daemon thread.

    Use as a context manager, or call :meth:`close`. ``url`` is the address to
    give ``service-mesh status --url``.
    """

    def __init__(
        self,
        mesh: Mesh,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        monitor: MeshMonitor | bool = False,
        token: str | None = None,
    ) -> None:
        check_instance("mesh", mesh, Mesh)
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string or None")
        self._own_monitor = monitor is True
        if monitor is True:
            monitor = MeshMonitor(mesh)
        self.monitor: MeshMonitor | None = monitor or None
        source = LocalMesh(mesh, self.monitor)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if urllib.parse.urlsplit(self.path).path.rstrip("/") not in ("", "/status"):
                    self.send_error(404, "the mesh status is at /status")
                    return
                self._reply(200, source.snapshot())

            def do_POST(self) -> None:
                path = urllib.parse.urlsplit(self.path).path.rstrip("/")
                if path not in ("/actions", "/status/actions"):
                    self.send_error(404, "write actions are posted to /status/actions")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 <= length <= 65536:
                    self.send_error(413, "an action is at most 64 KiB")
                    return
                body = self.rfile.read(length)
                code, payload = handle_write(source, token, self.headers.get("Authorization"), body)
                self._reply(code, payload)

            def _reply(self, code: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}/status"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="service-mesh-status",
            daemon=True,
        )
        self._thread.start()

    def __enter__(self) -> StatusServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        if self.monitor is not None and self._own_monitor:
            self.monitor.close()


serve_status = StatusServer
"""``serve_status(mesh, host, port, *, monitor=False, token=None)``: serve ``mesh.status()``
on ``host:port`` (0: any free port) until the server is closed. ``monitor`` adds live
statistics; ``token`` enables write actions (see :class:`StatusServer`)."""
