"""``Capabilities.ends``: the commit of a run's last job (the graph's only terminal node, its result known before the
commit) ends the run in the same step, and the engine then neither transitions the status nor acks; a commit that
is not given the end (a recovery's, one of a graph with several terminal nodes) leaves the end to the engine as
before, and a run whose commit left nothing pending without its end is still ended exactly once."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from flowcraft import App, Flow, FlowRuntime, NodeContext
from flowcraft.backends.memory import memory_backend
from flowcraft.client import Client
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.events import Event
from flowcraft.spi import Backend, Committed, Transition


async def plus_one(ctx: NodeContext) -> int:
    return int(ctx.input or 0) + 1


def _chain() -> Flow:
    flow = Flow("chain", version="1")
    flow.node("a", plus_one).node("b", plus_one).node("c", plus_one)
    return flow.edge("a", "b").edge("b", "c")


def _spy(backend: Backend) -> tuple[list[Transition], list[Committed], Counter[str]]:
    """Record the backend's commits (with what each returned) and count its status transitions and acks."""
    transitions: list[Transition] = []
    results: list[Committed] = []
    calls: Counter[str] = Counter()
    commit = backend.coordination.commit

    async def committing(transition: Transition) -> Committed:
        transitions.append(transition)
        committed = await commit(transition)
        results.append(committed)
        return committed

    backend.coordination.commit = committing  # type: ignore[method-assign]
    for component, name in ((backend.status, "transition"), (backend.status, "transition_with_context"),
                            (backend.queue, "ack")):
        method = getattr(component, name)

        async def counted(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return await _method(*args, **kwargs)

        setattr(component, name, counted)
    return transitions, results, calls


async def test_the_last_commit_ends_the_run_and_nothing_else_does() -> None:
    """Only the terminal node's commit carries the end; it ends the run (the record it returns is the stored one),
    run:finish is emitted once, and the engine makes no status transition and no ack of its own."""
    events: list[Event] = []
    backend = memory_backend()
    transitions, results, calls = _spy(backend)
    async with FlowRuntime(app=App([_chain()], listeners=[events.append]), backend=backend) as rt:
        result = await rt.run("chain", 0, timeout=10)
        record = await backend.status.get(result.run_id)
    assert result.status == "completed" and result.output == 3
    assert [(t.job_key, t.end is not None) for t in transitions] == [("0:a", False), ("0:b", False), ("0:c", True)]
    ending = transitions[-1].end
    assert ending is not None and ending.result == 3 and dict(ending.fields) == {"awaiting": []}
    assert [r.ended is not None for r in results] == [False, False, True]
    assert results[-1].ended == record
    assert calls == Counter()  # every delivery acked by its commit; the end made by the last one
    assert [e.name for e in events].count("run:finish") == 1


async def test_several_terminal_nodes_end_as_before() -> None:
    """A graph with two terminal nodes: the result needs a read, so no commit carries the end; the engine ends the
    run after the last commit (one transition with the context) and acks that delivery itself."""
    flow = Flow("fork", version="1")
    flow.node("a", plus_one).node("b", plus_one).node("c", plus_one).edge("a", "b").edge("a", "c")
    backend = memory_backend()
    transitions, _, calls = _spy(backend)
    async with FlowRuntime(flows=[flow], backend=backend) as rt:
        result = await rt.run("fork", 0, timeout=10)
    assert result.status == "completed" and result.output == {"b": 2, "c": 2}
    assert all(t.end is None for t in transitions)
    assert calls == Counter({"transition_with_context": 1, "ack": 1})


@pytest.mark.parametrize("dies_at", ["after_commit", "after_enqueue"])
async def test_a_recovery_commit_is_not_given_the_end_and_the_run_ends_once(dies_at: str) -> None:
    """The last job committed by a worker that does not end runs in commits, which died before the end: its
    redelivery recovers (its commit is a replay: not given the end, its result read from the context) and ends the
    run once, through the status transition, with the result the first delivery computed."""
    app = App([_chain()])
    backend = memory_backend(visibility_timeout=0.2)
    client = Client(backend, app)
    run_id = await client.start("chain", 0)
    engine = Engine(app, backend, options=EngineOptions(lease_seconds=5))
    old_worker = dataclasses.replace(backend)  # the same components, seen without ``ends``
    old_worker.capabilities = dataclasses.replace(backend.capabilities, ends=False)

    def die(point: str) -> None:
        if point == dies_at:
            raise RuntimeError(point)

    dying = Engine(app, old_worker, options=EngineOptions(lease_seconds=0.1), fault=die)
    handled: list[str] = []
    while "c" not in handled:
        for delivery in await backend.queue.dequeue(1, 1.0):
            handled.append(delivery.job.node_id)
            if delivery.job.node_id == "c":
                with pytest.raises(RuntimeError, match=dies_at):
                    await dying.handle(delivery)
            else:
                await engine.handle(delivery)
    record = await backend.status.get(run_id)
    assert record is not None and record.status == "running"
    transitions, results, calls = _spy(backend)
    for delivery in await backend.queue.dequeue(1, 2.0):  # the last job, back once its visibility lapsed
        assert delivery.job.node_id == "c"
        await engine.handle(delivery)
    assert [(t.job_key, t.recovery, t.end) for t in transitions] == [("0:c", True, None)]
    assert results[0].pending == 0 and results[0].ended is None
    assert calls == Counter({"transition_with_context": 1, "ack": 1})
    result = await client.status(run_id)
    assert result.status == "completed" and result.output == 3
    assert await backend.queue.dequeue(1, 0.4) == []
