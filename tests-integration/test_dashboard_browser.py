"""``flowcraft dashboard`` in a real headless browser (issue 18, item 9): Playwright drives Debian's Chromium
(``scripts/install-servers.sh chromium``; missing: skipped locally, failed in CI) against a real
``flowcraft dashboard`` and a real ``flowcraft worker`` on the sqlite and the Redis (rq) backend. The dashboard
has no app: it starts runs from the blueprints the worker published. A run is started and watched to
completion, a waiting run is resumed from the page, a failed run is retried from a node. One browser for
the session; the sqlite test saves a screenshot, and with ``FLOWCRAFT_UPDATE_SCREENSHOT=1`` it replaces the one
README shows (docs/dashboard.png): a test run does not change the tree."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers.pytest_plugin import missing, require_module, selected

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-dashboard-token"
APP_SOURCE = '''
import os
from pathlib import Path
from flowcraft import App, Flow

def hello(ctx):
    return f"hello {ctx.input}"

def check(ctx):
    if not Path(os.environ["DASHBOARD_TEST_FLAG"]).exists():
        raise RuntimeError("the flag file is missing")
    return "checked"

greet = Flow("greet").node("hello", hello).node("shout", lambda ctx: ctx.input.upper()).edge("hello", "shout")
approve = Flow("approve").node("draft", lambda ctx: "draft").wait("review", prompt="ship it?")
approve.node("ship", lambda ctx: "shipped").node("drop", lambda ctx: "dropped")
approve.edge("draft", "review").edge("review", "ship", action="approve").edge("review", "drop", action="reject")
fragile = Flow("fragile").node("fetch", lambda ctx: 41).node("check", check).node("report", lambda ctx: "ok")
fragile.edge("fetch", "check").edge("check", "report")
app = App(flows=[greet, approve, fragile])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not selected("chromium"):
        pytest.skip("chromium is not among FLOWCRAFT_TEST_SERVERS")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        missing("chromium is not installed: scripts/install-servers.sh chromium")
    sync_api = require_module("playwright.sync_api", "playwright")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


def start(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen([str(Path(sys.executable).parent / "flowcraft"), *args], cwd=cwd, env=env, stdout=out,
                            stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dashboard exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"dashboard did not answer: {log.read_text()}")


def drive(browser: Any, tmp_path: Path, backend_args: list[str], screenshot: Path | None) -> None:
    (tmp_path / "dash_app.py").write_text(APP_SOURCE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCRAFT_")}
    env.update(PYTHONPATH=str(tmp_path), DASHBOARD_TEST_FLAG=str(tmp_path / "flag"), COLUMNS="200")
    port = free_port()
    worker = start(["worker", "--app", "dash_app:app", "-c", "4", *backend_args], tmp_path, env,
                   tmp_path / "worker.log")
    dashboard = start(["dashboard", "--port", str(port), "--token", TOKEN, "--refresh", "0.3", *backend_args],
                      tmp_path, env, tmp_path / "dashboard.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/blueprints", dashboard, tmp_path / "dashboard.log")
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.set_default_timeout(30_000)
        page.goto(base + "/login")
        page.fill("input[name=token]", TOKEN)
        page.click("#login button")
        page.wait_for_url(base + "/")
        for _ in range(300):  # until the worker published its blueprints
            if page.locator("#start option[value=fragile]").count():
                break
            page.wait_for_timeout(100)
            page.reload()

        def start_run(blueprint: str, input_json: str) -> None:
            page.goto(base + "/")
            page.select_option("#start select[name=blueprint_id]", blueprint)
            page.fill("#start input[name=input]", input_json)
            page.click("#start button")
            page.wait_for_url(f"{base}/runs/**")

        # a run started and watched to completion (the page refreshes itself)
        start_run("greet", '"ada"')
        page.wait_for_selector("#run-status[data-status=completed]")
        assert "HELLO ADA" in page.inner_text("#output")
        assert page.get_attribute("g.node[data-node=shout]", "data-state") == "done"
        page.goto(base + "/?status=completed")
        assert page.locator("tr[data-run]").count() == 1

        # a waiting run resumed from the page
        start_run("approve", "")
        page.wait_for_selector("#run-status[data-status=awaiting]")
        assert page.get_attribute("g.node[data-node=review]", "data-state") == "awaiting"
        page.fill("#resume input[name=action]", "approve")
        page.click("#resume button")
        page.wait_for_selector("#flash")
        page.wait_for_selector("#run-status[data-status=completed]")
        assert page.get_attribute("g.node[data-node=ship]", "data-state") == "done"
        assert page.get_attribute("g.node[data-node=drop]", "data-state") == "skipped"

        # a failed run retried from a node after the fix
        start_run("fragile", "")
        page.wait_for_selector("#run-status[data-status=failed]")
        assert "the flag file is missing" in page.inner_text("#errors")
        assert page.get_attribute("g.node[data-node=check]", "data-state") == "failed"
        (tmp_path / "flag").touch()
        page.select_option("#retry select[name=node_id]", "check")
        page.click("#retry button")
        assert "retried from check" in page.inner_text("#flash")
        page.wait_for_selector("#run-status[data-status=completed]")
        assert page.get_attribute("g.node[data-node=report]", "data-state") == "done"
        assert "the flag file is missing" in page.inner_text("table")  # the failed attempt stays in the history
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)

        run_url = page.url.split("?")[0]
        page.goto(base + "/workers")
        assert page.locator("tr[data-worker]").count() == 1
        # the worker's coordination protocol (sqlite and Redis declare "2"; flowcraft workers shows it too)
        assert page.inner_text("tr[data-worker] td.protocol") == "2"

        # read-only without the token: the same action is refused
        anonymous = browser.new_page()
        response = anonymous.request.post(run_url + "/cancel")
        assert response.status == 403
        anonymous.close()
        page.close()
    finally:
        stop(dashboard)
        stop(worker)


def test_dashboard_on_sqlite(browser: Any, tmp_path: Path) -> None:
    update = os.environ.get("FLOWCRAFT_UPDATE_SCREENSHOT") == "1"
    screenshot = ROOT / "docs" / "dashboard.png" if update else tmp_path / "dashboard.png"
    drive(browser, tmp_path, ["--backend", "sqlite", "-o", f"path={tmp_path / 'runs.db'}"], screenshot)
    assert screenshot.stat().st_size > 10_000  # a page, not an empty image


def test_dashboard_on_rq(browser: Any, tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    drive(browser, tmp_path, ["--backend", "rq", "-o", f"redis_url={redis_url}", "-o", f"key_prefix={redis_prefix}"],
          None)
