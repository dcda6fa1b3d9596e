"""Bad input never hangs, loops forever or kills a worker (issue 12, items 1-3 and 12), in process.

A node output or context value no store can keep, a blueprint definition the engine cannot run, a node
raising a BaseException: the run fails with a one-line reason (or the input is refused with nothing
written), the job is dead-lettered where it reached a queue, the node's side effects happen once, and the
same runtime serves the next run. Worker processes on sqlite: test_bad_input_workers.py."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowcraft import App, EngineOptions, Flow, FlowRuntime, connect
from flowcraft.backends.memory import (
    MemoryContextStore,
    MemoryCoordinationStore,
    MemoryQueue,
    MemoryStatusStore,
    memory_backend,
)
from flowcraft.client import Client
from flowcraft.errors import ConfigError, InvalidValueError
from flowcraft.spi import Backend, Committed, Transition

HINT_JSON = "(return and store JSON values: dicts with string keys, lists, strings, numbers, booleans, None)"


class Effects:
    """Counts a node's executions, i.e. its side effects."""

    def __init__(self) -> None:
        self.count = 0

    def returning(self, value: Callable[[], Any]) -> Callable[[Any], Any]:
        def node(ctx: Any) -> Any:
            self.count += 1
            return value()
        return node

    def raising(self, error: Callable[[], BaseException]) -> Callable[[Any], Any]:
        def node(ctx: Any) -> Any:
            self.count += 1
            raise error()
        return node


def healthy() -> Flow:
    flow = Flow("healthy")
    flow.node("one", lambda ctx: 1)
    flow.node("two", lambda ctx: ctx.input + 1)
    flow.edge("one", "two")
    return flow


async def run_then_healthy(runtime: FlowRuntime, blueprint_id: str) -> Any:
    """Run ``blueprint_id``, then check the same runtime (and its worker) still completes a healthy run."""
    result = await runtime.run(blueprint_id, timeout=10)
    after = await runtime.run("healthy", timeout=10)
    assert (after.status, after.output) == ("completed", 2)
    return result


async def reasons(runtime: FlowRuntime) -> list[str]:
    return [letter.reason for letter in await runtime.backend.queue.dead_letters()]


# ---------------------------------------------------------------------------------- values no store keeps
async def test_non_json_output_fails_the_run_once_and_dead_letters_the_job() -> None:
    effects = Effects()
    flow = Flow("dates")
    flow.node("stamp", effects.returning(lambda: {"when": [datetime.date(2024, 1, 2)]}))
    async with FlowRuntime([flow, healthy()]) as runtime:
        result = await run_then_healthy(runtime, "dates")
        reason = ("node 'stamp' output at ['when'][0] is of type date, which is not JSON-serialisable "
                  + HINT_JSON)
        assert result.status == "failed"
        assert [(e["node_id"], e["message"]) for e in result.errors] == [("stamp", reason)]
        assert await reasons(runtime) == [reason]
        assert effects.count == 1


async def test_non_json_context_value_and_non_string_key_fail_the_run() -> None:
    async def set_set(ctx: Any) -> int:
        await ctx.context.set("circle", circle)
        return 1

    async def set_key(ctx: Any) -> int:
        await ctx.context.set(7, "seven")
        return 1

    circle: list[Any] = []
    circle.append(circle)
    value_flow, key_flow = Flow("value"), Flow("key")
    value_flow.node("writer", set_set)
    key_flow.node("writer", set_key)
    async with FlowRuntime([value_flow, key_flow, healthy()]) as runtime:
        value = await run_then_healthy(runtime, "value")
        key = await run_then_healthy(runtime, "key")
        assert value.errors[0]["message"] == (
            "node 'writer' context value 'circle' at [0] refers back to itself (a circular reference) " + HINT_JSON)
        assert key.errors[0]["message"] == (
            "node 'writer' context key 7 is of type int; context keys must be strings " + HINT_JSON)
        assert (value.status, key.status) == ("failed", "failed")
        assert "_outputs.writer" not in value.context and 7 not in key.context  # nothing of either committed
        assert len(await reasons(runtime)) == 2


