"""Real dnsmasq and etcd servers for the discovery tests, each on free loopback ports.

A missing binary skips the test, except under CI (``CI`` set, as ``.ci/run`` does),
where it fails: dev.py's SYSTEM_TOOLS installs dnsmasq-base and etcd-server there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

REQUIRED = bool(os.environ.get("CI"))
WAIT = 30.0
"""How long a test waits for a background reaction at most: a safety limit, never a speed check."""


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (under CI this is a failure, not a skip)")
    pytest.skip(reason)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_dns_port() -> int:
    """A port free for both UDP and TCP (dnsmasq listens on both)."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket() as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for dnsmasq")


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class Dnsmasq:
    """dnsmasq answering from a hosts file (reloaded by SIGHUP) and fixed SRV records."""

    def __init__(self, *, ttl: int = 30) -> None:
        binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
        if binary is None:
            unavailable("dnsmasq is not installed (Debian package dnsmasq-base)")
        self.binary = str(binary)
        self.port = free_dns_port()
        self.ttl = ttl
        self.dir = Path(tempfile.mkdtemp(prefix="mesh-dnsmasq-"))
        self.hosts = self.dir / "hosts"
        self.hosts.write_text("")
        self.srv: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    def set_hosts(self, entries: Iterable[tuple[str, str]]) -> None:
        """Rewrite the hosts file (address, name); takes effect on :meth:`reload`."""
        self.hosts.write_text("".join(f"{addr} {name}\n" for addr, name in entries))

    def start(self) -> None:
        cmd = [
            self.binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-negcache",
            "--local=/test/",
            f"--addn-hosts={self.hosts}",
            f"--local-ttl={self.ttl}",
            "--pid-file=",
            "--log-facility=-",
            *(f"--srv-host={srv}" for srv in self.srv),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["--user=root", "--group=root"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_for(self._answers, 10.0) or self.process.poll() is not None:
            err = b""
            if self.process.poll() is not None and self.process.stderr is not None:
                err = self.process.stderr.read()
            self.stop()
            unavailable(f"dnsmasq did not start on port {self.port}: {err.decode()[-300:]}")

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return True  # exited: start() reports it
        query = bytes.fromhex("abcd01000001000000000000") + b"\x05probe\x00\x00\x01\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            try:
                sock.sendto(query, ("127.0.0.1", self.port))
                return bool(sock.recv(512))
            except OSError:
                return False

    def reload(self) -> None:
        """SIGHUP: dnsmasq rereads the hosts file (and clears its cache)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        # dnsmasq handles the signal in its main loop; a query answered afterwards has it.
        wait_for(self._answers, 10.0)

    def stop(self) -> None:
        process, self.process = self.process, None
        _stop(process)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Etcd:
    """A single-member etcd on loopback ports, its data kept across stop and start."""

    def __init__(self) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            unavailable("etcd is not installed (Debian package etcd-server)")
        self.binary = str(binary)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.dir = Path(tempfile.mkdtemp(prefix="mesh-etcd-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            self.binary,
            "--name=mesh-test",
            f"--data-dir={self.dir / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=mesh-test={peer}",
            "--log-level=error",
        ]
        log = open(self.dir / "etcd.log", "ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=log)
        log.close()
        if not wait_for(self._healthy, 30.0):
            self.stop()
            tail = (self.dir / "etcd.log").read_text(errors="replace")[-500:]
            unavailable(f"etcd did not start on port {self.client_port}: {tail}")

    def _healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return True  # exited: start() reports it
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5) as sock:
                body = b'{"key":"cHJvYmU="}'
                sock.sendall(
                    b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                return b" 200 " in sock.recv(256)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        _stop(process, sig)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
