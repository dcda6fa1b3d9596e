"""Durable primitives in-process: sleep, wait/resume, map, subflow, cancellation, and how they combine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from flowcraft import Flow, FlowRuntime, InvalidStateError, NodeContext
from flowcraft.app import App
from flowcraft.backends.memory import memory_backend
from flowcraft.client import Client
from flowcraft.engine.core import Engine
from flowcraft.engine.worker import Worker


async def echo(ctx: NodeContext) -> Any:
    return ctx.input


async def square(ctx: NodeContext) -> int:
    return int(ctx.input) ** 2


async def total(ctx: NodeContext) -> int:
    return sum(ctx.input)


# ---------------------------------------------------------------- sleep
async def test_sleep_delays_successors() -> None:
    flow = Flow("nap").node("a", echo).sleep("zz", "1s").node("b", echo).edge("a", "zz").edge("zz", "b")
    async with FlowRuntime(flows=[flow]) as rt:
        started = time.monotonic()
        result = await rt.run("nap", "x", timeout=10)
    elapsed = time.monotonic() - started
    assert result.status == "completed" and result.outputs["b"] == "x"
    assert 1.0 <= elapsed < 2.0


async def test_sleep_survives_a_worker_restart() -> None:
    """The timer lives in the queue, not in the worker: a new worker picks it up on time."""
    flow = Flow("durable-nap").node("a", echo).sleep("zz", 1.0).node("b", echo)
    flow.edge("a", "zz").edge("zz", "b")
    app, backend = App(flows=[flow]), memory_backend()
    client = Client(backend, app)
    first = Worker(Engine(app, backend), poll_wait=0.05)
    task = asyncio.create_task(first.run())
    started = time.monotonic()
    run_id = await client.start("durable-nap", 1)
    await asyncio.sleep(0.3)
    first.stop()
    await task
    second = Worker(Engine(app, backend), poll_wait=0.05)
    task = asyncio.create_task(second.run())
    result = await client.wait(run_id, 10)
    second.stop()
    await task
    assert result.status == "completed"
    assert 1.0 <= time.monotonic() - started < 2.0


def test_sleep_rejects_a_bad_duration() -> None:
    with pytest.raises(Exception, match="cannot read 'soon' as a duration"):
        Flow("bad").sleep("zz", "soon")


# ---------------------------------------------------------------- wait / resume
def approval_flow() -> Flow:
    flow = Flow("approval").node("draft", echo).wait("review", prompt="approve?")
    flow.node("publish", echo).node("discard", echo)
    flow.edge("draft", "review").edge("review", "publish", action="approve").edge("review", "discard", action="reject")
    return flow


async def test_wait_then_resume_routes_by_action() -> None:
    async with FlowRuntime(flows=[approval_flow()]) as rt:
        paused = await rt.run("approval", "text", timeout=10)
        assert paused.status == "awaiting"
        assert paused.awaiting == [{"node_id": "review", "visit": 0}]
        done = await rt.resume(paused, action="approve", output={"editor": "ada"}, timeout=10)
    assert done.status == "completed"
    assert done.outputs["publish"] == {"editor": "ada"} and "discard" not in done.outputs


async def test_resume_twice_has_one_effect_and_bad_resumes_are_clear() -> None:
    async with FlowRuntime(flows=[approval_flow()]) as rt:
        paused = await rt.run("approval", "text", timeout=10)
        with pytest.raises(InvalidStateError, match="no edge for action 'maybe'"):
            await rt.resume(paused, action="maybe")
        await rt.client.resume(paused.run_id, action="reject")
        with pytest.raises(InvalidStateError):
            await rt.client.resume(paused.run_id, action="approve")
        done = await rt.wait(paused.run_id, 10)
        assert done.status == "completed" and "discard" in done.outputs and "publish" not in done.outputs
        with pytest.raises(InvalidStateError, match="is completed"):
            await rt.resume(done, action="approve")


async def test_several_waits_in_one_run() -> None:
    flow = Flow("two-waits").node("s", echo).wait("legal").wait("finance").node("go", echo)
    flow.edge("s", "legal").edge("s", "finance").edge("legal", "go").edge("finance", "go")
    async with FlowRuntime(flows=[flow]) as rt:
        paused = await rt.run("two-waits", 1, timeout=10)
        assert sorted(a["node_id"] for a in paused.awaiting) == ["finance", "legal"]
        with pytest.raises(InvalidStateError, match="awaits several nodes"):
            await rt.resume(paused, output="ok")
        half = await rt.resume(paused, node_id="legal", output="legal ok", timeout=10)
        assert half.status == "awaiting" and half.awaiting == [{"node_id": "finance", "visit": 0}]
        done = await rt.resume(paused, node_id="finance", output="finance ok", timeout=10)
    assert done.status == "completed"
    assert done.outputs["go"] == {"legal": "legal ok", "finance": "finance ok"}


async def test_loop_containing_a_wait() -> None:
    async def count(ctx: NodeContext) -> int:
        rounds = int(await ctx.context.get("rounds", 0)) + 1
        await ctx.context.set("rounds", rounds)
        return rounds

    flow = Flow("review-loop").node("s", echo).node("count", count).wait("review").node("done", echo)
    flow.edge("s", "count").edge("count", "review")
    flow.loop("again", start="count", end="review", condition="input != 'ok'").edge("again", "done")
    async with FlowRuntime(flows=[flow]) as rt:
        result = await rt.run("review-loop", None, timeout=10)
        for answer in ("redo", "redo", "ok"):
            assert result.status == "awaiting"
            result = await rt.resume(result, output=answer, timeout=10)
    assert result.status == "completed"
    assert result.context["rounds"] == 3 and result.outputs["done"] == "ok"


# ---------------------------------------------------------------- map
async def test_map_in_item_order_with_chunks_and_concurrency() -> None:
    async def slow_square(ctx: NodeContext) -> int:
        await asyncio.sleep(0.01 * (5 - int(ctx.input)))
        return int(ctx.input) ** 2

    flow = Flow("mapping").node("s", echo).map("sq", slow_square, chunk_size=2, max_concurrency=2).node("t", total)
    flow.edge("s", "sq").edge("sq", "t")
    async with FlowRuntime(flows=[flow]) as rt:
        result = await rt.run("mapping", [1, 2, 3, 4, 5], timeout=10)
        empty = await rt.run("mapping", [], timeout=10)
    assert result.outputs["sq"] == [1, 4, 9, 16, 25] and result.outputs["t"] == 55
    assert empty.status == "completed" and empty.outputs["sq"] == [] and empty.outputs["t"] == 0


async def test_map_max_concurrency_is_respected() -> None:
    active, peak = 0, 0

    async def tracked(ctx: NodeContext) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return ctx.input

    flow = Flow("bounded").node("s", echo).map("m", tracked, max_concurrency=3).edge("s", "m")
    async with FlowRuntime(flows=[flow]) as rt:
        result = await rt.run("bounded", list(range(12)), timeout=10)
    assert result.outputs["m"] == list(range(12))
    assert peak == 3


async def test_map_item_failure_fails_the_run_unless_collected() -> None:
    async def picky(ctx: NodeContext) -> int:
        if ctx.input == 3:
            raise ValueError("three is bad")
        return int(ctx.input)

    strict = Flow("strict").node("s", echo).map("m", picky).edge("s", "m")
    lenient = Flow("lenient").node("s", echo).map("m", picky, collect_errors=True).edge("s", "m")
    async with FlowRuntime(flows=[strict, lenient]) as rt:
        failed = await rt.run("strict", [1, 2, 3], timeout=10)
        collected = await rt.run("lenient", [1, 2, 3], timeout=10)
    assert failed.status == "failed" and "three is bad" in failed.errors[0]["message"]
    assert collected.status == "completed"
    assert collected.outputs["m"] == [1, 2, {"error": "ValueError: three is bad"}]


async def test_map_needs_a_list() -> None:
    flow = Flow("notalist").node("s", echo).map("m", echo).edge("s", "m")
    async with FlowRuntime(flows=[flow]) as rt:
        result = await rt.run("notalist", "abc", timeout=10)
    assert result.status == "failed" and "needs a list as input, got str" in result.errors[0]["message"]


# ---------------------------------------------------------------- subflow
def child_flows() -> list[Flow]:
    child = Flow("child").node("c", square)
    mapper = Flow("child-map").node("s", echo).map("m", square).node("t", total).edge("s", "m").edge("m", "t")
    parent = Flow("parent").node("s", echo).subflow("sub", "child", outputs={"child_out": "_outputs.c"})
    parent.node("after", echo).edge("s", "sub").edge("sub", "after")
    parent_map = Flow("parent-map").node("s", echo).subflow("sub", "child-map").edge("s", "sub")
    return [child, mapper, parent, parent_map]


async def test_subflow_completes_with_the_child_result() -> None:
    async with FlowRuntime(flows=child_flows()) as rt:
        result = await rt.run("parent", 7, timeout=10)
        child = await rt.status(f"{result.run_id}/sub#0.1")
    assert result.status == "completed"
    assert result.outputs["sub"] == 49 and result.outputs["after"] == 49 and result.context["child_out"] == 49
    assert child.status == "completed"


async def test_map_inside_a_subflow() -> None:
    async with FlowRuntime(flows=child_flows()) as rt:
        result = await rt.run("parent-map", [1, 2, 3], timeout=10)
    assert result.status == "completed" and result.outputs["sub"] == 14


async def test_child_failure_applies_retries_and_fallback_of_the_parent_node() -> None:
    async def fragile(ctx: NodeContext) -> int:
        attempts = ctx.dependencies["attempts"]
        attempts.append(ctx.run_id)
        if len(attempts) < 2:
            raise RuntimeError("child broke")
        return 1

    async def rescue(ctx: NodeContext) -> str:
        return "rescued"

    child = Flow("fragile-child").node("f", fragile)
    retried = Flow("retried").subflow("sub", "fragile-child", retries=1)
    always = Flow("always-broken-child").node("f", square)
    rescued = Flow("rescued").subflow("sub", "always-broken-child", fallback="rescue").node("rescue", rescue)
    attempts: list[str] = []
    async with FlowRuntime(flows=[child, retried, always, rescued], dependencies={"attempts": attempts}) as rt:
        ok = await rt.run("retried", None, timeout=10)
        fallback = await rt.run("rescued", "not a number", timeout=10)
    assert ok.status == "completed" and ok.outputs["sub"] == 1
    assert len(set(attempts)) == 2  # a fresh child run per attempt
    assert fallback.status == "completed" and fallback.outputs["sub"] == "rescued"


async def test_awaiting_child_shows_on_parent_and_resumes_through_it() -> None:
    child = approval_flow()
    parent = Flow("approval-parent").subflow("sub", "approval").node("after", echo).edge("sub", "after")
    async with FlowRuntime(flows=[child, parent]) as rt:
        paused = await rt.run("approval-parent", "doc", timeout=10)
        assert paused.status == "awaiting"
        assert paused.awaiting[0]["node_id"] == "sub" and "child_run_id" in paused.awaiting[0]
        done = await rt.resume(paused, action="approve", output="yes", timeout=10)
    assert done.status == "completed" and done.outputs["after"] == "yes"


# ---------------------------------------------------------------- cancellation
async def test_cancel_during_sleep_drops_the_timer() -> None:
    woke: list[int] = []

    async def wake(ctx: NodeContext) -> None:
        woke.append(1)

    flow = Flow("cancel-nap").node("s", echo).sleep("zz", 0.5).node("w", wake).edge("s", "zz").edge("zz", "w")
    async with FlowRuntime(flows=[flow]) as rt:
        run_id = await rt.start("cancel-nap")
        await asyncio.sleep(0.2)
        assert await rt.cancel(run_id)
        assert not await rt.cancel(run_id)
        await asyncio.sleep(0.6)
        result = await rt.status(run_id)
    assert result.status == "cancelled" and woke == []


async def test_running_nodes_see_cancellation() -> None:
    seen: dict[str, Any] = {}

    async def long_async(ctx: NodeContext) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen["async"] = True
            raise

    def long_sync(ctx: NodeContext) -> None:
        deadline = time.monotonic() + 5
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["sync"] = ctx.cancelled

    flow = Flow("long").node("s", echo).node("a", long_async).node("b", long_sync).edge("s", "a").edge("s", "b")
    async with FlowRuntime(flows=[flow]) as rt:
        run_id = await rt.start("long")
        await asyncio.sleep(0.2)
        await rt.cancel(run_id)
        await asyncio.sleep(0.2)
        result = await rt.status(run_id)
    assert result.status == "cancelled"
    assert seen == {"async": True, "sync": True}


async def test_cancelled_parent_cancels_its_children() -> None:
    child = Flow("slow-child").node("s", echo).sleep("zz", 5).node("t", echo).edge("s", "zz").edge("zz", "t")
    parent = Flow("slow-parent").subflow("sub", "slow-child")
    async with FlowRuntime(flows=[child, parent]) as rt:
        run_id = await rt.start("slow-parent")
        await asyncio.sleep(0.3)
        await rt.cancel(run_id)
        child_status = await rt.status(f"{run_id}/sub#0.1")
    assert child_status.status == "cancelled"
