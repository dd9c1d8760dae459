"""A live web dashboard of a mesh, and a mountable JSON status app (the ``[dashboard]`` extra).

Both are ASGI apps built with Starlette, to mount in a FastAPI or Starlette app::

    from codomyrmex.service_mesh.integrations.dashboard import dashboard_app, status_app

    app.mount("/mesh", status_app(mesh, token=os.environ["MESH_TOKEN"]))
    app.mount("/dashboard", dashboard_app(mesh, token=os.environ["MESH_TOKEN"]))

or run on their own over another process's status endpoint::

    service-mesh dashboard --url http://127.0.0.1:8742/status   # binds 127.0.0.1:8743

``status_app(source)`` answers ``GET /`` with the snapshot (``mesh.status()`` plus live
statistics and a timeline, see :mod:`..control`), streams it on ``GET /events`` as
server-sent events whenever it changes, and performs write actions on
``POST /actions`` (force open, reset, set health, set strategy) for requests that
carry the token as ``Authorization: Bearer <token>``. Without a token configured,
every write is refused (403); with a missing or wrong one, 401.

``dashboard_app(source)`` serves the page at ``/`` and the status app under ``/api``.
The page shows, per service and breaker, the breaker's state, the rolling success
rate and request rate, latency percentiles, the instance pool with ejections, and a
timeline of transitions, coloured as Hystrix's dashboard was: green when healthy,
amber when failing a little, red when failing or open. Its write buttons ask for
the token (kept in the tab's session storage only).

``source`` is a :class:`~codomyrmex.service_mesh.Mesh` of this process (a
:class:`~..control.MeshMonitor` is attached for the statistics), or any
:class:`~..control.MeshSource` such as a :class:`~..control.RemoteMesh`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from .._extras import missing_extra

try:
    import anyio
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
except ImportError as exc:
    raise missing_extra(__name__, "dashboard", exc) from exc

from ...mesh import Mesh
from ..control import LocalMesh, MeshMonitor, MeshSource, RemoteError, handle_write

__all__ = ["DEFAULT_PORT", "dashboard_app", "page_html", "serve", "source_for", "status_app"]

DEFAULT_PORT = 8743
"""Where ``service-mesh dashboard`` listens by default (on 127.0.0.1)."""

_MAX_BODY = 65536


def source_for(target: Mesh | MeshSource) -> MeshSource:
    """A mesh of this process gets a :class:`MeshMonitor` (live statistics); a source is kept."""
    if isinstance(target, Mesh):
        return LocalMesh(target, MeshMonitor(target))
    if not callable(getattr(target, "snapshot", None)) or not callable(
        getattr(target, "act", None)
    ):
        raise TypeError(f"source must be a Mesh or have snapshot() and act(), got {target!r}")
    return target


def _check(token: str | None, interval: float) -> None:
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("token must be a non-empty string or None")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
        raise ValueError(f"interval must be a number > 0, got {interval!r}")


async def _read(source: MeshSource) -> dict[str, Any]:
    try:
        snapshot: dict[str, Any] = await anyio.to_thread.run_sync(source.snapshot)
    except RemoteError as exc:
        return {"error": str(exc)}
    return snapshot


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, default=str, separators=(",", ":"))


def status_app(
    source: Mesh | MeshSource, *, token: str | None = None, interval: float = 1.0
) -> Starlette:
    """The JSON status app: ``GET /``, ``GET /events`` (server-sent events), ``POST /actions``.

    ``interval`` is how often, in seconds, ``/events`` reads the source for changes.
    """
    _check(token, interval)
    mesh_source = source_for(source)

    async def snapshot(request: Request) -> Response:
        payload = await _read(mesh_source)
        return JSONResponse(
            json.loads(_dumps(payload)), status_code=502 if "error" in payload else 200
        )

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            last = None
            idle = 0
            while not await request.is_disconnected():
                data = _dumps(await _read(mesh_source))
                if data != last:
                    last, idle = data, 0
                    yield f"event: status\ndata: {data}\n\n"
                else:
                    idle += 1
                    if idle * interval >= 15:  # a comment now and then keeps proxies open
                        idle = 0
                        yield ": idle\n\n"
                await anyio.sleep(interval)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def actions(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_BODY:
                return JSONResponse(
                    {"status": "error", "message": "an action is at most 64 KiB"}, 413
                )
        code, payload = await anyio.to_thread.run_sync(
            handle_write, mesh_source, token, request.headers.get("authorization"), body
        )
        return JSONResponse(payload, status_code=code)

    return Starlette(
        routes=[
            Route("/", snapshot, methods=["GET"]),
            Route("/events", events, methods=["GET"]),
            Route("/actions", actions, methods=["POST"]),
        ]
    )


def page_html(title: str = "service-mesh dashboard") -> str:
    """The dashboard page (self-contained: no script, style or font from elsewhere)."""
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    return page.replace("{{title}}", title.replace("&", "&amp;").replace("<", "&lt;"))


def dashboard_app(
    source: Mesh | MeshSource,
    *,
    token: str | None = None,
    interval: float = 1.0,
    title: str = "service-mesh dashboard",
) -> Starlette:
    """The dashboard: the page at ``/``, the status app (see :func:`status_app`) at ``/api``."""
    _check(token, interval)
    html = page_html(title)

    async def page(request: Request) -> Response:
        return HTMLResponse(
            html,
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": (
                    "default-src 'self'; script-src 'unsafe-inline'; "
                    "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:"
                ),
                "X-Frame-Options": "DENY",
            },
        )

    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Mount("/api", status_app(source, token=token, interval=interval)),
        ]
    )


def serve(
    source: Mesh | MeshSource,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    interval: float = 1.0,
    title: str = "service-mesh dashboard",
    ready: Callable[[str], object] | None = None,
) -> None:
    """Run :func:`dashboard_app` with uvicorn on ``host:port`` (loopback by default); blocks.

    The socket is bound and listening before ``ready(url)`` is called with the page's
    address (``port=0`` picks a free port), so a client may connect at once.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise missing_extra(__name__, "dashboard", exc) from exc
    app = dashboard_app(source, token=token, interval=interval, title=title)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        bound = sock.getsockname()[1]
        if ready is not None:
            shown = f"[{host}]" if family == socket.AF_INET6 else host
            ready(f"http://{shown}:{bound}/")
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
