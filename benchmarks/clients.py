#!/usr/bin/env python3
"""Client integrations on the real path: plain client vs mesh vs hand-written stack vs sidecar.

Per client (httpx sync and async, requests, aiohttp, gRPC), one request at a time to one
fast server on 127.0.0.1 (nginx started here, or a small asyncio server when nginx is
not installed; a gRPC server in its own process for gRPC), measured as **client CPU
time per request** (``time.process_time``: the servers run in other processes):

- ``plain``: the client alone;
- ``mesh``: the client through this library's integration, defaults (one instance);
- ``hand-written``: tenacity (3 tries, jittered backoff) + pybreaker around the call
  (aiobreaker for async clients), as a team would write it;
- ``requests+Retry``: requests with urllib3's ``Retry`` mounted (requests only);
- ``haproxy sidecar``: the plain client through a local HAProxy in front of nginx
  (only when haproxy is installed; its CPU is in another process, so this row is the
  client's share only).

Interleaved (each repeat samples every contender in turn), reported as ratios to
``plain``. ``python3 benchmarks/clients.py`` prints the added microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from meshbench.harness import (
    BenchSetupError,
    Contender,
    LoopRunner,
    Pair,
    Runner,
    Settings,
    Target,
    Workload,
    WorkloadResult,
    run_workload,
)

cpu_ns = time.process_time_ns
SERVICE = "orders"


# -- servers ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchSetupError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)  # waiting for a server to start, not timing anything
    raise BenchSetupError(f"{what} did not listen on {port}")


class _Servers:
    """The benchmark's servers, started on first use and stopped at exit."""

    def __init__(self) -> None:
        self.http_port: int | None = None
        self.http_kind = ""
        self.haproxy_port: int | None = None
        self.grpc_port: int | None = None
        self.grpc_haproxy_port: int | None = None
        self._processes: list[subprocess.Popen[Any]] = []
        self._closers: list[Callable[[], None]] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="meshbench-clients-"))
        atexit.register(self.stop)

    def _spawn(self, cmd: list[str], port: int, what: str) -> None:
        process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._processes.append(process)
        _wait_port(port, process, what)

    def http(self) -> int:
        if self.http_port is not None:
            return self.http_port
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        port = _free_port()
        if nginx:
            tmp = self._tmp
            conf = tmp / "nginx.conf"
            conf.write_text(
                f"worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\n"
                f"error_log {tmp}/error.log;\nevents {{ worker_connections 1024; }}\n"
                "http {\n  access_log off;\n"
                f"  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n"
                f"  fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n"
                f"  scgi_temp_path {tmp}/scgi;\n  keepalive_requests 1000000;\n"
                f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok'; }} }}\n"
                "}\n"
            )
            self._spawn([nginx, "-p", str(tmp), "-c", str(conf)], port, "nginx")
            self.http_kind = "nginx"
        else:
            from codomyrmex.service_mesh.verify.faults import FaultBackend, FaultSpec

            backend = FaultBackend(FaultSpec())
            self._closers.append(backend.close)
            port = backend.port
            self.http_kind = "asyncio server"
        self.http_port = port
        return port

    def _haproxy(self, upstream: int, h2: bool) -> int | None:
        binary = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
        )
        if binary is None:
            return None
        port = _free_port()
        proto = " proto h2" if h2 else ""
        conf = self._tmp / f"haproxy-{port}.cfg"
        conf.write_text(
            "global\n  maxconn 256\n"
            "defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n"
            "  timeout server 30s\n  option http-keep-alive\n"
            f"frontend front\n  bind 127.0.0.1:{port}{proto}\n  default_backend back\n"
            f"backend back\n  server up 127.0.0.1:{upstream}{proto}\n"
        )
        self._spawn([binary, "-f", str(conf), "-db"], port, "haproxy")
        return port

    def haproxy(self) -> int | None:
        """An HAProxy sidecar in front of nginx (HTTP/1.1), or None without haproxy."""
        if self.haproxy_port is None:
            self.haproxy_port = self._haproxy(self.http(), h2=False)
        return self.haproxy_port

    def grpc_haproxy(self) -> int | None:
        """An HAProxy sidecar in front of the gRPC server (h2 on both sides)."""
        if self.grpc_haproxy_port is None:
            self.grpc_haproxy_port = self._haproxy(self.grpc(), h2=True)
        return self.grpc_haproxy_port

    def grpc(self) -> int:
        if self.grpc_port is not None:
            return self.grpc_port
        port = _free_port()
        code = (
            "import sys, grpc\nfrom concurrent import futures\n"
            "s = grpc.server(futures.ThreadPoolExecutor(max_workers=2))\n"
            "h = {'Unary': grpc.unary_unary_rpc_method_handler(lambda r, c: b'ok')}\n"
            "s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler('bench.Echo', h),))\n"
            f"s.add_insecure_port('127.0.0.1:{port}')\ns.start()\nsys.stdin.read()\ns.stop(None)\n"
        )
        self._spawn([sys.executable, "-c", code], port, "grpc server")
        self.grpc_port = port
        return port

    def stop(self) -> None:
        for process in self._processes:
            if process.stdin is not None:
                process.stdin.close()
            process.terminate()
        for process in self._processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self._processes = []
        for close in self._closers:
            close()
        self._closers = []
        shutil.rmtree(self._tmp, ignore_errors=True)


