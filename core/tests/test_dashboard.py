"""The dashboard's ASGI app without a browser or server (issue 18, item 9): read-only by default, actions
behind the token, pages of a run that ran on sqlite, bad input answered with a message; the real
`flowcraft dashboard` refuses bad options in one line. The browser test: tests-integration/test_dashboard_browser.py."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("multipart")

with warnings.catch_warnings():  # starlette's TestClient warns about httpx, which it still uses
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from flowcraft import App, Flow, FlowRuntime
from flowcraft.cli import cli
from flowcraft.client import Client
from flowcraft.dashboard import create_app
from flowcraft.plugins import registry

TOKEN = "t0ken"


def flows() -> list[Flow]:
    def explode(ctx: object) -> None:
        raise ValueError("boom")

    ok = Flow("ok").node("a", lambda ctx: 1).node("b", lambda ctx: ctx.input + 1).edge("a", "b")
    return [ok, Flow("bad").node("explode", explode)]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "dash.db")


def dashboard(db: str, token: str | None = TOKEN) -> TestClient:
    app = create_app(lambda: Client(registry().build("sqlite", {"path": db}), App(flows=flows())), token=token)
    return TestClient(app)


@pytest.fixture
def ran(db: str) -> Iterator[tuple[str, str]]:
    async def both() -> tuple[str, str]:
        async with FlowRuntime(flows=flows(), backend=registry().build("sqlite", {"path": db})) as runtime:
            return (await runtime.run("ok", None)).run_id, (await runtime.run("bad", None)).run_id

    import asyncio
    yield asyncio.run(both())


def test_pages_of_runs_read_only_by_default(db: str, ran: tuple[str, str]) -> None:
    ok, bad = ran
    with dashboard(db, token=None) as http:
        listing = http.get("/")
        assert listing.status_code == 200 and ok in listing.text and bad in listing.text and "read-only" in listing.text
        assert "/static/htmx.min.js" in listing.text and http.get("/static/htmx.min.js").status_code == 200
        failed = http.get("/fragments/runs", params={"status": "failed"}).text
        assert bad in failed and ok not in failed
        assert "unknown status" in http.get("/fragments/runs", params={"status": "nope"}).text
        recent = http.get("/fragments/runs", params={"since": "15m", "status": "completed"}).text
        assert ok in recent and bad not in recent
        assert "unknown age" in http.get("/fragments/runs", params={"since": "2y"}).text
        page = http.get(f"/runs/{bad}").text
        assert 'data-node="explode" data-state="failed"' in page and "ValueError: boom" in page
        assert 'id="actions"' not in page  # no buttons without the token
        assert 'data-node="b" data-state="done"' in http.get(f"/runs/{ok}").text
        assert http.get("/runs/nope").status_code == 404
        assert http.get("/fragments/runs/nope").status_code == 404
        assert 'id="ok"' in http.get("/blueprints").text
        assert "No dead letters" in http.get("/dead-letters").text
        assert "No live worker" in http.get("/workers").text
        refused = http.post(f"/runs/{bad}/retry")
        assert refused.status_code == 403 and "--token" in refused.text


def test_actions_need_the_token(db: str, ran: tuple[str, str]) -> None:
    _, bad = ran
    with dashboard(db) as http:
        assert http.post(f"/runs/{bad}/cancel").status_code == 403
        assert http.post("/login", data={"token": "wrong"}, follow_redirects=False).status_code == 403
        assert http.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
        page = http.get(f"/runs/{bad}").text
        assert 'id="retry"' in page and 'id="cancel"' not in page  # a failed run can be retried, not cancelled
        bad_input = http.post("/runs", data={"blueprint_id": "ok", "input": "{nope"})
        assert "not started: not valid JSON" in bad_input.text
        refused = http.post(f"/runs/{bad}/resume", data={"action": "go"})
        assert "resume refused" in refused.text
    with dashboard(db) as http:  # a bearer token works too, for scripts
        started = http.post("/runs", data={"blueprint_id": "ok", "input": "1"},
                            headers={"Authorization": f"Bearer {TOKEN}"}, follow_redirects=False)
        assert started.status_code == 303 and started.headers["location"].startswith("/runs/")


def test_cli_dashboard_bad_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["dashboard", "--port", "70000"])
    assert result.exit_code == 2 and "--port" in result.output
    result = runner.invoke(cli, ["dashboard", "--token", " ", "-b", "sqlite", "-o", f"path={tmp_path / 'x.db'}"])
    assert result.exit_code == 1 and "token is empty" in result.output and "hint" in result.output.lower()


def test_dead_letters_replayed_and_a_waiting_run_cancelled_from_the_dashboard(db: str) -> None:
    import asyncio

    from flowcraft.spi import Job

    async def dead_letter() -> None:
        backend = registry().build("sqlite", {"path": db})
        await backend.setup()
        await backend.queue.enqueue([Job("lost-run", "ok", "a")])
        (delivery,) = await backend.queue.dequeue(1, 1.0)
        await backend.queue.dead_letter(delivery, "no worker loads blueprint 'ok'")
        await backend.close()

    asyncio.run(dead_letter())
    waiting = Flow("hold").wait("gate")
    app = App(flows=[*flows(), waiting])
    http = TestClient(create_app(lambda: Client(registry().build("sqlite", {"path": db}), app), token=TOKEN))
    with http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        listing = http.get("/dead-letters", headers=auth).text
        assert "no worker loads blueprint" in listing and "lost-run" in listing and "Replay all" in listing
        replayed = http.post("/dead-letters/replay", headers=auth)
        assert "replayed 1 dead letter(s)" in replayed.text and "No dead letters" in replayed.text

        started = http.post("/runs", data={"blueprint_id": "hold"}, headers=auth, follow_redirects=False)
        run_page = started.headers["location"]
        assert 'id="cancel"' in http.get(run_page, headers=auth).text
        cancelled = http.post(run_page + "/cancel", headers=auth)
        assert "cancelled" in cancelled.text and 'data-status="cancelled"' in cancelled.text
