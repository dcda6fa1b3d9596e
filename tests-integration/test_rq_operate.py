"""Operating runs on the ``rq`` backend (issue 18, items 3-5) over a real redis-server: retry from a node, a
dead-lettered job flagged on its run and replayed from rq's FailedJobRegistry, purge of finished runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from flowcraft import App, Engine, EngineOptions, Flow, NodeContext, Worker
from flowcraft.client import Client
from flowcraft.plugins import registry
from flowcraft.spi import Backend

BROKEN: set[str] = set()
CALLS: dict[str, int] = {}


def step(name: str) -> Any:
    async def run(ctx: NodeContext) -> Any:
        CALLS[name] = CALLS.get(name, 0) + 1
        if name in BROKEN:
            raise ValueError(f"{name} is broken")
        return {name: ctx.input}

    return run


def diamond() -> Flow:
    flow = Flow("ops-diamond")
    for name in "abcd":
        flow.node(name, step(name))
    return flow.edge("a", "b").edge("a", "c").edge("b", "d").edge("c", "d")


APP = App(flows=[diamond()])


@pytest_asyncio.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[Backend]:
    built = registry().build("rq", {"redis_url": redis_url, "key_prefix": redis_prefix, "visibility_timeout": 2})
    try:
        yield built
    finally:
        await built.close()


async def with_worker(backend: Backend, app: App, max_bounces: int = 5) -> tuple[Worker, asyncio.Task[Any]]:
    worker = Worker(Engine(app, backend, options=EngineOptions(lease_seconds=2, max_bounces=max_bounces,
                                                               bounce_delay=0.05)),
                    concurrency=4, poll_wait=0.2)
    return worker, asyncio.create_task(worker.run())


async def test_retry_from_a_node_on_rq(backend: Backend) -> None:
    BROKEN.add("d")
    CALLS.clear()
    worker, task = await with_worker(backend, APP)
    try:
        client = Client(backend, APP)
        failed = await client.run("ops-diamond", 1, timeout=20)
        assert failed.status == "failed"
        BROKEN.clear()
        assert await client.retry(failed.run_id, from_node="b") == 1
        result = await client.wait(failed.run_id, timeout=20)
    finally:
        worker.stop()
        await task
    assert result.status == "completed" and CALLS == {"a": 1, "b": 2, "c": 1, "d": 2}
    assert result.output == {"d": {"b": {"b": {"a": 1}}, "c": {"c": {"a": 1}}}}
    assert [v.state for v in result.timeline if v.node_id == "d"] == ["failed", "done"]


async def test_dead_letter_flag_replay_and_purge_on_rq(backend: Backend) -> None:
    BROKEN.clear()
    client = Client(backend, APP)
    run_id = await client.start("ops-diamond", 2)
    worker, task = await with_worker(backend, App(), max_bounces=1)  # loads no blueprint: dead-letters it
    try:
        for _ in range(100):
            if (await client.status(run_id)).dead_letters:
                break
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
        await task
    flagged = await client.status(run_id)
    assert flagged.status == "running" and flagged.dead_letters[0]["node_id"] == "a"
    (letter,) = [d for d in await client.dead_letters() if d.job and d.job.run_id == run_id]
    assert letter.id and "replay the job" in letter.reason
    assert [d.id for d in await client.replay_dead_letters([letter.id])] == [letter.id]
    assert [d for d in await client.dead_letters() if d.job and d.job.run_id == run_id] == []
    worker, task = await with_worker(backend, APP)
    try:
        result = await client.wait(run_id, timeout=20)
    finally:
        worker.stop()
        await task
    assert result.status == "completed" and result.dead_letters == []
    await asyncio.sleep(0.05)
    stats = await client.purge(0.01, ["completed"])
    assert run_id in stats.purged
    assert await backend.status.get(run_id) is None and await backend.context.get_all(run_id) == {}