SERVERS = _Servers()


class CpuRunner(LoopRunner):
    """LoopRunner measured in the process's CPU time (the servers are other processes)."""

    def __init__(self, stmt: str, namespace: dict[str, Any], *, is_async: bool = False) -> None:
        super().__init__(stmt, namespace, is_async=is_async)
        self.closers: list[Callable[[], Any]] = []

    def close(self) -> None:
        for close in self.closers:
            result = close()
            if asyncio.iscoroutine(result):
                self.run_coro(result)
        super().close()

    def _run(self, n: int) -> int:
        it = itertools.repeat(None, n)
        if self._loop is None:
            elapsed: int = self._inner(it, cpu_ns)
        else:
            elapsed = self._loop.run_until_complete(self._inner(it, cpu_ns))
        return max(elapsed, 1)


# -- what each contender builds ----------------------------------------------------------


def _mesh(port: int) -> Any:
    from codomyrmex.service_mesh import LoadBalancer, Mesh, ServiceInstance, ServiceProxy

    mesh = Mesh()
    balancer = LoadBalancer()
    balancer.register(ServiceInstance(f"{SERVICE}-0", "127.0.0.1", port))
    mesh.register_service(ServiceProxy(SERVICE, balancer))
    return mesh


def _hand_sync(call: Callable[..., Any], failure: type[BaseException]) -> Callable[[], Any]:
    import pybreaker
    import tenacity

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=10),
        retry=tenacity.retry_if_exception_type(failure),
        reraise=True,
    )
    return lambda: retrying(breaker.call, call)


def _hand_async(call: Callable[..., Any], failure: type[BaseException]) -> Callable[[], Any]:
    import aiobreaker
    import tenacity

    breaker = aiobreaker.CircuitBreaker(fail_max=5)
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=10),
        retry=tenacity.retry_if_exception_type(failure),
        reraise=True,
    )

    async def hand() -> Any:
        return await retrying(breaker.call_async, call)

    return hand


def _ok(status: int) -> None:
    if status != 200:
        raise BenchSetupError(f"expected 200, got {status}")


def _sidecar_port() -> int:
    port = SERVERS.haproxy()
    if port is None:
        raise BenchSetupError("haproxy is not installed")
    return port


