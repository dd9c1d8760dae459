"""Fault-mode HTTP backends on 127.0.0.1, each in a process of its own.

One backend answers ``200`` healthy, or fails in one of :data:`MODES`:

- ``hang``: accepts and reads the request, never answers;
- ``refuse``: nothing listens (the port is held, so connections are refused);
- ``reset``: reads the request and resets the connection (no response);
- ``error500``: ``500`` on every other request;
- ``error503``: ``503`` on every request;
- ``slow``: every answer after ``slow_seconds`` (300 ms by default);
- ``flap``: ``flap_seconds`` healthy, then as long answering ``503``, and so on.

:class:`FaultBackend` starts the child (``python -m`` this module), reads the port
it listens on, counts nothing itself (the clients count what they send), and
stops the child when closed or when the parent's end of its stdin closes.

Standard library only: the child is a small asyncio HTTP/1.1 server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO

__all__ = ["HEALTHY", "MODES", "FaultBackend", "FaultSpec"]

HEALTHY = "healthy"
MODES = ("hang", "refuse", "reset", "error500", "error503", "slow", "flap")
"""The ways one instance can fail, in the order the tables list them."""


@dataclass(frozen=True)
class FaultSpec:
    """How one backend behaves."""

    mode: str = HEALTHY
    slow_seconds: float = 0.3
    flap_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.mode != HEALTHY and self.mode not in MODES:
            raise ValueError(f"mode must be {HEALTHY!r} or one of {MODES}, got {self.mode!r}")
        for field in ("slow_seconds", "flap_seconds"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{field} must be a number > 0, got {value!r}")


class FaultBackend:
    """A running backend child process; ``port`` is where it listens (or refuses)."""

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, json.dumps(spec.__dict__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stdout: IO[str] | None = self._process.stdout
        line = stdout.readline() if stdout is not None else ""
        if not line:
            self.close()
            raise RuntimeError(f"the {spec.mode} backend did not start")
        self.port: int = json.loads(line)["port"]

    def close(self) -> None:
        """Stop the child and wait for it."""
        process = self._process
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> FaultBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the child -------------------------------------------------------------------------

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def _status(code: int, reason: str) -> bytes:
    body = reason.encode()
    head = f"HTTP/1.1 {code} {reason}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


_500 = _status(500, "Internal Server Error")
_503 = _status(503, "Service Unavailable")


class _Child:
    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self.served = 0
        self.started = time.monotonic()

    async def answer(self) -> bytes | None:
        """What to send for the next request (None: reset the connection)."""
        mode = self.spec.mode
        self.served += 1
        if mode == "error500":
            return _500 if self.served % 2 == 0 else _OK
        if mode == "error503":
            return _503
        if mode == "slow":
            await asyncio.sleep(self.spec.slow_seconds)
            return _OK
        if mode == "flap":
            phase = int((time.monotonic() - self.started) / self.spec.flap_seconds)
            return _503 if phase % 2 else _OK
        if mode == "reset":
            return None
        return _OK

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if self.spec.mode == "hang":
                    await reader.read()  # until the client gives up and closes
                    return
                reply = await self.answer()
                if reply is None:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


async def _main(spec: FaultSpec) -> None:
    child = _Child(spec)
    holder: socket.socket | None = None
    if spec.mode == "refuse":
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = holder.getsockname()[1]
        server = None
    else:
        server = await asyncio.start_server(child.serve, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    if server is not None:
        server.close()
    if holder is not None:
        holder.close()


if __name__ == "__main__":
    asyncio.run(_main(FaultSpec(**json.loads(sys.argv[1]))))
