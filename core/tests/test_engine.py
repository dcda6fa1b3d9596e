"""The engine on the memory backend: features, and the cases the TypeScript original gets wrong that apply
in one process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowcraft import BaseNode, Blueprint, Flow, FlowRuntime, Middleware, NodeContext, NodeResult
from flowcraft.app import App
from flowcraft.backends.memory import memory_backend
from flowcraft.client import Client
from flowcraft.engine.core import Engine
from flowcraft.errors import BlueprintError
from flowcraft.spi import Backend


async def value(ctx: NodeContext) -> Any:
    return ctx.params.get("value", ctx.input)


async def plus_one(ctx: NodeContext) -> int:
    return int(ctx.input or 0) + 1


async def run(flow: Flow, input: Any = None, **kwargs: Any) -> Any:
    async with FlowRuntime(flows=[flow], **kwargs) as rt:
        return await rt.run(flow.id, input, timeout=10)


# ---------------------------------------------------------------- basics
async def test_chain_passes_outputs_along() -> None:
    flow = Flow("chain")
    flow.node("a", plus_one).node("b", plus_one).node("c", plus_one)
    flow.edge("a", "b").edge("b", "c")
    result = await run(flow, 0)
    assert result.status == "completed"
    assert result.outputs == {"a": 1, "b": 2, "c": 3}
    assert result.output == 3


async def test_sync_node_functions_run_off_the_event_loop() -> None:
    loop_thread: list[bool] = []

    def blocking(ctx: NodeContext) -> str:
        import threading

        loop_thread.append(threading.current_thread() is threading.main_thread())
        return "done"

    flow = Flow("sync").node("s", blocking)
    result = await run(flow)
    assert result.output == "done"
    assert loop_thread == [False]


async def test_class_node_prep_exec_post() -> None:
    class Greeter(BaseNode):
        def prep(self, ctx: NodeContext) -> str:
            return str(ctx.input).upper()

        async def exec(self, prep_result: Any, ctx: NodeContext) -> str:
            return f"{self.params['greeting']} {prep_result}"

        def post(self, exec_result: Any, ctx: NodeContext) -> NodeResult:
            return NodeResult(output=exec_result + "!", action="greeted")

    flow = Flow("greet").node("g", Greeter, params={"greeting": "hello"}).node("after", value)
    flow.edge("g", "after", action="greeted")
    result = await run(flow, "ada")
    assert result.outputs["g"] == "hello ADA!"
    assert result.outputs["after"] == "hello ADA!"


async def test_context_writes_are_committed_with_the_node() -> None:
    async def writer(ctx: NodeContext) -> None:
        await ctx.context.set("seen", [1, 2])
        await ctx.context.set("gone", 1)
        await ctx.context.delete("gone")
        assert await ctx.context.get("seen") == [1, 2]

    async def reader(ctx: NodeContext) -> Any:
        return await ctx.context.get("seen")

    flow = Flow("ctx").node("w", writer).node("r", reader).edge("w", "r")
    result = await run(flow)
    assert result.context["seen"] == [1, 2]
    assert "gone" not in result.context
    assert result.outputs["r"] == [1, 2]


async def test_idempotency_key_is_stable_per_node_and_visit() -> None:
    keys: list[str] = []

    async def record(ctx: NodeContext) -> None:
        keys.append(ctx.idempotency_key)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    flow = Flow("idem").node("n", record, retries=1)
    result = await run(flow)
    assert result.status == "completed"
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].endswith(":n:0")


# ---------------------------------------------------------------- cases the TypeScript original gets wrong
async def test_case1_node_returning_none_or_only_an_action_completes() -> None:
    async def nothing(ctx: NodeContext) -> None:
        return None

    async def only_action(ctx: NodeContext) -> NodeResult:
        return NodeResult(action="go")

    flow = Flow("none").node("a", nothing).node("b", only_action).node("c", value)
    flow.edge("a", "b").edge("b", "c", action="go")
    result = await run(flow)
    assert result.status == "completed"
    assert result.outputs == {"a": None, "b": None, "c": None}


async def test_case2_all_join_fires_once_under_redelivery() -> None:
    """Every delivery is handled twice (the queue redelivers it after the first ack)."""
    calls: dict[str, int] = {}

    async def count(ctx: NodeContext) -> str:
        calls[ctx.node_id] = calls.get(ctx.node_id, 0) + 1
        return ctx.node_id

    flow = Flow("redeliver").node("s", count)
    for name in ("p1", "p2", "p3"):
        flow.node(name, count).edge("s", name).edge(name, "j")
    flow.node("j", value)
    backend = memory_backend()
    app = App(flows=[flow])
    engine = Engine(app, backend)
    original_handle = engine.handle

    async def handle_twice(delivery: Any) -> None:
        await original_handle(delivery)
        await original_handle(delivery)  # the same message again: a redelivery

    engine.handle = handle_twice  # type: ignore[method-assign]
    from flowcraft.engine.worker import Worker

    worker = Worker(engine, concurrency=4, poll_wait=0.05)
    task = asyncio.create_task(worker.run())
    client = Client(backend, app)
    result = await client.run("redeliver", None, timeout=10)
    worker.stop()
    await task
    assert result.status == "completed"
    assert result.outputs["j"] == {"p1": "p1", "p2": "p2", "p3": "p3"}
    assert all(n == 1 for n in calls.values()), calls


async def test_case3_any_join_with_three_predecessors_runs_once() -> None:
    runs: list[Any] = []

    async def join(ctx: NodeContext) -> Any:
        runs.append(ctx.input)
        return ctx.input

    async def slow(ctx: NodeContext) -> str:
        await asyncio.sleep(0.01 * int(ctx.params["n"]))
        return ctx.node_id

    flow = Flow("any").node("s", value)
    for n in range(3):
        flow.node(f"p{n}", slow, uses="slow", params={"n": n}).edge("s", f"p{n}").edge(f"p{n}", "j")
    flow.node("j", join, join="any")
    result = await run(flow)
    assert result.status == "completed"
    assert len(runs) == 1
    assert list(runs[0]) == ["p0"]


async def test_case4_join_counts_nodes_not_edges_and_input_is_by_predecessor() -> None:
    async def branch(ctx: NodeContext) -> NodeResult:
        return NodeResult(output=ctx.node_id, action="x")

    flow = Flow("nodes-not-edges").node("s", value).node("a", branch).node("b", value).node("j", value)
    flow.edge("s", "a").edge("s", "b")
    flow.edge("a", "j", action="x").edge("a", "j", action="y")  # two edges, one predecessor
    flow.edge("b", "j", transform="{'from_b': input}")
    result = await run(flow, 5)
    assert result.status == "completed"
    assert result.outputs["j"] == {"a": "a", "b": {"from_b": 5}}


async def test_case6_retries_back_off_and_the_blueprint_is_not_mutated() -> None:
    attempts: list[tuple[int, float]] = []

    async def flaky(ctx: NodeContext) -> str:
        attempts.append((ctx.attempt, asyncio.get_running_loop().time()))
        if ctx.attempt < 3:
            raise ConnectionError("try again")
        return "ok"

    flow = Flow("retry").node("f", flaky, retries=2, retry_delay=0.05, retry_backoff=2.0)
    before = flow.to_blueprint().to_json()
    async with FlowRuntime(flows=[flow]) as rt:
        result = await rt.run("retry", timeout=10)
        assert rt.app.blueprint("retry").to_json() == before  # type: ignore[union-attr]
    assert result.status == "completed" and result.output == "ok"
    assert [a for a, _ in attempts] == [1, 2, 3]
    gaps = [attempts[i + 1][1] - attempts[i][1] for i in range(2)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # exponential backoff


async def test_case6_exhausted_retries_fail_the_run_with_the_error() -> None:
    async def broken(ctx: NodeContext) -> None:
        raise ValueError("bad input")

    result = await run(Flow("fail").node("b", broken, retries=1))
    assert result.status == "failed"
    assert result.errors[0]["node_id"] == "b"
    assert "ValueError: bad input" in result.errors[0]["message"]


async def test_case8_conditional_branches_to_different_terminal_nodes_complete() -> None:
    flow = Flow("branches").node("s", value).node("big", value).node("small", value)
    flow.edge("s", "big", condition="result.output > 10").edge("s", "small", condition="result.output <= 10")
    big = await run(flow, 50)
    assert big.status == "completed" and set(big.outputs) == {"s", "big"}
    small = await run(flow, 1)
    assert small.status == "completed" and set(small.outputs) == {"s", "small"}


async def test_case8_skipped_branch_does_not_block_a_join() -> None:
    flow = Flow("dpe").node("s", value).node("a", value).node("b", value).node("c", value).node("j", value)
    flow.edge("s", "a", condition="result.output == 'a'").edge("s", "b", condition="result.output == 'b'")
    flow.edge("a", "c").edge("c", "j").edge("b", "j")
    result = await run(flow, "b")
    assert result.status == "completed"
    assert result.outputs["j"] == {"b": "b"}
    assert "a" not in result.outputs and "c" not in result.outputs


async def test_case8_parallel_terminals_publish_final_status_once() -> None:
    finishes: list[str] = []
    flow = Flow("terminals").node("s", value).node("t1", value).node("t2", value)
    flow.edge("s", "t1").edge("s", "t2")
    async with FlowRuntime(flows=[flow]) as rt:
        rt.on("run:finish", lambda e: finishes.append(e.data["status"]))
        result = await rt.run("terminals", 1, timeout=10)
    assert result.status == "completed"
    assert result.output == {"t1": 1, "t2": 1}
    assert finishes == ["completed"]


async def test_case8_failed_run_is_never_overwritten_by_completed() -> None:
    async def boom(ctx: NodeContext) -> None:
        raise RuntimeError("boom")

    async def slow(ctx: NodeContext) -> str:
        await asyncio.sleep(0.1)
        return "late"

    flow = Flow("fail-wins").node("s", value).node("bad", boom).node("slow", slow)
    flow.edge("s", "bad").edge("s", "slow")
    async with FlowRuntime(flows=[flow]) as rt:
        result = await rt.run("fail-wins", timeout=10)
        await asyncio.sleep(0.2)
        after = await rt.status(result.run_id)
    assert result.status == "failed"
    assert after.status == "failed"


async def test_case10_loop_runs_until_condition_and_continues_after() -> None:
    async def increment(ctx: NodeContext) -> int:
        count = int(await ctx.context.get("count", 0)) + 1
        await ctx.context.set("count", count)
        return count

    flow = Flow("loop").node("init", value).node("body", increment).node("after", value)
    flow.edge("init", "body")
    flow.loop("repeat", start="body", end="body", condition="context.count < 5")
    flow.edge("repeat", "after")
    result = await run(flow)
    assert result.status == "completed"
    assert result.context["count"] == 5
    assert result.outputs["after"] == 5


async def test_case10_loop_iteration_cap_fails_clearly() -> None:
    flow = Flow("forever").node("body", value)
    flow.node("start", value).edge("start", "body")
    flow.loop("again", start="body", end="body", condition="true", max_iterations=20)
    result = await run(flow)
    assert result.status == "failed"
    assert "exceeded 20 iterations" in result.errors[0]["message"]


async def test_case12_fallback_runs_only_when_primary_fails() -> None:
    ran: list[str] = []

    async def primary(ctx: NodeContext) -> str:
        ran.append("primary")
        if ctx.input == "fail":
            raise RuntimeError("primary failed")
        return "primary"

    async def backup(ctx: NodeContext) -> str:
        ran.append("backup")
        return "backup"

    flow = Flow("fb").node("p", primary, fallback="b").node("b", backup).node("next", value)
    flow.edge("p", "next")
    ok = await run(flow, "fine")
    assert ok.status == "completed" and ok.outputs["next"] == "primary" and ran == ["primary"]
    ran.clear()
    failed = await run(flow, "fail")
    assert failed.status == "completed" and failed.outputs["next"] == "backup"
    assert ran == ["primary", "backup"]
    assert "b" not in failed.outputs  # the fallback node never ran as a node of its own


async def test_class_node_fallback_method() -> None:
    class Careful(BaseNode):
        def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            raise RuntimeError("nope")

        def fallback(self, error: BaseException, ctx: NodeContext) -> str:
            return f"recovered from {error}"

    result = await run(Flow("cfb").node("c", Careful, retries=1))
    assert result.output == "recovered from nope"


# ---------------------------------------------------------------- timeouts, expressions, events, middleware
async def test_timeout_cancels_the_node_and_fails_after_retries() -> None:
    async def sleepy(ctx: NodeContext) -> None:
        await asyncio.sleep(5)

    result = await run(Flow("slow").node("s", sleepy, timeout=0.05, retries=1))
    assert result.status == "failed"
    assert "timed out after 0.05s" in result.errors[0]["message"]


async def test_bad_condition_at_runtime_fails_the_run_clearly() -> None:
    flow = Flow("badcond").node("s", value).node("t", value)
    flow.edge("s", "t", condition="result.output > 3")
    result = await run(flow, "text")
    assert result.status == "failed"
    assert "expression 'result.output > 3' failed" in result.errors[0]["message"]


def test_invalid_expression_is_rejected_when_the_blueprint_loads() -> None:
    flow = Flow("x").node("a", value).node("b", value).edge("a", "b", condition="__import__('os')")
    with pytest.raises(BlueprintError, match=r"edges\[0\]\.condition \(edge a -> b\): expression \"__import__"):
        App(flows=[flow])


async def test_events_and_middleware() -> None:
    seen: list[str] = []

    class Trace(Middleware):
        async def before_node(self, ctx: NodeContext) -> None:
            seen.append(f"before:{ctx.node_id}")

        async def around_node(self, ctx: NodeContext, call_next: Any) -> Any:
            return (await call_next()) * 10

        async def after_node(self, ctx: NodeContext, result: Any) -> None:
            seen.append(f"after:{ctx.node_id}={result}")

    flow = Flow("mw").node("a", plus_one)
    events: list[str] = []
    async with FlowRuntime(flows=[flow], middleware=[Trace()]) as rt:
        rt.on("*", lambda e: events.append(e.name))
        result = await rt.run("mw", 1, timeout=10)
    assert result.output == 20
    assert seen == ["before:a", "after:a=20"]
    assert events == ["run:start", "node:start", "node:finish", "run:finish"]


async def test_typescript_blueprint_json_runs_with_a_registry() -> None:
    text = """{
      "id": "ts-flow",
      "metadata": {"version": "3"},
      "nodes": [
        {"id": "fetch", "uses": "fetch-data", "params": {"value": 21}},
        {"id": "double", "uses": "double", "inputs": "fetch",
         "config": {"maxRetries": 2, "retryDelay": 10, "timeout": 1000}},
        {"id": "big", "uses": "label", "params": {"value": "big"}},
        {"id": "small", "uses": "label", "params": {"value": "small"}}
      ],
      "edges": [
        {"source": "fetch", "target": "double"},
        {"source": "double", "target": "big", "condition": "result.output > 40 && context._outputs.fetch === 21"},
        {"source": "double", "target": "small", "condition": "!(result.output > 40)"}
      ]
    }"""
    blueprint = Blueprint.from_json(text)
    assert blueprint.node("double").config.max_attempts == 2
    assert blueprint.node("double").config.timeout == 1.0

    async def double(ctx: NodeContext) -> int:
        return int(ctx.input) * 2

    registry = {"fetch-data": value, "double": double, "label": value}
    async with FlowRuntime(blueprints=[blueprint], registry=registry) as rt:
        result = await rt.run("ts-flow", timeout=10)
    assert result.status == "completed"
    assert result.outputs == {"fetch": 21, "double": 42, "big": "big"}
    assert Blueprint.from_json(blueprint.to_json()) == blueprint


def test_run_sync_for_scripts() -> None:
    result = FlowRuntime(flows=[Flow("sync-run").node("a", plus_one)]).run_sync("sync-run", 41)
    assert result.output == 42


async def test_a_value_a_store_refuses_for_good_fails_the_run_and_dead_letters_the_job() -> None:
    """Redelivering cannot help when the store refuses the value itself: the run fails at once with the
    store's one-line reason, and the job goes to the dead letter with it (nothing silently dropped)."""
    from flowcraft.backends.memory import MemoryContextStore, MemoryCoordinationStore, MemoryQueue, MemoryStatusStore
    from flowcraft.engine.worker import Worker
    from flowcraft.errors import StoreLimitError

    class SmallContext(MemoryContextStore):
        async def apply(self, run_id: str, updates: Any, deletes: Any = ()) -> None:
            if any(isinstance(v, str) and len(v) > 100 for v in updates.values()):
                raise StoreLimitError("context value is too large for this store", hint="store a reference")
            await super().apply(run_id, updates, deletes)

    async def big(ctx: NodeContext) -> str:
        return "x" * 1000

    flow = Flow("too-big").node("a", value).node("b", big).edge("a", "b")
    # the context apart from the coordination store, which therefore leaves the engine to write it
    backend = Backend(MemoryQueue(), SmallContext(), MemoryStatusStore(), MemoryCoordinationStore())
    app = App(flows=[flow])
    worker = Worker(Engine(app, backend), concurrency=2, poll_wait=0.05)
    task = asyncio.create_task(worker.run())
    try:
        result = await Client(backend, app).run("too-big", None, timeout=10)
    finally:
        worker.stop()
        await task
    assert result.status == "failed"
    assert "context value is too large for this store (store a reference)" in result.errors[0]["message"]
    (letter,) = await backend.queue.dead_letters()
    assert letter.job is not None and letter.job.node_id == "b" and "too large" in letter.reason
    assert worker.failed == 0  # handled, not an unexpected error
