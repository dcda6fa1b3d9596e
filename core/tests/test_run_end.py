"""A run's end in few steps: the graph's only terminal node gives the result from its own completion (no context
read), a store that declares ``writes_context`` writes it with the final status (one step), one that does not
gets the context write before the transition; and a closed FlowRuntime frees its runs at once."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from flowcraft import Flow, FlowRuntime, NodeContext
from flowcraft.backends.memory import MemoryContextStore, MemoryCoordinationStore, MemoryQueue, MemoryStatusStore
from flowcraft.spi import Backend


async def plus_one(ctx: NodeContext) -> int:
    return int(ctx.input or 0) + 1


def _calls(backend: Backend) -> list[str]:
    """Record the run-end calls the engine makes on ``backend``'s context and status stores, in order."""
    calls: list[str] = []
    context, status = backend.context, backend.status
    get_many, apply = context.get_many, context.apply
    transition, transition_with_context = status.transition, status.transition_with_context

    async def counted_get_many(run_id: str, keys: Any) -> Any:
        calls.append("get_many " + ",".join(keys))
        return await get_many(run_id, keys)

    async def counted_apply(run_id: str, updates: Any, deletes: Any = ()) -> None:
        calls.append("apply " + ",".join(k for k in updates if not k.startswith("_timeline")))
        await apply(run_id, updates, deletes)

    async def counted_transition(run_id: str, from_statuses: Any, to_status: str, changes: Any) -> Any:
        calls.append("transition " + to_status)
        return await transition(run_id, from_statuses, to_status, changes)

    async def counted_with_context(run_id: str, from_statuses: Any, to_status: str, changes: Any, *,
                                   context: Any) -> Any:
        calls.append(f"transition {to_status} with " + ",".join(context))
        return await transition_with_context(run_id, from_statuses, to_status, changes, context=context)

    context.get_many = counted_get_many  # type: ignore[method-assign]
    context.apply = counted_apply  # type: ignore[method-assign]
    status.transition = counted_transition  # type: ignore[method-assign]
    status.transition_with_context = counted_with_context  # type: ignore[method-assign]
    return calls


def _chain() -> Flow:
    flow = Flow("chain")
    flow.node("a", plus_one).node("b", plus_one).node("c", plus_one)
    return flow.edge("a", "b").edge("b", "c")


async def test_one_terminal_node_ends_the_run_in_one_step_without_a_read() -> None:
    """With ``ends`` (the memory preset) the last commit ends the run: no status call at all; without it (a
    coordination store built without the status store) the end is one ``transition_with_context``."""
    async with FlowRuntime(flows=[_chain()]) as rt:
        assert rt.backend.capabilities.writes_context and rt.backend.capabilities.ends
        calls = _calls(rt.backend)
        result = await rt.run("chain", 0, timeout=10)
        assert result.status == "completed" and result.output == 3
        assert calls == []
        assert (await rt.backend.context.get_many(result.run_id, ["_result"])) == {"_result": 3}
    context, queue = MemoryContextStore(), MemoryQueue()
    backend = Backend(queue, context, MemoryStatusStore(context), MemoryCoordinationStore(context, queue=queue))
    assert backend.capabilities.writes_context and not backend.capabilities.ends
    async with FlowRuntime(flows=[_chain()], backend=backend) as rt:
        calls = _calls(backend)
        result = await rt.run("chain", 0, timeout=10)
        assert result.status == "completed" and result.output == 3
        assert calls == ["transition completed with _result"]
        assert (await context.get_many(result.run_id, ["_result"])) == {"_result": 3}


async def test_several_terminal_nodes_read_their_outputs() -> None:
    flow = Flow("fork")
    flow.node("a", plus_one).node("b", plus_one).node("c", plus_one)
    flow.edge("a", "b").edge("a", "c")
    async with FlowRuntime(flows=[flow]) as rt:
        calls = _calls(rt.backend)
        result = await rt.run("fork", 0, timeout=10)
        assert result.status == "completed" and result.output == {"b": 2, "c": 2}
        assert calls == ["get_many _outputs.b,_outputs.c", "transition completed with _result"]


async def test_a_status_store_without_writes_context_gets_the_result_written_first() -> None:
    context = MemoryContextStore()
    queue = MemoryQueue()
    backend = Backend(queue, context, MemoryStatusStore(), MemoryCoordinationStore(context, queue=queue))
    assert not backend.capabilities.writes_context
    async with FlowRuntime(flows=[_chain()], backend=backend) as rt:
        calls = _calls(backend)
        result = await rt.run("chain", 0, timeout=10)
        assert result.status == "completed" and result.output == 3
        assert calls == ["apply _result", "transition completed"]


async def test_a_closed_runtime_frees_its_runs_without_the_cyclic_collector() -> None:
    """No reference cycle keeps the engine, the worker or the memory stores alive once the runtime is dropped (the
    runs a memory store keeps would otherwise wait for the collector's next full pass)."""
    rt = FlowRuntime(flows=[_chain()])
    await rt.run("chain", 0, timeout=10)
    await rt.close()
    refs = [weakref.ref(o) for o in (rt.engine, rt.backend.coordination, rt.backend.queue, rt.backend.status,
                                     rt.backend.context)]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del rt
        assert [ref() is None for ref in refs] == [True] * len(refs)
    finally:
        if was_enabled:
            gc.enable()