async def test_non_json_fallback_output_fails_the_run() -> None:
    effects = Effects()
    flow = Flow("fallback")
    flow.node("primary", effects.raising(lambda: ValueError("down")), fallback="backup")
    flow.node("backup", effects.returning(lambda: {1, 2}))
    async with FlowRuntime([flow, healthy()]) as runtime:
        result = await run_then_healthy(runtime, "fallback")
        assert result.errors[0]["message"] == (
            "node 'backup' output is of type set, which is not JSON-serialisable " + HINT_JSON)
        assert effects.count == 2  # the primary once, its fallback once


# ---------------------------------------------------------------------------------- broken definitions
def broken(kind: str, effects: Effects) -> Flow:
    """A valid blueprint; ``break_after_load`` then changes one value to one the engine cannot use."""
    flow = Flow(kind)
    first = effects.raising(lambda: ValueError("down")) if kind == "fallback" else effects.returning(lambda: [1, 2])
    flow.node("first", first, fallback="spare" if kind == "fallback" else None)
    flow.node("spare", lambda ctx: "spare")
    if kind in ("iterations", "inputs"):
        flow.node("second", effects.returning(lambda: 2), inputs={"x": "first"})
        flow.edge("first", "second")
    if kind == "chunks":
        flow.map("each", lambda ctx: ctx.input, chunk_size=2)
        flow.edge("first", "each")
    if kind == "subflow":
        flow.subflow("child", "healthy", inputs={"seed": "first"})
        flow.edge("first", "child")
    return flow


def break_after_load(runtime: FlowRuntime, kind: str) -> None:
    """Change a loaded (validated) blueprint in place, as code holding on to its parts could."""
    blueprint = runtime.app.blueprint(kind)
    assert blueprint is not None
    nodes = {node.id: node for node in blueprint.nodes}
    if kind == "fallback":
        object.__setattr__(nodes["first"].config, "fallback", "nowhere")  # a frozen dataclass, changed anyway
    elif kind == "iterations":
        blueprint.metadata["maxIterations"] = "many"  # type: ignore[index]
    elif kind == "inputs":
        nodes["second"].inputs["x"] = 5  # type: ignore[index]
    elif kind == "chunks":
        nodes["each"].params["chunkSize"] = "big"  # type: ignore[index]
    else:
        nodes["child"].params["inputs"] = ["first"]  # type: ignore[index]


@pytest.mark.parametrize(("kind", "node", "problem"), [
    ("fallback", "first", "blueprint 'fallback': nodes[0].config.fallback (node 'first'): 'nowhere' is not a node id"),
    ("iterations", "first", "blueprint 'iterations': metadata.maxIterations: must be an integer >= 1, got 'many'"),
    ("inputs", "second", "blueprint 'inputs': nodes[2].inputs (node 'second'): must be a string or an object of "
                         "strings (a node id, context key or path), got an object"),
    ("chunks", "each", "blueprint 'chunks': nodes[2].params.chunkSize (node 'each'): must be an integer >= 1, "
                       "got 'big'"),
    ("subflow", "child", "blueprint 'subflow': nodes[2].params.inputs (node 'child'): must be an object of strings "
                         "({child key: parent key} for inputs, {parent key: child key} for outputs)"),
])
async def test_a_definition_the_engine_cannot_run_fails_the_run_at_once(kind: str, node: str, problem: str) -> None:
    effects = Effects()
    async with FlowRuntime([broken(kind, effects), healthy()]) as runtime:
        break_after_load(runtime, kind)
        result = await run_then_healthy(runtime, kind)
        reason = f"{problem} (fix the blueprint and start a new run)"
        assert result.status == "failed"
        assert [(e["node_id"], e["message"]) for e in result.errors] == [(node, reason)]
        assert await reasons(runtime) == [reason]
        assert effects.count == 1  # "first" ran once; nothing ran again


