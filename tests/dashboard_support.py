"""What the dashboard tests and the screenshot script share: a mesh with some history,
a dashboard served by uvicorn on 127.0.0.1 from a thread, and the system Chromium."""

from __future__ import annotations

import random
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    LoadBalancer,
    LoadBalancerStrategy,
    Mesh,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.integrations.control import LocalMesh, MeshMonitor
from codomyrmex.service_mesh.outlier import OutlierDetectionConfig

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "dashboard-test-token"


class Ticker:
    """A clock that moves only when told (the proxies time attempts with it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def history_mesh() -> tuple[Mesh, LocalMesh]:
    """Three services: orders (one instance failing, then ejected), payments (its breaker
    opened), inventory (healthy); plus a standalone breaker. Calls are real handler runs,
    timed on a virtual clock. Returns the mesh and a source whose monitor saw them."""
    mesh = Mesh()
    no_wait = RetryPolicy(max_retries=1, initial_delay=0.0, jitter=False, sleep=lambda _: None)
    layout = {
        "orders": (LoadBalancerStrategy.ROUND_ROBIN, 3, {"orders-2"}),
        "payments": (LoadBalancerStrategy.LEAST_CONNECTIONS, 2, {"payments-1", "payments-2"}),
        "inventory": (LoadBalancerStrategy.POWER_OF_TWO, 2, set()),
    }
    ticker = Ticker()
    proxies = {}
    for port, (service, (strategy, count, _)) in enumerate(sorted(layout.items()), start=1):
        balancer = LoadBalancer(
            strategy,
            name=service,
            rng=random.Random(port),
            clock=ticker,
            outlier_detection=OutlierDetectionConfig(
                consecutive_failures=3, base_ejection_time=600.0, max_ejection_percent=50.0
            ),
        )
        for n in range(1, count + 1):
            balancer.register(ServiceInstance(f"{service}-{n}", "127.0.0.1", 8000 + 10 * port + n))
        config = CircuitBreakerConfig(failure_threshold=5, timeout_seconds=3600.0)
        proxies[service] = mesh.register_service(
            ServiceProxy(service, balancer, CircuitBreaker(service, config), no_wait, clock=ticker)
        )
    mesh.circuit_breaker("search-index", CircuitBreakerConfig(failure_threshold=3))
    source = LocalMesh(mesh, MeshMonitor(mesh))
    rng = random.Random(7)

    def handler(instance: ServiceInstance, bad: set[str]) -> float:
        # Latency on the proxies' virtual clock: a slow tail on inventory, timeouts on failures.
        ticker.now += rng.lognormvariate(-4.0, 0.6) * (3 if instance.id == "inventory-2" else 1)
        if instance.id in bad:
            ticker.now += 0.25
            raise ConnectionError(f"{instance.id} refused")
        return rng.random()

    for _ in range(40):
        for service, (_, _, bad) in layout.items():
            try:
                proxies[service].call(handler, bad)
            except Exception:
                pass
    mesh.circuit_breaker("search-index").record_failure()
    return mesh, source


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 from a thread; yields its base URL.

    The socket listens before the URL is yielded, so clients may connect at once.
    """
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def screenshot(path: str) -> None:
    """Write a PNG of the dashboard over :func:`history_mesh` (docs/dashboard.png)."""
    from playwright.sync_api import sync_playwright

    from codomyrmex.service_mesh.integrations.dashboard import dashboard_app

    mesh, source = history_mesh()
    mesh.circuit_breaker("search-index").force_open()
    mesh.circuit_breaker("search-index").reset()
    with serve_app(dashboard_app(source, token=TOKEN, interval=0.2)) as url:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"{url}/")
            page.wait_for_selector("#conn.live")
            page.screenshot(path=path, full_page=True)
            browser.close()


if __name__ == "__main__":  # python tests/dashboard_support.py docs/dashboard.png
    import sys

    screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png")