def _httpx_sync(kind: str) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        import httpx

        from codomyrmex.service_mesh.integrations.httpx import MeshTransport

        port = SERVERS.http()
        url = f"http://127.0.0.1:{port}/"
        if kind == "mesh":
            client = httpx.Client(transport=MeshTransport(_mesh(port)))
            url = f"http://{SERVICE}/"
        else:
            client = httpx.Client()
            if kind == "sidecar":
                url = f"http://127.0.0.1:{_sidecar_port()}/"
        get = lambda: client.get(url)  # noqa: E731
        one = _hand_sync(get, httpx.TransportError) if kind == "hand" else get
        _ok(one().status_code)
        runner = CpuRunner("one()", {"one": one})
        runner.closers.append(client.close)
        return runner

    return build


def _httpx_memory(kind: str) -> Callable[[Settings], Runner]:
    """httpx over an in-memory transport: the mesh's own cost, without the network's noise."""

    def build(settings: Settings) -> Runner:
        import httpx

        from codomyrmex.service_mesh.integrations.httpx import MeshTransport

        class Answer(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                return httpx.Response(200, content=b"ok")

        url = "http://127.0.0.1:8080/items/1"
        if kind == "mesh":
            client = httpx.Client(transport=MeshTransport(_mesh(8080), transport=Answer()))
            url = f"http://{SERVICE}/items/1"
        else:
            client = httpx.Client(transport=Answer())
        get = lambda: client.get(url)  # noqa: E731
        one = _hand_sync(get, httpx.TransportError) if kind == "hand" else get
        _ok(one().status_code)
        runner = CpuRunner("one()", {"one": one})
        runner.closers.append(client.close)
        return runner

    return build


def _httpx_async(kind: str) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        import httpx

        from codomyrmex.service_mesh.integrations.httpx import AsyncMeshTransport

        port = SERVERS.http()
        url = f"http://127.0.0.1:{port}/"
        if kind == "mesh":
            client = httpx.AsyncClient(transport=AsyncMeshTransport(_mesh(port)))
            url = f"http://{SERVICE}/"
        else:
            client = httpx.AsyncClient()
            if kind == "sidecar":
                url = f"http://127.0.0.1:{_sidecar_port()}/"

        def get() -> Any:
            return client.get(url)

        one = get if kind != "hand" else _hand_async(get, httpx.TransportError)
        runner = CpuRunner("await one()", {"one": one}, is_async=True)
        _ok(runner.run_coro(one()).status_code)
        runner.closers.append(client.aclose)
        return runner

    return build


def _requests(kind: str) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        from codomyrmex.service_mesh.integrations.requests import MeshAdapter

        port = SERVERS.http()
        url = f"http://127.0.0.1:{port}/"
        session = requests.Session()
        if kind == "mesh":
            session.mount(f"http://{SERVICE}", MeshAdapter(_mesh(port)))
            url = f"http://{SERVICE}/"
        elif kind == "retry":
            retry = Retry(total=3, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504])
            session.mount("http://", HTTPAdapter(max_retries=retry))
        elif kind == "sidecar":
            url = f"http://127.0.0.1:{_sidecar_port()}/"
        get = lambda: session.get(url)  # noqa: E731
        one = _hand_sync(get, requests.ConnectionError) if kind == "hand" else get
        _ok(one().status_code)
        runner = CpuRunner("one()", {"one": one})
        runner.closers.append(session.close)
        return runner

    return build


def _aiohttp(kind: str) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        import aiohttp

        from codomyrmex.service_mesh.integrations.aiohttp import MeshMiddleware

        port = SERVERS.http()
        url = f"http://127.0.0.1:{port}/"
        holder: dict[str, Any] = {}
        middleware: tuple[Any, ...] = ()
        if kind == "mesh":
            middleware = (MeshMiddleware(_mesh(port)),)
            url = f"http://{SERVICE}/"
        elif kind == "sidecar":
            url = f"http://127.0.0.1:{_sidecar_port()}/"

        async def get() -> int:
            async with holder["session"].get(url) as response:
                await response.read()
                return int(response.status)

        one = get if kind != "hand" else _hand_async(get, aiohttp.ClientConnectionError)
        runner = CpuRunner("await one()", {"one": one}, is_async=True)

        async def open_session() -> None:
            holder["session"] = aiohttp.ClientSession(middlewares=middleware)

        runner.run_coro(open_session())
        _ok(runner.run_coro(one()))
        runner.closers.append(lambda: holder["session"].close())
        return runner

    return build


