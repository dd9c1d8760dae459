"""The demo's backends: small HTTP/1.1 servers on 127.0.0.1, each with its own way of failing.

They run in a child process of their own (one asyncio loop for all five), so
the servers and the clients measured against them do not share an interpreter
lock. :class:`BackendFarm` starts that process and drives it over its stdin and
stdout, one JSON line per command; the child stops every server when told to,
or when its stdin closes (the parent is done or gone).

A backend that is down holds its port with a bound socket that does not listen,
so connections to it are refused (as for a crashed process) and the port is
still its own when it comes back.

This module uses only the standard library and runs as a script in the child.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["BACKENDS", "BackendFarm", "BackendSpec", "RemoteBackend"]


@dataclass(frozen=True)
class BackendSpec:
    """How one backend behaves: its latency, its stalls, its errors, when it is up."""

    name: str
    role: str
    """A few words for the tables: what this backend does wrong."""
    latency: tuple[float, float]
    """Seconds per answer, drawn uniformly from this range."""
    stall_rate: float = 0.0
    """Share of answers that take ``stall_seconds`` instead."""
    stall_seconds: float = 0.0
    error_rate: float = 0.0
    """Share of answers that are a 503 or 502."""
    up_at_start: bool = True
    down_between: tuple[float, float] | None = None
    """Fractions of the request stream during which the backend is down."""
    start_at: float | None = None
    """Fraction of the request stream at which a backend that was down at start comes up."""


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("steady", "healthy", (0.002, 0.008)),
    BackendSpec("slow", "slow, 6% stalls", (0.06, 0.18), 0.06, 1.5),
    BackendSpec("flaky", "30% answer 5xx", (0.002, 0.008), error_rate=0.30),
    BackendSpec("unstable", "dies, returns", (0.002, 0.008), down_between=(0.30, 0.65)),
    BackendSpec("late", "starts late", (0.002, 0.008), up_at_start=False, start_at=0.35),
)
"""The five backends of the default demo."""


# -- the child process: the servers ------------------------------------------------


class _Server:
    """One backend's server in the child process."""

    def __init__(self, spec: BackendSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self.rng = random.Random(f"{seed}:{spec.name}")
        self.up = False
        self._holder: socket.socket | None = _hold_port(0)
        self.port: int = self._holder.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Future[Any]] = set()
        self._pauses: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        if self.up:
            return
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True, backlog=512
        )
        self.up = True

    async def stop(self, *, hold_port: bool = True) -> None:
        """Close the listener and every open connection; keep the port unless told not to."""
        if self.up:
            self.up = False
            server, self._server = self._server, None
            if server is not None:
                server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            for pause in list(self._pauses):
                _wake(pause)
            await asyncio.gather(*self._handlers, return_exceptions=True)
            if server is not None:
                await server.wait_closed()
        if hold_port and self._holder is None:
            self._holder = _hold_port(self.port)
        elif not hold_port and self._holder is not None:
            self._holder.close()
            self._holder = None

    async def reset(self) -> None:
        """Back to the start: the same random draws again, up or down as at start."""
        self.rng = random.Random(f"{self.seed}:{self.spec.name}")
        if self.spec.up_at_start:
            await self.start()
        else:
            await self.stop()

    def _answer(self) -> tuple[int, float]:
        """Status and delay for the next request."""
        spec, rng = self.spec, self.rng
        if spec.stall_rate and rng.random() < spec.stall_rate:
            delay = spec.stall_seconds
        else:
            delay = rng.uniform(*spec.latency)
        if spec.error_rate and rng.random() < spec.error_rate:
            return (503 if rng.random() < 0.7 else 502), delay
        return 200, delay

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless :meth:`stop` wakes the connection up first (nothing is cancelled)."""
        loop = asyncio.get_running_loop()
        pause: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, pause)
        self._pauses.add(pause)
        try:
            await pause
        finally:
            timer.cancel()
            self._pauses.discard(pause)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        self._connections.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                status, delay = self._answer()
                await self._pause(delay)
                if writer.is_closing():
                    break
                body = json.dumps({"backend": self.spec.name, "path": path}).encode()
                reason = {200: "OK", 502: "Bad Gateway", 503: "Service Unavailable"}[status]
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                    + (b"" if method == "HEAD" else body)
                )
                await writer.drain()
                if close:
                    break
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass
        finally:
            self._connections.discard(writer)
            if handler is not None:
                self._handlers.discard(handler)
            writer.transport.abort()


def _wake(pause: asyncio.Future[None]) -> None:
    if not pause.done():
        pause.set_result(None)


def _hold_port(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` that does not listen: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _child(seed: int) -> None:
    """The child process: report the ports, then obey commands until told to quit or orphaned."""
    loop = asyncio.get_running_loop()
    servers = {spec.name: _Server(spec, seed) for spec in BACKENDS}
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent too; it decides

    def reply(message: dict[str, Any]) -> None:
        try:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # the parent is gone; nobody to tell
            pass

    reply({"ports": {name: server.port for name, server in servers.items()}})
    try:
        while True:
            line = await reader.readline()
            if not line:  # the parent closed our stdin: it is done or gone
                break
            command = json.loads(line)
            action = command["cmd"]
            if action == "quit":
                break
            if action == "reset":
                for server in servers.values():
                    await server.reset()
            elif action == "start":
                await servers[command["backend"]].start()
            elif action == "stop":
                await servers[command["backend"]].stop()
            reply({"ok": action})
    finally:
        for server in servers.values():
            await server.stop(hold_port=False)


# -- the parent process: the farm ---------------------------------------------------


class RemoteBackend:
    """The parent's view of one backend: its spec, port, and whether it is up right now.

    ``up`` changes only through the farm's commands, which return once the child
    has acted, so it is exact for the parent.
    """

    __slots__ = ("port", "spec", "up")

    def __init__(self, spec: BackendSpec, port: int) -> None:
        self.spec = spec
        self.port = port
        self.up = False


class BackendFarm:
    """Starts the backends' process and drives it; ``close()`` stops every server.

    Use as a context manager. Commands block until the child has carried them out.
    """

    def __init__(self, seed: int = 0, *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self._process = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._closed = False
        try:
            ports = self._read()["ports"]
        except BaseException:
            self.close()
            raise
        self.backends = [RemoteBackend(spec, ports[spec.name]) for spec in BACKENDS]
        self._by_name = {b.spec.name: b for b in self.backends}

    def __enter__(self) -> BackendFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ports(self) -> list[int]:
        return [b.port for b in self.backends]

    @property
    def pid(self) -> int:
        return self._process.pid

    def by_port(self) -> dict[int, RemoteBackend]:
        return {b.port: b for b in self.backends}

    def _stdin(self) -> IO[str]:
        assert self._process.stdin is not None
        return self._process.stdin

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the demo's backend process ended unexpectedly")
        message: dict[str, Any] = json.loads(line)
        return message

    def _command(self, **command: str) -> None:
        stdin = self._stdin()
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        self._read()

    def reset(self) -> None:
        """Back to the start of the scenario: each backend up or down as at start, reseeded."""
        self._command(cmd="reset")
        for backend in self.backends:
            backend.up = backend.spec.up_at_start

    def start(self, name: str) -> None:
        self._command(cmd="start", backend=name)
        self._by_name[name].up = True

    def stop(self, name: str) -> None:
        self._command(cmd="stop", backend=name)
        self._by_name[name].up = False

    def close(self) -> None:
        """Stop every server and the process; safe to call twice, also mid-command."""
        if self._closed:
            return
        self._closed = True
        for backend in getattr(self, "backends", ()):
            backend.up = False
        process = self._process
        try:
            if process.stdin is not None:
                process.stdin.close()  # EOF: the child stops its servers and exits
        except OSError:
            pass
        try:
            process.wait(self._timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        finally:
            if process.stdout is not None:
                process.stdout.close()


if __name__ == "__main__":
    asyncio.run(_child(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
