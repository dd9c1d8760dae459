"""Serve a mesh's status as JSON over HTTP (stdlib only), for ``service-mesh status``.

``serve_status(mesh, host, port)`` answers ``GET /status`` with ``mesh.status()``
from a daemon thread until closed; the demo serves its mesh this way while it runs.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from ..mesh import Mesh

__all__ = ["StatusServer", "serve_status"]


class StatusServer:
    """Serves ``mesh.status()`` as JSON at ``GET /status`` from a daemon thread.

    Use as a context manager, or call :meth:`close`. ``url`` is the address to
    give ``service-mesh status --url``.
    """

    def __init__(self, mesh: Mesh, host: str = "127.0.0.1", port: int = 0) -> None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a Mesh, got {mesh!r}")

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if urllib.parse.urlsplit(self.path).path.rstrip("/") not in ("", "/status"):
                    self.send_error(404, "the mesh status is at /status")
                    return
                body = json.dumps(mesh.status()).encode()
                self.send_response(200)
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def serve_status(mesh: Mesh, host: str = "127.0.0.1", port: int = 0) -> StatusServer:
    """Serve ``mesh.status()`` on ``host:port`` (0: any free port) until the server is closed."""
    return StatusServer(mesh, host, port)
