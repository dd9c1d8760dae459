"""A real Redis for the tests: ``REDIS_URL``, else a private ``redis-server``, else a skip.

Import the fixtures into a test module (``from redis_server import redis_url, ...``).
With ``SERVICE_MESH_REQUIRE_REDIS=1`` (set by ``.ci/run``) a missing Redis fails
the tests instead of skipping them. Never a mock: these talk to a real server.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")

REQUIRED = os.environ.get("SERVICE_MESH_REQUIRE_REDIS") == "1"

# Worker processes start fresh (no threads or locks inherited from the test process).
SPAWN = multiprocessing.get_context("spawn")


def unavailable(reason: str) -> None:
    """Skip (or, when Redis is required, fail) with ``reason``."""
    if REQUIRED:
        pytest.fail(f"{reason} (SERVICE_MESH_REQUIRE_REDIS=1 makes this a failure)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server`` on one loopback port that a test may stop and restart."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed and REDIS_URL is not set")
        self.binary = str(binary)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="mesh-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    unavailable(f"could not start redis-server on port {self.port}")
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A URL of a reachable Redis for one test module.

    Per module, not per session: a private server is stopped when the module ends, so
    it is never a leftover child process while other modules' tests run.
    """
    url = os.environ.get("REDIS_URL")
    if url:
        client = redis.Redis.from_url(url, socket_timeout=1.0)
        try:
            client.ping()
        except redis.RedisError as exc:
            unavailable(f"REDIS_URL={url} is not reachable: {exc}")
        finally:
            client.close()
        yield url
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server this test owns (to stop and restart it)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def prefix(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.name[:40])
    value = f"test:{name}:{uuid.uuid4().hex[:8]}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{value}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


WAIT = 30.0
"""How long a test waits for a background reaction at most: a safety limit, never a speed check."""


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it is truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)