def _grpc_port(kind: str) -> int:
    if kind != "sidecar":
        return SERVERS.grpc()
    port = SERVERS.grpc_haproxy()
    if port is None:
        raise BenchSetupError("haproxy is not installed")
    return port


def _grpc(kind: str) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        import grpc

        from codomyrmex.service_mesh.integrations.grpc import mesh_channel

        port = _grpc_port(kind)
        if kind == "mesh":
            channel = mesh_channel(_mesh(port), SERVICE)
        else:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        call = channel.unary_unary("/bench.Echo/Unary")
        send = lambda: call(b"x", timeout=10)  # noqa: E731
        one = _hand_sync(send, grpc.RpcError) if kind == "hand" else send
        if one() != b"ok":
            raise BenchSetupError("the gRPC server did not answer ok")
        runner = CpuRunner("one()", {"one": one})
        runner.closers.append(channel.close)
        return runner

    return build


def _grpc_aio(kind: str) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        import grpc
        import grpc.aio

        from codomyrmex.service_mesh.integrations.grpc import aio_mesh_channel

        port = _grpc_port(kind)
        holder: dict[str, Any] = {}

        async def open_channel() -> None:
            if kind == "mesh":
                channel: Any = aio_mesh_channel(_mesh(port), SERVICE)
            else:
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            holder["channel"] = channel
            holder["call"] = channel.unary_unary("/bench.Echo/Unary")

        def send() -> Any:
            return holder["call"](b"x", timeout=10)

        one = _hand_async(send, grpc.RpcError) if kind == "hand" else send
        runner = CpuRunner("await one()", {"one": one}, is_async=True)
        runner.run_coro(open_channel())
        if runner.run_coro(one()) != b"ok":
            raise BenchSetupError("the gRPC server did not answer ok")
        runner.closers.append(lambda: holder["channel"].close())
        return runner

    return build


# -- workloads --------------------------------------------------------------------------

MESH_TARGET = Target("<=", 1.0)  # informational: mesh/hand-written at most 1


def _workload(
    key: str,
    title: str,
    build: Callable[[str], Callable[[Settings], Runner]],
    extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> Workload:
    contenders = [
        Contender("plain", "ref", build("plain")),
        Contender("mesh", "ours", build("mesh")),
        Contender("hand-written", "peer", build("hand"), "tenacity + breaker"),
    ]
    contenders += [Contender(label, "peer", build(kind)) for label, kind in extra]
    pairs = [Pair("mesh", "plain"), Pair("hand-written", "plain")]
    pairs += [Pair(label, "plain") for label, _ in extra]
    pairs.append(Pair("mesh", "hand-written", MESH_TARGET))
    return Workload(
        key=key,
        title=title,
        unit="ns/call",
        contenders=contenders,
        pairs=pairs,
        ratio_label="client CPU per request, x / plain",
        description="client CPU per request to one loopback server, one request in flight",
    )


def _sidecar() -> list[tuple[str, str]]:
    has = shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()
    return [("haproxy sidecar", "sidecar")] if has else []


def client_httpx() -> Workload:
    return _workload("client_httpx", "httpx (sync) on the real path", _httpx_sync, _sidecar())


def client_httpx_memory() -> Workload:
    return _workload(
        "client_httpx_memory", "httpx (sync) over an in-memory transport", _httpx_memory
    )


def client_httpx_async() -> Workload:
    return _workload(
        "client_httpx_async", "httpx (async) on the real path", _httpx_async, _sidecar()
    )


def client_requests() -> Workload:
    return _workload(
        "client_requests",
        "requests on the real path",
        _requests,
        [("requests+Retry", "retry"), *_sidecar()],
    )


def client_aiohttp() -> Workload:
    return _workload("client_aiohttp", "aiohttp on the real path", _aiohttp, _sidecar())


def client_grpc() -> Workload:
    return _workload("client_grpc", "gRPC (sync) on the real path", _grpc, _sidecar())


def client_grpc_aio() -> Workload:
    return _workload("client_grpc_aio", "gRPC (aio) on the real path", _grpc_aio, _sidecar())


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "client_httpx": client_httpx,
    "client_httpx_memory": client_httpx_memory,
    "client_httpx_async": client_httpx_async,
    "client_requests": client_requests,
    "client_aiohttp": client_aiohttp,
    "client_grpc": client_grpc,
    "client_grpc_aio": client_grpc_aio,
}


