"""Fault-mode gRPC backends on 127.0.0.1, each a real ``grpc.server`` in a process of its own.

The gRPC mirror of :mod:`codomyrmex.service_mesh.verify.faults` (the HTTP fault
backends). One backend answers ``b"ok"`` to ``/fault.Echo/Unary`` (and three messages
to ``/fault.Echo/Stream``) when healthy, or fails in one of :data:`GRPC_MODES`:

- ``hang``: accepts the call and never answers (until the client gives up);
- ``refuse``: nothing listens (the port is held, so connections are refused);
- ``reset``: a TCP listener that resets every connection (no HTTP/2 at all);
- ``flaky``: ``UNAVAILABLE`` on every other call (HTTP's ``error500``);
- ``unavailable``: ``UNAVAILABLE`` on every call (HTTP's ``error503``);
- ``pushback``: ``RESOURCE_EXHAUSTED`` with ``grpc-retry-pushback-ms: 10`` on every call;
- ``slow``: every answer after ``slow_seconds``;
- ``flap``: ``flap_seconds`` healthy, then as long ``UNAVAILABLE``, and so on.

:class:`GrpcFaultBackend` starts the child (``python`` this file), reads the port it
listens on and stops the child when closed or when the parent's end of its stdin
closes. The child counts nothing; clients count what they get.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import asdict, dataclass
from typing import IO, Any

HEALTHY = "healthy"
GRPC_MODES = ("hang", "refuse", "reset", "flaky", "unavailable", "pushback", "slow", "flap")
UNARY = "/fault.Echo/Unary"
STREAM = "/fault.Echo/Stream"


@dataclass(frozen=True)
class GrpcFaultSpec:
    mode: str = HEALTHY
    slow_seconds: float = 0.3
    flap_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.mode != HEALTHY and self.mode not in GRPC_MODES:
            raise ValueError(f"mode must be {HEALTHY!r} or one of {GRPC_MODES}, got {self.mode!r}")


class GrpcFaultBackend:
    """A running gRPC backend child; ``port`` is where it listens (or refuses)."""

    def __init__(self, spec: GrpcFaultSpec) -> None:
        self.spec = spec
        self._process = subprocess.Popen(
            [sys.executable, __file__, json.dumps(asdict(spec))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stdout: IO[str] | None = self._process.stdout
        line = stdout.readline() if stdout is not None else ""
        if not line:
            self.close()
            raise RuntimeError(f"the {spec.mode} gRPC backend did not start")
        self.port: int = json.loads(line)["port"]

    def close(self) -> None:
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


# -- the child -------------------------------------------------------------------------


class _Behaviour:
    def __init__(self, spec: GrpcFaultSpec) -> None:
        self.spec = spec
        self.served = 0
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def fail(self, context: Any) -> bool:
        """Abort the call when this backend's mode says so; False: answer it."""
        import grpc

        mode = self.spec.mode
        with self.lock:
            self.served += 1
            served = self.served
        if mode == "hang":
            done = threading.Event()
            context.add_callback(done.set)  # the call ended: the client gave up
            done.wait(60)
            return True
        if mode == "slow":
            time.sleep(self.spec.slow_seconds)  # the server's own behaviour, not the test's
            return False
        if mode == "unavailable" or (mode == "flaky" and served % 2 == 0):
            context.abort(grpc.StatusCode.UNAVAILABLE, "unavailable")
        if mode == "pushback":
            context.set_trailing_metadata((("grpc-retry-pushback-ms", "10"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
        if mode == "flap":
            phase = int((time.monotonic() - self.started) / self.spec.flap_seconds)
            if phase % 2:
                context.abort(grpc.StatusCode.UNAVAILABLE, "flapping")
        return False


def _serve_grpc(spec: GrpcFaultSpec) -> tuple[int, Any]:
    import grpc

    behaviour = _Behaviour(spec)

    def unary(request: bytes, context: Any) -> bytes:
        if behaviour.fail(context):
            return b""
        return b"ok"

    def stream(request: bytes, context: Any) -> Any:
        if behaviour.fail(context):
            return
        yield from (b"0", b"1", b"2")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("fault.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return port, lambda: server.stop(None)


def _serve_reset() -> tuple[int, Any]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return listener.getsockname()[1], listener.close


def _main(spec: GrpcFaultSpec) -> None:
    if spec.mode == "refuse":
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port, stop = holder.getsockname()[1], holder.close
    elif spec.mode == "reset":
        port, stop = _serve_reset()
    else:
        port, stop = _serve_grpc(spec)
    print(json.dumps({"port": port}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    stop()


if __name__ == "__main__":
    _main(GrpcFaultSpec(**json.loads(sys.argv[1])))
