"""Health probes: how a health checker tells whether one instance is healthy.

A probe checks one instance, blocking (``check``, in a checker's thread, woken
early through a socket when the checker stops) or awaited (``check_async``).
:class:`TcpProbe` opens a TCP connection; :class:`HttpProbe` sends ``GET`` and
reads the status line. Only the standard library is used.
"""

from __future__ import annotations

import asyncio
import errno
import selectors
import socket
import time
from dataclasses import dataclass
from typing import Protocol

from .._validate import check_str
from ._checks import check_positive
from .instance import ServiceInstance

__all__ = ["HttpProbe", "Probe", "Stopped", "TcpProbe"]

_MAX_STATUS_LINE = 8192
_IN_PROGRESS = {
    errno.EINPROGRESS,
    errno.EWOULDBLOCK,
    errno.EAGAIN,
    getattr(errno, "WSAEWOULDBLOCK", errno.EWOULDBLOCK),
}


class Stopped(Exception):
    """The checker was stopped while a probe was waiting."""


class Probe(Protocol):
    """One way to tell whether an instance is healthy, blocking or awaited."""

    def check(self, instance: ServiceInstance, wake: socket.socket | None = None) -> bool:
        """Probe ``instance`` now; ``wake`` becoming readable aborts the probe (raises)."""
        ...

    async def check_async(self, instance: ServiceInstance) -> bool:
        """Probe ``instance`` now, without blocking the event loop."""
        ...


@dataclass(frozen=True, slots=True)
class TcpProbe:
    """Healthy when a TCP connection to the instance's ``host:port`` opens within ``timeout``."""

    timeout: float = 1.0

    def __post_init__(self) -> None:
        check_positive("timeout", self.timeout)

    def check(self, instance: ServiceInstance, wake: socket.socket | None = None) -> bool:
        opened = _open(instance, self.timeout, wake)
        if opened is None:
            return False
        opened[0].close()
        return True

    async def check_async(self, instance: ServiceInstance) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(instance.host, instance.port), self.timeout
            )
        except (OSError, asyncio.TimeoutError):
            return False
        await _close(writer)
        return True


@dataclass(frozen=True, slots=True)
class HttpProbe:
    """Healthy when ``GET path`` answers with a status in ``expected_statuses`` within ``timeout``.

    Only the status line is read; the connection is then closed.
    """

    path: str = "/health"
    expected_statuses: range = range(200, 300)
    timeout: float = 1.0
    host_header: str | None = None
    """The ``Host`` header; the instance's ``host:port`` when None."""

    def __post_init__(self) -> None:
        check_str("path", self.path)
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise ValueError(f"path must start with '/' and hold no spaces, got {self.path!r}")
        statuses = self.expected_statuses
        if not isinstance(statuses, range):
            raise TypeError(f"expected_statuses must be a range, got {statuses!r}")
        if len(statuses) == 0 or statuses[0] < 100 or statuses[-1] > 599:
            raise ValueError(
                f"expected_statuses must be non-empty, within 100-599, got {statuses!r}"
            )
        check_positive("timeout", self.timeout)
        if self.host_header is not None:
            check_str("host_header", self.host_header)

    def request(self, instance: ServiceInstance) -> bytes:
        """The request bytes sent to ``instance``."""
        host = self.host_header or instance.address
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {host}\r\n"
            "User-Agent: codomyrmex-service-mesh-health\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")

    def accepts(self, status_line: bytes) -> bool:
        """Whether an HTTP status line (``b"HTTP/1.1 200 OK"``) means healthy."""
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return False
        return int(parts[1]) in self.expected_statuses

    def check(self, instance: ServiceInstance, wake: socket.socket | None = None) -> bool:
        opened = _open(instance, self.timeout, wake)
        if opened is None:
            return False
        sock, deadline = opened
        try:
            pending = memoryview(self.request(instance))
            while pending:
                if not _wait(sock, selectors.EVENT_WRITE, deadline, wake):
                    return False
                pending = pending[sock.send(pending) :]
            received = b""
            while b"\r\n" not in received and len(received) < _MAX_STATUS_LINE:
                if not _wait(sock, selectors.EVENT_READ, deadline, wake):
                    return False
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
            return self.accepts(received.split(b"\r\n", 1)[0])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False
        finally:
            sock.close()

    async def check_async(self, instance: ServiceInstance) -> bool:
        try:
            return await asyncio.wait_for(self._exchange(instance), self.timeout)
        except (
            OSError,
            asyncio.TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            return False

    async def _exchange(self, instance: ServiceInstance) -> bool:
        reader, writer = await asyncio.open_connection(instance.host, instance.port)
        try:
            writer.write(self.request(instance))
            await writer.drain()
            line = await reader.readuntil(b"\r\n")
            return self.accepts(line)
        finally:
            await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass  # the peer may already have reset the connection


def _wait(sock: socket.socket, event: int, deadline: float, wake: socket.socket | None) -> bool:
    """Wait until ``sock`` is ready for ``event``: False on timeout, raises when woken."""
    remaining = deadline - time.monotonic()
    if remaining <= 0.0:
        return False
    with selectors.DefaultSelector() as selector:
        selector.register(sock, event)
        if wake is not None:
            selector.register(wake, selectors.EVENT_READ)
        ready = selector.select(remaining)
    if wake is not None and any(key.fileobj is wake for key, _ in ready):
        raise Stopped
    return bool(ready)


def _open(
    instance: ServiceInstance, timeout: float, wake: socket.socket | None
) -> tuple[socket.socket, float] | None:
    """A socket connected to ``instance`` and the probe's deadline, or None if it failed."""
    deadline = time.monotonic() + timeout
    try:
        return _connect(instance.host, instance.port, deadline, wake), deadline
    except OSError:
        return None


def _connect(host: str, port: int, deadline: float, wake: socket.socket | None) -> socket.socket:
    """A connected non-blocking socket, or OSError (TimeoutError when out of time).

    (Name resolution itself is not interruptible: give instances IP addresses, or
    names the system resolves quickly.)
    """
    last: OSError = OSError(f"no address for {host!r}")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in _IN_PROGRESS:
                if not _wait(sock, selectors.EVENT_WRITE, deadline, wake):
                    raise TimeoutError(f"connecting to {host}:{port} timed out")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(
                    code, f"connecting to {host}:{port}: {errno.errorcode.get(code, code)}"
                )
            return sock
        except Stopped:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last = exc
    raise last