# ---------------------------------------------------------------------------------- engine errors
class BrokenCommits(MemoryCoordinationStore):
    """A store whose commit of node ``node_id`` raises ``error`` the first ``times`` times (a bug, or an outage)."""

    def __init__(self, node_id: str, error: Callable[[], Exception], times: int) -> None:
        super().__init__()
        self.node_id, self.error, self.times = node_id, error, times

    async def commit(self, transition: Transition) -> Committed:
        if transition.completion is not None and transition.completion.node_id == self.node_id and self.times > 0:
            self.times -= 1
            raise self.error()
        return await super().commit(transition)


def runtime_with(store: BrokenCommits, *flows: Flow) -> FlowRuntime:
    # memory components built alone (memory_backend's are wired to its own coordination store), with the broken
    # store (which keeps no context)
    backend = Backend(MemoryQueue(), MemoryContextStore(), MemoryStatusStore(), store, name="memory")
    return FlowRuntime([*flows, healthy()], backend=backend, options=EngineOptions(max_bounces=3))


async def test_an_engine_bug_gets_bounded_redeliveries_then_fails_the_run() -> None:
    effects = Effects()
    flow = Flow("buggy")
    flow.node("node", effects.returning(lambda: 1))
    async with runtime_with(BrokenCommits("node", lambda: TypeError("unsupported operand"), 100), flow) as runtime:
        result = await run_then_healthy(runtime, "buggy")
        reason = ("handling job '0:node' failed on each of 3 deliveries: TypeError: unsupported operand "
                  "(this is a Flowcraft bug: report it with the worker log)")
        assert [(e["node_id"], e["message"]) for e in result.errors] == [("node", reason)]
        assert await reasons(runtime) == [reason]
        assert effects.count == 3  # bounded by max_bounces


async def test_a_transient_store_error_is_retried_without_a_bound() -> None:
    effects = Effects()
    flow = Flow("flaky")
    flow.node("node", effects.returning(lambda: 1))
    store = BrokenCommits("node", lambda: ConnectionError("store unreachable"), 4)  # more than max_bounces
    async with runtime_with(store, flow) as runtime:
        result = await run_then_healthy(runtime, "flaky")
        assert (result.status, result.output) == ("completed", 1)
        assert await reasons(runtime) == []
        assert effects.count == 5


# ---------------------------------------------------------------------------------- a node's BaseException
BASE_EXCEPTIONS: list[tuple[Callable[[], BaseException], str]] = [
    (lambda: SystemExit(3), "SystemExit: 3"),
    (KeyboardInterrupt, "KeyboardInterrupt"),
    (GeneratorExit, "GeneratorExit"),
    (asyncio.CancelledError, "CancelledError"),
    (lambda: BaseException("odd"), "BaseException: odd"),
]


@pytest.mark.parametrize(("error", "described"), BASE_EXCEPTIONS)
@pytest.mark.parametrize("style", ["sync", "async", "async with timeout"])
async def test_a_node_base_exception_is_a_node_failure_with_retries(
    error: Callable[[], BaseException], described: str, style: str
) -> None:
    effects = Effects()
    raising = effects.raising(error)

    async def async_raising(ctx: Any) -> Any:
        return raising(ctx)

    flow = Flow("base")
    flow.node("node", raising if style == "sync" else async_raising, retries=1,
              timeout=5 if style == "async with timeout" else None)
    async with FlowRuntime([flow, healthy()]) as runtime:
        result = await run_then_healthy(runtime, "base")
        assert [(e["node_id"], e["message"]) for e in result.errors] == [("node", described)]
        assert effects.count == 2  # the first attempt and its one retry, no more
        assert await reasons(runtime) == []  # a node failure, not a poison job


@pytest.mark.parametrize(("error", "described"), BASE_EXCEPTIONS)
async def test_a_node_base_exception_runs_the_fallback(error: Callable[[], BaseException], described: str) -> None:
    flow = Flow("saved")
    flow.node("node", Effects().raising(error), fallback="backup")
    flow.node("backup", lambda ctx: "saved")
    async with FlowRuntime([flow, healthy()]) as runtime:
        result = await run_then_healthy(runtime, "saved")
        assert (result.status, result.outputs["node"]) == ("completed", "saved")


