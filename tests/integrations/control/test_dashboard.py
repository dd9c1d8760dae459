"""The live dashboard in a real headless Chromium (Debian's, driven by Playwright).

The dashboard is served by uvicorn on 127.0.0.1 from a thread of this process, over a
mesh built here, so the test changes the mesh directly and watches the page follow it
through server-sent events, without a reload. Waits synchronise on what the page
shows; their timeouts are generous safety nets, not performance bounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from codomyrmex.service_mesh import Mesh
from codomyrmex.service_mesh.integrations.control import RemoteMesh
from codomyrmex.service_mesh.integrations.dashboard import dashboard_app, status_app
from codomyrmex.service_mesh.integrations.status_http import serve_status
from dashboard_support import CHROMIUM, TOKEN, history_mesh, serve_app

WAIT_MS = 60_000


def _post(url: str, body: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        payload: dict[str, Any] = json.load(response)
        return payload


# -- the JSON status app, mounted next to an application's own routes ------------------


def test_the_status_app_mounts_next_to_an_apps_routes_and_guards_writes() -> None:
    mesh, source = history_mesh()
    app = Starlette(
        routes=[
            Route("/hello", lambda request: PlainTextResponse("hi")),
            Mount("/mesh", status_app(source, token=TOKEN)),
            Mount("/open-mesh", status_app(source)),
        ]
    )
    with serve_app(app) as base:
        with urllib.request.urlopen(f"{base}/hello", timeout=30) as response:
            assert response.read() == b"hi"
        snapshot = _get(f"{base}/mesh/")
        names = [s["name"] for s in snapshot["services"]]
        assert sorted(names) == ["inventory", "orders", "payments"]
        orders = snapshot["stats"]["services"]["orders"]
        assert orders["requests"] == 43 and orders["failures"] == 3
        assert 0 < orders["success_rate"] < 1
        assert set(orders["latency_ms"]) == {"p50", "p90", "p99"}
        assert any(e["kind"] == "transition" for e in snapshot["timeline"])

        force = {"action": "force_open", "breaker": "orders"}
        assert _post(f"{base}/mesh/actions", force)[0] == 401
        assert _post(f"{base}/mesh/actions", force, "wrong")[0] == 401
        code, refused = _post(f"{base}/open-mesh/actions", force, TOKEN)
        assert code == 403 and "read-only" in refused["message"]
        assert mesh.circuit_breaker("orders").state.value == "closed", "nothing was written"
        bad = {"action": "set_health", "service": "orders", "instance_id": "orders-1"}
        for healthy in (1, "false", None):
            code, payload = _post(f"{base}/mesh/actions", {**bad, "healthy": healthy}, TOKEN)
            assert code == 400 and payload["status"] == "error"
        assert _post(f"{base}/mesh/actions", [1, 2], TOKEN)[0] == 400
        assert _post(f"{base}/mesh/actions", force, TOKEN) == (
            200,
            {"status": "success", "action": "force_open", "breaker": "orders",
             "state": "forced_open"},
        )  # fmt: skip
        assert mesh.circuit_breaker("orders").state.value == "forced_open"

        remote = RemoteMesh(f"{base}/mesh", token=TOKEN)
        assert remote.snapshot()["total_services"] == 3
        done = remote.act({"action": "reset", "breaker": "orders"})
        assert done["status"] == "success"
        assert mesh.circuit_breaker("orders").state.value == "closed"


def test_the_events_stream_sends_the_snapshot_as_server_sent_events() -> None:
    mesh, source = history_mesh()
    with serve_app(status_app(source, interval=0.05)) as base:
        with urllib.request.urlopen(f"{base}/events", timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            first = [response.readline() for _ in range(3)]
            assert first[0] == b"event: status\n"
            assert first[1].startswith(b"data: ")
            assert json.loads(first[1][6:])["total_services"] == 3
            mesh.circuit_breaker("inventory").force_open()
            for _ in range(1000):  # bounded: each event is one snapshot read
                line = response.readline()
                if line.startswith(b"data: "):
                    states = {b["name"]: b["state"] for b in json.loads(line[6:])["breakers"]}
                    if states["inventory"] == "forced_open":
                        break
            else:
                pytest.fail("the change never reached the stream")


# -- the page, in Chromium --------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def _state_of(page: Any, service: str) -> str:
    text: str = page.locator(f'[data-service="{service}"] .state').first.inner_text()
    return text.lower()


def test_the_page_renders_the_mesh(browser: Any) -> None:
    _, source = history_mesh()
    with serve_app(dashboard_app(source, token=TOKEN, interval=0.2)) as base:
        page = browser.new_page()  # under the page's own Content-Security-Policy
        page.goto(f"{base}/")
        page.wait_for_selector('[data-service="orders"]', timeout=WAIT_MS)
        assert page.title() == "service-mesh dashboard"
        cards = page.locator("#services .card[data-service]")
        assert cards.count() == 3
        assert _state_of(page, "orders") == "closed"
        assert _state_of(page, "payments") == "open"
        assert "h-bad" in (page.locator('[data-service="payments"]').get_attribute("class") or "")
        assert "h-ok" in (page.locator('[data-service="inventory"]').get_attribute("class") or "")
        assert page.locator(
            '[data-service="inventory"] [data-field="success_rate"]'
        ).inner_text() == ("100.0%")
        ejected = page.locator('[data-service="orders"] .inst.ejected')
        assert ejected.count() == 1 and "orders-2" in ejected.inner_text()
        assert page.locator('[data-breaker-card="search-index"]').count() == 1
        page.wait_for_selector("#conn.live", timeout=WAIT_MS)
        timeline = page.locator('#events li[data-kind="transition"]')
        assert "payments" in timeline.first.inner_text()
        page.close()


def test_a_state_change_shows_up_live_without_a_reload(browser: Any) -> None:
    mesh, source = history_mesh()
    with serve_app(dashboard_app(source, token=TOKEN, interval=0.2)) as base:
        page = browser.new_page(bypass_csp=True)  # lets wait_for_function evaluate
        page.goto(f"{base}/")
        page.wait_for_selector("#conn.live", timeout=WAIT_MS)
        page.evaluate("window.__loadedOnce = true")
        assert _state_of(page, "inventory") == "closed"
        mesh.circuit_breaker("inventory").force_open()
        mesh.get_service("inventory").load_balancer.mark_healthy("inventory-1", False)  # type: ignore[union-attr]
        page.wait_for_function(
            "document.querySelector('[data-service=\"inventory\"] .state').textContent"
            ".includes('forced open')",
            timeout=WAIT_MS,
        )
        page.wait_for_selector('[data-service="inventory"] [data-instance="inventory-1"].down')
        assert page.evaluate("window.__loadedOnce") is True, "the page was not reloaded"
        assert "h-bad" in (page.locator('[data-service="inventory"]').get_attribute("class") or "")
        page.wait_for_function(
            "[...document.querySelectorAll('#events li')].some("
            "li => li.textContent.includes('inventory') && li.textContent.includes('forced'))",
            timeout=WAIT_MS,
        )
        page.close()


def test_a_write_without_the_token_is_refused_and_with_it_applied(browser: Any) -> None:
    mesh, source = history_mesh()
    with serve_app(dashboard_app(source, token=TOKEN, interval=0.2)) as base:
        page = browser.new_page(bypass_csp=True)  # lets wait_for_function evaluate
        page.goto(f"{base}/")
        page.wait_for_selector("#conn.live", timeout=WAIT_MS)
        force = page.locator('[data-service="orders"] button[data-act="force_open"]')
        force.click()
        page.wait_for_selector("#message.error", timeout=WAIT_MS)
        assert "refused (401)" in page.locator("#message").inner_text()
        assert mesh.circuit_breaker("orders").state.value == "closed"

        page.fill("#token", "not-the-token")
        force.click()
        page.wait_for_function(
            "document.querySelector('#message').textContent.includes('401')", timeout=WAIT_MS
        )
        assert mesh.circuit_breaker("orders").state.value == "closed"

        page.fill("#token", TOKEN)
        force.click()
        page.wait_for_selector("#message.ok", timeout=WAIT_MS)
        assert mesh.circuit_breaker("orders").state.value == "forced_open"
        page.wait_for_function(
            "document.querySelector('[data-service=\"orders\"] .state').textContent"
            ".includes('forced open')",
            timeout=WAIT_MS,
        )
        page.locator('[data-instance="orders-1"] button').click()
        page.wait_for_selector('[data-service="orders"] [data-instance="orders-1"].down')
        assert mesh.get_service("orders").load_balancer.get("orders-1").healthy is False  # type: ignore[union-attr]
        page.close()

    read_only = Mesh()
    read_only.circuit_breaker("lonely")
    with serve_app(dashboard_app(read_only, interval=0.2)) as base:
        page = browser.new_page(bypass_csp=True)  # lets wait_for_function evaluate
        page.goto(f"{base}/")
        page.wait_for_selector('[data-breaker-card="lonely"]', timeout=WAIT_MS)
        page.fill("#token", TOKEN)
        page.locator('button[data-act="force_open"]').click()
        page.wait_for_selector("#message.error", timeout=WAIT_MS)
        assert "refused (403)" in page.locator("#message").inner_text()
        assert read_only.circuit_breaker("lonely").state.value == "closed"
        page.close()


def test_the_service_mesh_dashboard_command_watches_a_running_service(
    browser: Any, tmp_path: Path
) -> None:
    """``service-mesh dashboard --url``: a real subprocess over this process's status server."""
    mesh, source = history_mesh()
    with serve_status(mesh, monitor=source.monitor or False, token=TOKEN) as status:
        command = [sys.executable, "-m", "codomyrmex.service_mesh", "dashboard",
                   "--url", status.url, "--port", "0", "--interval", "0.2"]  # fmt: skip
        env = {**os.environ, "SERVICE_MESH_TOKEN": TOKEN}
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            assert "writes need the token" in line, line
            url = line.split(" on ", 1)[1].split(" ", 1)[0]
            assert url.startswith("http://127.0.0.1:")
            page = browser.new_page(bypass_csp=True)  # lets wait_for_function evaluate
            page.goto(url)
            page.wait_for_selector("#conn.live", timeout=WAIT_MS)
            assert _state_of(page, "payments") == "open"
            mesh.circuit_breaker("orders").force_open()
            page.wait_for_function(
                "document.querySelector('[data-service=\"orders\"] .state').textContent"
                ".includes('forced open')",
                timeout=WAIT_MS,
            )
            page.fill("#token", TOKEN)
            page.locator('[data-service="orders"] button[data-act="reset"]').click()
            page.wait_for_selector("#message.ok", timeout=WAIT_MS)
            assert mesh.circuit_breaker("orders").state.value == "closed"
            page.close()
        finally:
            process.terminate()
            process.wait(timeout=60)


def test_bad_dashboard_arguments_name_the_option() -> None:
    for args, word in ((["--port", "99999"], "--port"), (["--url", "ftp://x"], "--url")):
        done = subprocess.run(
            [sys.executable, "-m", "codomyrmex.service_mesh", "dashboard", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert word in done.stderr
