"""Poison jobs against real `flowcraft worker` processes on sqlite (issue 12, items 1, 2, 3 and 9): the
worker survives every one, fails each run once with its reason, dead-letters what reached the queue as a
poison job and serves the next run; a database file deleted under it stops it with a clear error."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flowcraft import connect, load_app

APP_MODULE = "bad_input_app"
APP_SOURCE = '''
import asyncio
import datetime

from flowcraft import App, Flow


def effect(name):
    with open("effects.log", "a", encoding="utf-8") as log:
        log.write(name + "\\n")


def raising(name, error):
    def node(ctx):
        effect(name)
        raise error()
    return node


async def cancelled(ctx):
    effect("cancelled")
    raise asyncio.CancelledError()


def dated(ctx):
    effect("dated")
    return {"when": datetime.date(2024, 1, 2)}


flows = []
for name, error in [("exits", lambda: SystemExit(3)), ("interrupted", KeyboardInterrupt),
                    ("closed", GeneratorExit), ("fallback", lambda: ValueError("down"))]:
    flow = Flow(name)
    flow.node("node", raising(name, error), fallback="spare" if name == "fallback" else None)
    flow.node("spare", lambda ctx: "spare")
    flows.append(flow)
for name, implementation in [("cancelled", cancelled), ("dated", dated)]:
    flow = Flow(name)
    flow.node("node", implementation)
    flows.append(flow)
healthy = Flow("healthy")
healthy.node("one", lambda ctx: 1)
healthy.node("two", lambda ctx: ctx.input + 1)
healthy.edge("one", "two")
app = App(flows=[*flows, healthy])
# changed after load-time validation, as code holding on to a blueprint's parts could
object.__setattr__(app.blueprint("fallback").nodes[0].config, "fallback", "nowhere")
'''


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Path:
    return make_project(APP_MODULE, APP_SOURCE, sqlite_config=True)


class WorkerProcess:
    """One `flowcraft worker` process; its stderr is collected as it runs."""

    def __init__(self, cwd: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "flowcraft.cli", "worker", "--concurrency", "2"],
                                        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr or ()), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while not any("on backend sqlite" in line for line in self.lines) and time.monotonic() < deadline:
            assert self.process.poll() is None, self.stderr
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._reader.join(timeout=5)
        return code


def effects(project: Path) -> dict[str, int]:
    log = project / "effects.log"
    names = log.read_text(encoding="utf-8").split() if log.exists() else []
    return {name: names.count(name) for name in set(names)}


async def test_a_worker_survives_poison_jobs_and_serves_the_next_run(project: Path) -> None:
    worker = WorkerProcess(project)
    client = connect("sqlite", app=load_app(f"{APP_MODULE}:app"), path=str(project / "runs.db"))
    try:
        results = {}
        for name in ("exits", "interrupted", "closed", "cancelled", "dated", "fallback"):
            results[name] = await client.run(name, timeout=30)
            assert worker.process.poll() is None, worker.stderr
        healthy = await client.run("healthy", timeout=30)
        assert (healthy.status, healthy.output) == ("completed", 2)
        letters = {letter.job.blueprint_id: letter.reason for letter in await client.backend.queue.dead_letters()
                   if letter.job is not None}
    finally:
        await client.close()
        code = worker.stop()
    messages = {name: [e["message"] for e in result.errors] for name, result in results.items()}
    dated = ("node 'node' output at ['when'] is of type date, which is not JSON-serialisable (return and store "
             "JSON values: dicts with string keys, lists, strings, numbers, booleans, None)")
    fallback = ("blueprint 'fallback': nodes[0].config.fallback (node 'node'): 'nowhere' is not a node id (fix the "
                "blueprint and start a new run)")
    assert messages == {"exits": ["SystemExit: 3"], "interrupted": ["KeyboardInterrupt"],
                        "closed": ["GeneratorExit"], "cancelled": ["CancelledError"], "dated": [dated],
                        "fallback": [fallback]}
    assert {result.status for result in results.values()} == {"failed"}
    assert letters == {"dated": dated, "fallback": fallback}  # node failures are not poison jobs
    assert effects(project) == dict.fromkeys(results, 1)  # each node ran once: nothing came back
    assert code == 0, worker.stderr


async def test_deleting_the_database_stops_the_worker_with_a_clear_error(project: Path) -> None:
    worker = WorkerProcess(project)
    client = connect("sqlite", app=load_app(f"{APP_MODULE}:app"), path=str(project / "runs.db"))
    try:
        assert (await client.run("healthy", timeout=30)).status == "completed"
    finally:
        await client.close()
    (project / "runs.db").unlink()
    try:
        code = worker.process.wait(timeout=20)
    finally:
        worker.stop()
    assert code != 0
    assert worker.stderr.splitlines()[-2:] == [
        f"error: the SQLite database {project / 'runs.db'} was deleted while this process used it",
        "hint: stop every worker and client using it, then start them again on the current file",
    ]