async def test_cancelling_a_run_still_stops_its_running_node() -> None:
    started = asyncio.Event()

    async def slow(ctx: Any) -> int:
        started.set()
        await asyncio.sleep(30)
        return 1

    flow = Flow("slow")
    flow.node("node", slow)
    async with FlowRuntime([flow, healthy()]) as runtime:
        run_id = await runtime.start("slow")
        await asyncio.wait_for(started.wait(), 5)
        assert await runtime.cancel(run_id)
        result = await runtime.wait(run_id, timeout=5)
        assert (result.status, result.errors) == ("cancelled", [])
        after = await runtime.run("healthy", timeout=10)
        assert after.status == "completed"


# ---------------------------------------------------------------------------------- start and resume
def approval() -> Flow:
    flow = Flow("approval")
    flow.wait("gate")
    flow.node("done", lambda ctx: ctx.input)
    flow.edge("gate", "done")
    return flow


@pytest.fixture(params=["memory", "sqlite"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    app = App(flows=[approval(), healthy()])
    if request.param == "memory":
        yield Client(memory_backend(), app)
        return
    sqlite_client = connect("sqlite", app=app, path=str(tmp_path / "runs.db"))
    yield sqlite_client
    await sqlite_client.close()


@pytest.mark.parametrize(("input", "context", "message"), [
    (object(), None, "the run input is of type object, which is not JSON-serialisable"),
    ({"a": b"bytes"}, None, "the run input at ['a'] is of type bytes, which is not JSON-serialisable"),
    (1, {"when": datetime.date(2024, 1, 2)}, "the run context value 'when' is of type date, which is not "
                                             "JSON-serialisable"),
    (1, {3: "x"}, "the run context key 3 is of type int; context keys must be strings"),
])
async def test_start_refuses_a_value_no_store_keeps_before_writing_anything(
    client: Client, input: Any, context: Any, message: str
) -> None:
    with pytest.raises(InvalidValueError) as raised:
        await client.start("healthy", input, context=context, run_id="refused")
    assert str(raised.value) == (f"{message} (pass JSON values: dicts with string keys, lists, strings, numbers, "
                                 "booleans, None)")
    assert "\n" not in str(raised.value)
    assert await client.runs() == ([], None)
    assert await client.backend.queue.dequeue(10, 0.0) == []
    assert await client.backend.context.get_all("refused") == {}


async def test_resume_refuses_a_value_no_store_keeps_and_the_run_still_waits(client: Client) -> None:
    run_id = await client.start("approval", run_id="waiting")
    engine = client.engine
    for _ in range(3):  # the client process handles the jobs itself
        for delivery in await client.backend.queue.receive(10, 0.1, "test", 30.0):
            await engine.handle(delivery)
    assert (await client.status(run_id)).status == "awaiting"
    with pytest.raises(InvalidValueError, match=r"^the resume output at \['x'\] is of type set, which is not "):
        await client.resume(run_id, output={"x": {1}})
    status = await client.status(run_id)
    assert (status.status, status.awaiting[0]["node_id"]) == ("awaiting", "gate")
    await client.resume(run_id, output={"x": [1]})
    for _ in range(3):
        for delivery in await client.backend.queue.receive(10, 0.1, "test", 30.0):
            await engine.handle(delivery)
    done = await client.status(run_id)
    assert (done.status, done.output) == ("completed", {"x": [1]})


async def test_a_replaced_sqlite_database_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    sqlite_client = connect("sqlite", app=App(flows=[healthy()]), path=str(path))
    try:
        await sqlite_client.start("healthy", run_id="before")
        shutil.copy(path, tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", path)
        with pytest.raises(ConfigError) as raised:
            await sqlite_client.start("healthy", run_id="after")
        assert str(raised.value) == (f"the SQLite database {path} was replaced by another file while this process "
                                     "used it (stop every worker and client using it, then start them again on the "
                                     "current file)")
    finally:
        await sqlite_client.close()
    reopened = connect("sqlite", app=App(flows=[healthy()]), path=str(path))
    try:
        assert [record.run_id for record in (await reopened.runs())[0]] == ["before"]
    finally:
        await reopened.close()
