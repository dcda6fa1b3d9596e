"""A loop that runs until its task is cancelled ends even when a callee swallows the ``CancelledError`` (Python
3.11's ``asyncio.wait_for`` does when the cancel comes as its awaitable finishes; a store plugin may use it):
the worker's lease heartbeat and its presence heartbeat, or a stopping worker waits on them for ever."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from flowcraft import App, Flow, connect
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.worker import Worker
from flowcraft.presence import WorkerPresence


def _app() -> App:
    flow = Flow("one")
    flow.node("a", lambda ctx: 1)
    return App(flows=[flow])


def _swallowing(entered: asyncio.Event) -> Any:
    """A call that swallows the first cancel it gets (the caller's task goes on as if never cancelled); the
    calls after it return at once, so a test that fails still ends its task with a second cancel."""

    async def call(*args: Any, **kwargs: Any) -> None:
        if entered.is_set():
            return
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass

    return call


async def _ends(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` ends within 5 s of its cancel; if not, it is cancelled again and awaited."""
    done, _ = await asyncio.wait({task}, timeout=5)
    if task not in done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return task in done


async def test_presence_heartbeat_ends_when_a_callee_swallows_its_cancel(tmp_path: Path) -> None:
    app = _app()
    client = connect("sqlite", app=app, path=str(tmp_path / "runs.db"))
    try:
        presence = WorkerPresence(client.backend, app, worker_id="w", concurrency=1, interval=0.001)
        entered = asyncio.Event()
        presence.beat = _swallowing(entered)  # type: ignore[method-assign]
        task = asyncio.create_task(presence.run(lambda: ("ready", 0, 0, 0)))
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        assert await _ends(task)  # without the check it sleeps and beats again, for ever
    finally:
        await client.close()


async def test_a_worker_stops_when_its_lease_heartbeat_swallows_the_cancel(tmp_path: Path) -> None:
    app = _app()
    client = connect("sqlite", app=app, path=str(tmp_path / "runs.db"))
    try:
        engine = Engine(app, client.backend, options=EngineOptions(lease_seconds=0.15))
        entered = asyncio.Event()
        engine.heartbeat = _swallowing(entered)  # type: ignore[method-assign]
        worker = Worker(engine, concurrency=1, poll_wait=0.05, grace=0.5)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(entered.wait(), 5)
        worker.stop()
        assert await _ends(task)
    finally:
        await client.close()
