"""A run's timeline on the ``rq`` backend (issue 18, item 1): the entries ride in the completion's context
writes of the Redis commit script; failed attempts, skips and a failing node too; running, awaiting and
cancelled are read from the coordination store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from flowcraft import App, Engine, EngineOptions, Flow, NodeContext, NodeResult, Worker
from flowcraft.client import Client
from flowcraft.plugins import registry
from flowcraft.spi import Backend

RELEASE = asyncio.Event()


async def flaky(ctx: NodeContext) -> NodeResult:
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt}")
    return NodeResult(output=ctx.attempt, action="yes")


async def echo(ctx: NodeContext) -> Any:
    return ctx.input


async def broken(ctx: NodeContext) -> None:
    raise ValueError("bad input")


async def held(ctx: NodeContext) -> str:
    await RELEASE.wait()
    return "held"


def flows() -> list[Flow]:
    branch = Flow("timeline-branch")
    branch.node("f", flaky, retries=2, retry_delay=0.05).node("yes", echo).node("no", echo).node("after", echo)
    branch.edge("f", "yes", action="yes").edge("f", "no", action="no").edge("no", "after")
    fails = Flow("timeline-fails").node("b", broken, retries=1, retry_delay=0.05)
    states = Flow("timeline-states").node("gate", uses="wait").node("slow", held)
    return [branch, fails, states]


APP = App(flows=flows())


@pytest_asyncio.fixture
async def client(redis_url: str, redis_prefix: str) -> AsyncIterator[Client]:
    backend: Backend = registry().build("rq", {"redis_url": redis_url, "key_prefix": redis_prefix,
                                               "visibility_timeout": 2})
    worker = Worker(Engine(APP, backend, options=EngineOptions(lease_seconds=2)), concurrency=8, poll_wait=0.2)
    task = asyncio.create_task(worker.run())
    try:
        yield Client(backend, APP)
    finally:
        worker.stop()
        await task
        await backend.close()


async def test_retries_skips_and_hidden_keys_on_rq(client: Client) -> None:
    result = await client.run("timeline-branch", 1, timeout=20)
    assert result.status == "completed" and result.output == 3
    by_node = {visit.node_id: visit for visit in result.timeline}
    assert {k: v.state for k, v in by_node.items()} == {"f": "done", "yes": "done", "no": "skipped",
                                                         "after": "skipped"}
    assert [(a.attempt, a.error) for a in by_node["f"].attempts] == [
        (1, "ConnectionError: attempt 1"), (2, "ConnectionError: attempt 2"), (3, None)]
    assert all(a.worker and a.started_at and a.finished_at for a in by_node["f"].attempts)
    assert result.timeline[0].node_id == "f" and by_node["f"].action == "yes"
    assert result.context == {} and result.outputs == {"f": 3, "yes": 3}
    assert await client.timeline(result.run_id) == result.timeline


async def test_a_failed_node_keeps_every_attempt_on_rq(client: Client) -> None:
    result = await client.run("timeline-fails", timeout=20)
    assert result.status == "failed"
    (visit,) = result.timeline
    assert visit.state == "failed" and visit.error == "ValueError: bad input" and len(visit.attempts) == 2


async def test_running_awaiting_then_cancelled_on_rq(client: Client) -> None:
    RELEASE.clear()
    run_id = await client.start("timeline-states")
    states: dict[str, str] = {}
    for _ in range(200):
        states = {v.node_id: v.state for v in await client.timeline(run_id)}
        if states == {"gate": "awaiting", "slow": "running"}:
            break
        await asyncio.sleep(0.05)
    assert states == {"gate": "awaiting", "slow": "running"}
    assert await client.cancel(run_id)
    cancelled = await client.status(run_id)
    RELEASE.set()  # the worker's node may still finish (it learns of the cancel at its next heartbeat)
    assert {v.node_id: v.state for v in cancelled.timeline} == {"gate": "cancelled", "slow": "cancelled"}
