"""The worker's receive loop: every receive races one stop waiter, which the worker ends when it stops."""

from __future__ import annotations

import asyncio

from flowcraft import Flow, NodeContext
from flowcraft.app import App
from flowcraft.backends.memory import memory_backend
from flowcraft.client import Client
from flowcraft.engine.core import Engine
from flowcraft.engine.worker import Worker


async def plus_one(ctx: NodeContext) -> int:
    return int(ctx.input or 0) + 1


async def test_receives_between_runs_and_a_stop_leave_no_task_behind() -> None:
    """Runs started one after another (a receive each, some finding nothing within the short poll wait), then a
    stop while a receive waits: the runs complete, the worker returns promptly and leaves no task running."""
    flow = Flow("two").node("a", plus_one).node("b", plus_one).edge("a", "b")
    backend = memory_backend()
    app = App(flows=[flow])
    worker = Worker(Engine(app, backend), concurrency=2, poll_wait=0.02)
    before = asyncio.all_tasks()
    task = asyncio.create_task(worker.run())
    client = Client(backend, app)
    for value in range(5):
        result = await client.run("two", value, timeout=10)
        assert result.status == "completed"
        assert result.outputs["b"] == value + 2
        await asyncio.sleep(0.03)  # at least one receive returns empty-handed
    worker.stop()
    await asyncio.wait_for(task, 5)
    await asyncio.sleep(0)
    assert {t for t in asyncio.all_tasks() if not t.done()} - before - {task} == set()