def _added(wr: WorkloadResult, label: str) -> list[float]:
    """Per round: microseconds ``label`` adds to plain's CPU per request (paired samples)."""
    by = {c.label: c for c in wr.contenders}
    plain, other = by.get("plain"), by.get(label)
    if plain is None or other is None or plain.error or other.error:
        return []
    return [(o - p) / 1000 for o, p in zip(other.samples, plain.samples)]


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):+.1f} ({min(values):+.0f}..{max(values):+.0f})"


def added_table(results: list[WorkloadResult]) -> str:
    """Markdown: microseconds each contender adds to the plain client's CPU per request.

    Each cell is the median over rounds of (contender - plain) within one round (the
    samples of a round are taken back to back), with the lowest and highest round in
    brackets; ``mesh/hand`` is the ratio of the medians of the added costs.
    """
    rows = [
        "| client | plain µs/req | mesh adds µs | hand-written adds µs | "
        "HAProxy sidecar adds µs | mesh / hand-written | other |",
        "|---|---|---|---|---|---|---|",
    ]
    for wr in results:
        plain = next((c for c in wr.contenders if c.label == "plain"), None)
        base = "-" if plain is None or plain.median is None else f"{plain.median / 1000:.1f}"
        mesh, hand = _added(wr, "mesh"), _added(wr, "hand-written")
        ratio = "-"
        if mesh and hand and statistics.median(hand) > 0:
            ratio = f"{statistics.median(mesh) / statistics.median(hand):.2f}"
        others = [
            c.label
            for c in wr.contenders
            if c.label not in ("plain", "mesh", "hand-written", "haproxy sidecar")
        ]
        other = ", ".join(f"{label} {_cell(_added(wr, label))}" for label in others) or "-"
        rows.append(
            f"| {wr.title.split(' on ')[0].split(' over ')[0]}"
            f"{' (in-memory)' if 'memory' in wr.key else ''} | {base} | {_cell(mesh)} | "
            f"{_cell(hand)} | {_cell(_added(wr, 'haproxy sidecar'))} | {ratio} | {other} |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="client CPU per request, per client")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated workload keys")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    settings = Settings.make(quick=args.quick, repeats=repeats)
    keys = [k.strip() for k in args.only.split(",") if k.strip()] or list(WORKLOADS)
    results = []
    for key in keys:
        workload = WORKLOADS[key]()
        print(f"- {workload.key}", file=sys.stderr, flush=True)
        results.append(run_workload(workload, settings, lambda m: print(m, file=sys.stderr)))
    print(
        f"server: {SERVERS.http_kind or 'grpc only'}, {repeats} interleaved rounds, "
        "client CPU (process_time) per request; added = median of per-round "
        "(contender - plain), (lowest..highest round)"
    )
    print(added_table(results))
    if args.json:
        print(json.dumps({wr.key: {c.label: c.samples for c in wr.contenders} for wr in results}))
    SERVERS.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main(sys.argv[1:]))
