"""A run's start in one store step (``Capabilities.starts``, ``CoordinationStore.start``) as the engine's
``RunControl.start`` takes it: the 3-step start's outcomes, its duplicate-id and subflow re-delivery rules."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from flowcraft import Flow, InvalidStateError, NodeContext
from flowcraft.app import App
from flowcraft.backends.memory import memory_backend
from flowcraft.engine.core import Engine
from flowcraft.engine.events import TRACE_PAYLOAD
from flowcraft.engine.worker import Worker
from flowcraft.spi import Backend, RunRecord


async def echo(ctx: NodeContext) -> Any:
    return ctx.input


APP = App(flows=[Flow("two").node("a", echo).node("b", echo).edge("a", "b")])
PARENT = {"run_id": "parent", "blueprint_id": "p", "node_id": "sub", "visit": 0, "attempt": 1, "version": None,
          "depth": 1}


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    built = memory_backend()
    await built.setup()
    assert built.capabilities.starts
    yield built
    await built.close()


def counted(backend: Backend) -> Counter[str]:
    """Count the start's store calls (``start`` and the 3 steps)."""
    calls: Counter[str] = Counter()
    for component, name in ((backend.status, "create"), (backend.coordination, "schedule"),
                            (backend.queue, "enqueue"), (backend.coordination, "start")):
        method: Callable[..., Awaitable[Any]] = getattr(component, name)

        async def call(*args: Any, _method: Callable[..., Awaitable[Any]] = method, _name: str = name) -> Any:
            calls[_name] += 1
            return await _method(*args)

        setattr(component, name, call)
    return calls


async def test_a_start_is_one_store_call_and_the_run_completes(backend: Backend) -> None:
    engine, calls = Engine(APP, backend), counted(backend)
    run_id = await engine.runs.start("two", {"x": 1})
    assert calls == {"start": 1}
    record = await backend.status.get(run_id)
    assert record is not None and record.status == "running" and record.input == {"x": 1}
    assert record.version == APP.version("two") and record.blueprint_hash == APP.content_hash("two")
    assert [p.job.node_id for p in await backend.coordination.jobs(run_id)] == ["a"]
    worker = Worker(engine, poll_wait=0.1)
    task = asyncio.create_task(worker.run())
    try:
        result = await engine.runs.result(run_id)
        while result.status == "running":
            await backend.status.wait_for_change(run_id, 0.5)
            result = await engine.runs.result(run_id)
    finally:
        worker.stop()
        await task
    assert result.status == "completed" and result.outputs["b"] == {"x": 1}


async def test_a_start_with_an_initial_context_takes_the_three_steps(backend: Backend) -> None:
    engine, calls = Engine(APP, backend), counted(backend)
    run_id = await engine.runs.start("two", 1, context={"k": "v"})
    assert calls == {"create": 1, "schedule": 1, "enqueue": 1}
    assert await backend.context.get_many(run_id, ["k"]) == {"k": "v"}


async def test_a_second_start_of_an_id_is_refused_and_changes_nothing(backend: Backend) -> None:
    engine = Engine(APP, backend)
    await engine.runs.start("two", 1, run_id="r1")
    before = await backend.status.get("r1")
    with pytest.raises(InvalidStateError, match="already exists"):
        await engine.runs.start("two", 2, run_id="r1")
    assert await backend.status.get("r1") == before
    assert [p.job.input for p in await backend.coordination.jobs("r1")] == [1]


async def test_a_redelivered_subflow_start_of_a_started_child_writes_nothing(backend: Backend) -> None:
    engine = Engine(APP, backend)
    assert await engine.runs.start("two", 1, run_id="child", parent=PARENT) == "child"
    [delivery] = await backend.queue.dequeue(1, 1.0)
    calls = counted(backend)
    assert await engine.runs.start("two", 1, run_id="child", parent=PARENT) == "child"  # the parent's job again
    assert calls == {"start": 1}
    assert [p.job.node_id for p in await backend.coordination.jobs("child")] == ["a"]
    assert await backend.queue.dequeue(1, 0.2) == []
    await backend.queue.ack(delivery)


async def test_a_redelivered_subflow_start_finishes_a_start_that_died_after_its_record(backend: Backend) -> None:
    """A 3-step start (an older worker, say) that died after the child's record: the record has no jobs and no
    activity; the parent's job delivered again schedules and queues them."""
    engine = Engine(APP, backend)
    await backend.status.create(RunRecord("child", "two", version=APP.version("two"), input=1, parent=PARENT))
    calls = counted(backend)
    assert await engine.runs.start("two", 1, run_id="child", parent=PARENT) == "child"
    assert calls == {"start": 1, "schedule": 1, "enqueue": 1}
    [delivery] = await backend.queue.dequeue(1, 1.0)
    assert delivery.job.node_id == "a" and delivery.job.input == 1
    await backend.queue.ack(delivery)


async def test_a_child_whose_jobs_carry_a_trace_takes_the_three_steps(backend: Backend) -> None:
    """A job carrier opens the run's root span: a re-delivered subflow start of a started child must not, so a
    child run with carriers is started in the 3 steps (the carrier is called once the record is new)."""
    engine = Engine(APP, backend)
    carried: list[str] = []

    def listener(event: Any) -> None:
        return None

    def carrier(run_id: str, blueprint_id: str, parent: Any = None) -> dict[str, str]:
        carried.append(run_id)
        return {"traceparent": "00-x"}

    listener.job_carrier = carrier  # type: ignore[attr-defined]
    engine.events.on("*", listener)
    calls = counted(backend)
    await engine.runs.start("two", 1, run_id="child", parent={**PARENT, TRACE_PAYLOAD: {"traceparent": "00-p"}})
    assert calls == {"create": 1, "schedule": 1, "enqueue": 1} and carried == ["child"]
    await engine.runs.start("two", 1, run_id="child", parent={**PARENT, TRACE_PAYLOAD: {"traceparent": "00-p"}})
    assert carried == ["child"]  # the child had started: no second root span
    calls.clear()
    await engine.runs.start("two", 1, run_id="top")  # not a child: one step, with the carried trace
    assert calls == {"start": 1} and carried == ["child", "top"]
    assert [p.job.payload for p in await backend.coordination.jobs("top")] == [{TRACE_PAYLOAD: {"traceparent": "00-x"}}]
