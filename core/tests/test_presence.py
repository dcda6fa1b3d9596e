"""Worker presence (issue 18, items 6 and 7): workers publish the blueprints they load and heartbeat their entry;
a client starts runs by blueprint id without the app and is refused a blueprint no live worker loads; workers
say "ready" only once connected and consuming, with health endpoints, a ready file and `flowcraft workers`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowcraft import App, Flow, connect
from flowcraft.cli import cli
from flowcraft.client import Client
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.worker import Worker
from flowcraft.errors import ConfigError
from flowcraft.health import HealthState
from flowcraft.presence import Presence, WorkerPresence
from flowcraft.spi import WorkerInfo


def make_app(version: str = "1") -> App:
    quick = Flow("quick", version=version)
    quick.node("a", lambda ctx: (ctx.input or {}).get("n", 1))
    quick.node("b", lambda ctx: ctx.input + 1)
    quick.edge("a", "b")
    review = Flow("review")
    review.wait("approval")
    review.node("done", lambda ctx: f"approved: {ctx.input}")
    review.edge("approval", "done", action="approve")
    return App(flows=[quick, review])


class RunningWorker:
    """A presence-announcing worker in this process, on its own connection to the database."""

    def __init__(self, db: Path, app: App, lease_seconds: float = 1.5) -> None:
        self.client = connect("sqlite", app=app, path=str(db))
        engine = Engine(app, self.client.backend, options=EngineOptions(lease_seconds=lease_seconds))
        self.presence = WorkerPresence(self.client.backend, app, worker_id=engine.worker_id, concurrency=4,
                                       interval=lease_seconds / 3)
        self.worker = Worker(engine, concurrency=4, poll_wait=0.1, grace=1.0, presence=self.presence)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningWorker:
        self.task = asyncio.create_task(self.worker.run())
        await asyncio.wait_for(self.worker.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.worker.stop()
        assert self.task is not None
        await self.task
        await self.client.close()


@pytest.fixture
async def bare_client(tmp_path: Path) -> AsyncIterator[Client]:
    """A client with only the backend: no app."""
    client = connect("sqlite", path=str(tmp_path / "runs.db"))
    await client.backend.setup()
    try:
        yield client
    finally:
        await client.close()


async def test_a_client_without_the_app_starts_waits_and_resumes_published_blueprints(
        tmp_path: Path, bare_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flowcraft.client.PRESENCE_CACHE_SECONDS", 0.2)
    async with RunningWorker(tmp_path / "runs.db", make_app()) as running:
        result = await bare_client.run("quick", {"n": 41}, timeout=20)
        assert (result.status, result.output) == ("completed", 42)
        record = await bare_client.backend.status.get(result.run_id)
        assert record is not None and record.version == "1"  # the version the worker loads
        waiting = await bare_client.run("review", timeout=20)
        assert waiting.status == "awaiting"
        await bare_client.resume(waiting.run_id, action="approve", output="yes")
        assert (await bare_client.wait(waiting.run_id, timeout=20)).output == "approved: yes"

        published = {entry.id: entry for entry in await bare_client.blueprints()}
        assert set(published) == {"quick", "review"}
        assert published["quick"].version == "1" and published["quick"].workers == (running.worker.engine.worker_id,)
        assert published["quick"].blueprint.to_json_dict() == make_app().blueprint("quick").to_json_dict()  # type: ignore[union-attr]

        [info] = await bare_client.workers()
        assert info.worker_id == running.worker.engine.worker_id
        assert (info.pid, info.host, info.backend, info.concurrency) == (os.getpid(), socket.gethostname(), "sqlite", 4)
        assert info.state == "ready" and time.time() - info.heartbeat_at < 5
        assert {ref["id"] for ref in info.blueprints} == {"quick", "review"}
    # a worker that stops removes its entry: nothing is published any more
    assert await bare_client.workers() == []
    await asyncio.sleep(0.3)  # past the client's cache of what it read
    with pytest.raises(ConfigError) as refused:
        await bare_client.start("quick")
    assert str(refused.value.args[0]) == ("no live worker has published blueprint 'quick' (no worker is running on "
                                          "this backend)")
    assert "flowcraft worker --app" in refused.value.hint


async def test_a_blueprint_no_live_worker_loads_is_refused_at_start(tmp_path: Path, bare_client: Client) -> None:
    async with RunningWorker(tmp_path / "runs.db", make_app()):
        with pytest.raises(ConfigError) as unknown:
            await bare_client.start("nope")
        assert str(unknown.value.args[0]) == "no live worker has published blueprint 'nope'"
        assert unknown.value.hint.startswith("live workers load: quick, review;")
        # a client whose app has another version than every live worker: its job would be dead-lettered
        other = connect("sqlite", app=make_app(version="2"), path=str(tmp_path / "runs.db"))
        try:
            with pytest.raises(ConfigError, match=r"no live worker loads version '2' of blueprint 'quick' \(they "
                                                  r"load 1\)"):
                await other.start("quick")
            assert (await other.backend.status.list())[0] == []  # nothing was written
        finally:
            await other.close()


async def test_with_no_live_worker_a_client_with_the_app_may_start_ahead_of_its_workers(
        tmp_path: Path) -> None:
    client = connect("sqlite", app=make_app(), path=str(tmp_path / "runs.db"))
    try:
        run_id = await client.start("quick", {"n": 1})  # the job waits in the queue for a worker
        async with RunningWorker(tmp_path / "runs.db", make_app()):
            assert (await client.wait(run_id, timeout=20)).output == 2
    finally:
        await client.close()


async def test_a_dead_worker_drops_out_after_its_heartbeat_expires(tmp_path: Path, bare_client: Client) -> None:
    presence = Presence(bare_client.backend.context)
    now = time.time()
    alive = WorkerInfo(worker_id="w-alive", heartbeat_at=now, interval=1.0,
                       blueprints=({"id": "quick", "version": "1", "hash": "x"},))
    killed = WorkerInfo(worker_id="w-killed", heartbeat_at=now - 3.5, interval=1.0,
                        blueprints=({"id": "gone", "version": "1", "hash": "y"},))
    await presence.heartbeat(alive)
    await presence.heartbeat(killed)
    assert [info.worker_id for info in await bare_client.workers()] == ["w-alive"]
    assert {info.worker_id for info in await bare_client.workers(include_dead=True)} == {"w-alive", "w-killed"}
    with pytest.raises(ConfigError, match="no live worker has published blueprint 'gone'"):
        await bare_client.start("gone")


async def test_a_worker_starting_forgets_workers_dead_for_an_hour_and_their_blueprints(
        tmp_path: Path, bare_client: Client) -> None:
    presence = Presence(bare_client.backend.context)
    long_ago = time.time() - 2 * 3600
    await presence.heartbeat(WorkerInfo(worker_id="w-long-dead", heartbeat_at=long_ago, interval=1.0,
                                        blueprints=({"id": "old", "version": "1", "hash": "h-old"},)))
    await bare_client.backend.context.apply("_flowcraft.blueprints", {"old@h-old": {
        "id": "old", "version": "1", "hash": "h-old", "blueprint": {"id": "old", "nodes": [], "edges": []},
        "published_at": long_ago}})
    await presence.heartbeat(WorkerInfo(worker_id="w-just-dead", heartbeat_at=time.time() - 10, interval=1.0))
    async with RunningWorker(tmp_path / "runs.db", make_app()) as running:
        entries = {info.worker_id for info in await bare_client.workers(include_dead=True)}
        assert entries == {"w-just-dead", running.worker.engine.worker_id}  # the recently dead one is kept a while
        stored = await bare_client.backend.context.get_all("_flowcraft.blueprints")
        assert {data["id"] for data in stored.values()} == {"quick", "review"}


def test_health_answers_from_the_snapshot() -> None:
    state = HealthState("w-1")
    assert state.answer("/healthz")[0] == 200 and state.answer("/readyz")[0] == 503  # starting
    state.update("ready", 2, 5, 1)
    code, body = state.answer("/readyz")
    assert (code, body) == (200, {"worker_id": "w-1", "state": "ready", "in_flight": 2, "handled": 5, "failed": 1,
                                  "status": "ready"})
    state.refreshed -= 31  # the event loop stopped refreshing it: stuck
    assert state.answer("/healthz") == (503, {**body, "status": "event loop not responding"})
    assert state.answer("/readyz")[0] == 503
    state.update("stopping", 0, 5, 1)
    assert state.answer("/readyz")[0] == 503 and state.answer("/healthz")[0] == 200


async def test_worker_is_ready_only_after_reaching_its_stores(tmp_path: Path) -> None:
    app = make_app()
    client = connect("sqlite", app=app, path=str(tmp_path / "runs.db"))
    gate = asyncio.Event()
    receive = client.backend.queue.receive

    async def slow_receive(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()  # the queue does not answer yet
        return await receive(*args, **kwargs)

    client.backend.queue.receive = slow_receive  # type: ignore[method-assign]
    worker = Worker(Engine(app, client.backend), poll_wait=0.1, grace=1.0)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)
        assert not worker.ready.is_set() and worker.state == "starting"
        gate.set()
        await asyncio.wait_for(worker.ready.wait(), 5)
        assert worker.state == "ready"
    finally:
        worker.stop()
        await task
        await client.close()


# ---------------------------------------------------------------------------------------------- the CLI
APP_MODULE = "presence_test_app"
APP_SOURCE = '''
from flowcraft import App, Flow

quick = Flow("quick", version="7")
quick.node("a", lambda ctx: (ctx.input or {}).get("n", 1))
quick.node("b", lambda ctx: ctx.input + 1)
quick.edge("a", "b")
review = Flow("review")
review.wait("approval")
review.node("done", lambda ctx: f"approved: {ctx.input}")
review.edge("approval", "done", action="approve")
app = App(flows=[quick, review])
'''


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Path:
    """A project whose config names only the backend (no app): the client side of a deployment."""
    root = make_project(APP_MODULE, APP_SOURCE)
    (root / "flowcraft.toml").write_text('backend = "sqlite"\n[options]\npath = "runs.db"\n', encoding="utf-8")
    return root


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


class WorkerProcess:
    """`flowcraft worker` as a real process; stderr collected as it runs."""

    def __init__(self, cwd: Path, *args: str) -> None:
        command = [sys.executable, "-m", "flowcraft.cli", "worker", "--app", f"{APP_MODULE}:app", *args]
        self.process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr or ()), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if text in line), None)
            if found is not None:
                return found
            assert self.process.poll() is None, "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not printed:\n{''.join(self.lines)}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._reader.join(timeout=5)
        return code


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_cli_worker_health_ready_file_workers_and_run_without_the_app(project: Path) -> None:
    assert invoke("setup").exit_code == 0
    ready_file = project / "ready"
    worker = WorkerProcess(project, "--health-port", "0", "--health-host", "127.0.0.1", "--ready-file",
                           str(ready_file), "--lease-seconds", "3", "--backlog", "3")
    try:
        line = worker.wait_for(" ready on backend sqlite")
        assert ", backlog 3, lease 3s," in line
        port = int(line.split("health on http://127.0.0.1:")[1].split(";")[0])
        assert json.loads(ready_file.read_text())["pid"] == worker.process.pid
        code, body = get(f"http://127.0.0.1:{port}/readyz")
        assert (code, body["status"], body["state"]) == (200, "ready", "ready")
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404

        listed = invoke("workers", "--json")
        assert listed.exit_code == 0, listed.output
        [info] = json.loads(listed.stdout)
        assert (info["pid"], info["backend"], info["concurrency"], info["live"]) == (
            worker.process.pid, "sqlite", 16, True)
        assert info["blueprints"][0]["id"] == "quick" and info["blueprints"][0]["version"] == "7"
        assert [ref["id"] for ref in info["blueprints"]] == ["quick", "review"]
        table = CliRunner(env={"COLUMNS": "250"}).invoke(cli, ["workers"])
        assert str(worker.process.pid) in table.output and "quick@7" in table.output

        result = invoke("run", "quick", "--input", '{"n": 4}', "--wait", "--timeout", "30")  # no --app anywhere
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["output"] == 5
        waiting = invoke("run", "review", "--wait", "--timeout", "30")
        assert waiting.exit_code == 0 and json.loads(waiting.stdout)["status"] == "awaiting", waiting.output
        run_id = json.loads(waiting.stdout)["run_id"]
        resumed = invoke("resume", run_id, "--action", "approve", "--output", '"ok"')  # no app either
        assert resumed.exit_code == 0, resumed.output
        deadline = time.monotonic() + 30
        while (shown := json.loads(invoke("status", run_id, "--json").stdout))["status"] != "completed":
            assert time.monotonic() < deadline, shown
            time.sleep(0.1)
        assert shown["output"] == "approved: ok"
        (project / "other_app.py").write_text('from flowcraft import App, Flow\nsolo = Flow("solo")\n'
                                              'solo.node("one", lambda ctx: "solo ran")\napp = App(flows=[solo])\n',
                                              encoding="utf-8")
        unserved = invoke("run", "solo", "--app", "other_app:app")  # live workers, none loads it: refused
        assert unserved.exit_code == 1
        assert error_lines(unserved)[0] == "error: no live worker has published blueprint 'solo'"
        inline = invoke("run", "solo", "--app", "other_app:app", "--inline", "--timeout", "30")  # runs it here
        assert inline.exit_code == 0 and json.loads(inline.stdout)["output"] == "solo ran", inline.output
        refused = invoke("run", "nope", "--input", "{}")
        assert refused.exit_code == 1
        assert error_lines(refused) == ["error: no live worker has published blueprint 'nope'",
                                        "hint: live workers load: quick, review; start a worker whose app has it "
                                        "(`flowcraft workers` lists them)"]
    finally:
        code = worker.stop()
    assert code == 0, "".join(worker.lines)
    assert not ready_file.exists()
    assert "no live workers" in invoke("workers").output
    gone = invoke("run", "quick")
    assert gone.exit_code == 1 and error_lines(gone)[0] == (
        "error: no live worker has published blueprint 'quick' (no worker is running on this backend)")


def test_cli_worker_health_options_refuse_bad_input(project: Path) -> None:
    missing = invoke("worker", "--app", f"{APP_MODULE}:app", "--ready-file", str(project / "no" / "dir" / "ready"))
    assert missing.exit_code == 1
    folder = project / "no" / "dir"
    assert error_lines(missing)[0] == f"error: --ready-file {folder / 'ready'}: folder {folder} does not exist"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = invoke("worker", "--app", f"{APP_MODULE}:app", "--health-host", "127.0.0.1", "--health-port", str(port))
    assert busy.exit_code == 1
    assert error_lines(busy)[0].startswith(f"error: cannot serve health checks on 127.0.0.1:{port}: ")
    assert error_lines(busy)[1].startswith("hint: pick another --health-port")


def test_cli_worker_fleet_reports_ready_once_every_process_is(project: Path) -> None:
    assert invoke("setup").exit_code == 0
    ready_file = project / "fleet-ready"
    fleet = WorkerProcess(project, "--processes", "2", "--concurrency", "2", "--health-port", "0", "--health-host",
                          "127.0.0.1", "--ready-file", str(ready_file), "--lease-seconds", "3")
    try:
        line = fleet.wait_for("all 2 worker processes ready")
        port = int(line.split("health on http://127.0.0.1:")[1].split()[0])
        code, body = get(f"http://127.0.0.1:{port}/readyz")
        assert (code, body["processes_ready"], body["processes"]) == (200, 2, 2)
        pids = json.loads(ready_file.read_text())["processes"]
        assert len(pids) == 2 and {info["pid"] for info in json.loads(invoke("workers", "--json").stdout)} == set(pids)
        os.kill(pids[0], signal.SIGKILL)  # the supervisor restarts it: not ready until its successor is
        deadline = time.monotonic() + 10
        while get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
            assert time.monotonic() < deadline, "the fleet stayed ready with a process dead"
            time.sleep(0.02)
        assert not ready_file.exists()
        fleet.wait_for("restarted worker process as pid")
        deadline = time.monotonic() + 30
        while get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "".join(fleet.lines)
            time.sleep(0.1)
        assert ready_file.exists() and get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        code = fleet.stop()
    assert code == 0, "".join(fleet.lines)
    assert not ready_file.exists()
