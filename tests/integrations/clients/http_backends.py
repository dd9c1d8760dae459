"""Real HTTP backends on 127.0.0.1 for the client integration tests (http.server in a thread).

Import the pieces into a test module (``from http_backends import Backend, backends, ...``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    LoadBalancer,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)

DROP = object()
"""A behaviour's answer meaning: close the connection without a response."""

Answer = Any  # (status, headers, body) or DROP


class Backend:
    """A real HTTP server on 127.0.0.1 in a thread; ``behave(request_info)`` picks each answer."""

    def __init__(self, behave: Callable[[dict[str, Any]], Answer] | None = None) -> None:
        self.behave = behave or (lambda info: (200, {}, b"ok"))
        self.seen: list[dict[str, Any]] = []
        self.release = threading.Event()  # lets handlers that wait on it finish at once
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding") == "chunked":
                    body = _read_chunked(self.rfile)
                info = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": body,
                }
                backend.seen.append(info)
                answer = backend.behave(info)
                if answer is DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, headers, payload = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.alive = True

    @property
    def hits(self) -> int:
        return len(self.seen)

    def instance(self, instance_id: str) -> ServiceInstance:
        return ServiceInstance(instance_id, "127.0.0.1", self.port)

    def kill(self) -> None:
        """Stop serving and close the listening socket: new connections are refused."""
        if self.alive:
            self.alive = False
            self.release.set()
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)


def _read_chunked(rfile: Any) -> bytes:
    chunks = []
    while True:
        size = int(rfile.readline().strip(), 16)
        if size == 0:
            rfile.readline()
            return b"".join(chunks)
        chunks.append(rfile.read(size))
        rfile.readline()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def start(behave: Callable[[dict[str, Any]], Answer] | None = None) -> Backend:
        backend = Backend(behave)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.kill()
    assert all(_refused(b.port) for b in started)


class Recorder:
    """Records every retry wait instead of sleeping."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def make_proxy(
    *instances: ServiceInstance,
    name: str = "orders",
    recorder: Recorder | None = None,
    breaker: CircuitBreakerConfig | None = None,
    **policy: Any,
) -> ServiceProxy:
    balancer = LoadBalancer()
    for instance in instances:
        balancer.register(instance)
    recorder = recorder or Recorder()
    policy.setdefault("max_retries", 2)
    policy.setdefault("initial_delay", 0.01)
    retry = RetryPolicy(sleep=recorder.sleep, async_sleep=recorder.async_sleep, **policy)
    return ServiceProxy(name, balancer, CircuitBreaker(name, breaker), retry)
