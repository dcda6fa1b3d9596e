"""A run's timeline (issue 18, item 1): per node and visit its state and attempts, through the public API, on
the memory and sqlite backends; ``RunResult.context`` hides the engine's keys."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flowcraft import Flow, FlowRuntime, NodeContext
from flowcraft.engine.timeline import NODE_STATES, Attempt, NodeVisit
from flowcraft.spi import Backend


async def flaky(ctx: NodeContext) -> str:
    if ctx.attempt < 2:
        raise ConnectionError(f"flaky attempt {ctx.attempt}")
    await ctx.context.set("seen", True)
    return "ok"


async def broken(ctx: NodeContext) -> None:
    raise ValueError("bad input")


async def echo(ctx: NodeContext) -> Any:
    return ctx.input


def branching() -> Flow:
    """start -> (yes | no by action) -> end; 'start' retries once."""
    async def start(ctx: NodeContext) -> Any:
        from flowcraft import NodeResult

        if ctx.attempt < 2:
            raise ConnectionError("first try fails")
        return NodeResult(output=1, action="yes")

    flow = Flow("branch")
    flow.node("start", start, retries=1, retry_delay=0.01).node("yes", echo).node("no", echo).node("after_no", echo)
    flow.edge("start", "yes", action="yes").edge("start", "no", action="no").edge("no", "after_no")
    return flow


@pytest.mark.parametrize("backend_name", ["memory", "sqlite"])
async def test_retries_skips_and_hidden_keys(backend_name: str, sqlite: Backend) -> None:
    async with FlowRuntime(flows=[branching()], backend=sqlite if backend_name == "sqlite" else None) as rt:
        result = await rt.run("branch", timeout=10)
        status = await rt.client.status(result.run_id)
        timeline = await rt.client.timeline(result.run_id)
    assert result.status == "completed" and result.output == 1
    by_node = {visit.node_id: visit for visit in result.timeline}
    assert set(by_node) == {"start", "yes", "no", "after_no"}
    start = by_node["start"]
    assert start.state == "done" and start.action == "yes" and start.retries == 1
    assert [a.attempt for a in start.attempts] == [1, 2]
    assert start.attempts[0].error == "ConnectionError: first try fails" and start.attempts[1].error is None
    assert all(a.worker and a.started_at and a.finished_at and a.finished_at >= a.started_at for a in start.attempts)
    assert start.started_at == start.attempts[0].started_at and start.duration is not None
    assert by_node["yes"].state == "done" and len(by_node["yes"].attempts) == 1
    assert by_node["no"].state == "skipped" and by_node["after_no"].state == "skipped"
    assert result.timeline[0].node_id == "start"  # in start (or skip) time order
    assert status.timeline == result.timeline == timeline
    assert not any(k.startswith(("_outputs.", "_timeline.")) or k == "_result" for k in result.context)
    assert result.outputs == {"start": 1, "yes": 1}
    assert json.loads(json.dumps(result.to_dict()))["timeline"][0]["attempts"][0]["error"].startswith("Connection")


@pytest.mark.parametrize("backend_name", ["memory", "sqlite"])
async def test_a_failed_node_keeps_every_attempt(backend_name: str, sqlite: Backend) -> None:
    flow = Flow("fails").node("b", broken, retries=2, retry_delay=0.01)
    async with FlowRuntime(flows=[flow], backend=sqlite if backend_name == "sqlite" else None) as rt:
        result = await rt.run("fails", timeout=10)
    assert result.status == "failed"
    (visit,) = result.timeline
    assert visit.state == "failed" and visit.error == "ValueError: bad input"
    assert [(a.attempt, a.error) for a in visit.attempts] == [(n, "ValueError: bad input") for n in (1, 2, 3)]


async def test_running_awaiting_and_cancelled_states(sqlite: Backend) -> None:
    release = asyncio.Event()

    async def slow(ctx: NodeContext) -> str:
        await release.wait()
        return "slow"

    flow = Flow("states").node("gate", uses="wait").node("slow", slow).node("later", echo)
    flow.edge("gate", "later")
    async with FlowRuntime(flows=[flow], backend=sqlite) as rt:
        run_id = await rt.start("states")
        for _ in range(200):
            states = {v.node_id: v.state for v in await rt.client.timeline(run_id)}
            if states == {"gate": "awaiting", "slow": "running"}:
                break
            await asyncio.sleep(0.02)
        assert states == {"gate": "awaiting", "slow": "running"}
        assert await rt.cancel(run_id)
        release.set()
        cancelled = await rt.status(run_id)
    assert cancelled.status == "cancelled"
    assert {v.node_id: v.state for v in cancelled.timeline} == {"gate": "cancelled", "slow": "cancelled"}


async def test_loops_have_one_entry_per_visit() -> None:
    async def count(ctx: NodeContext) -> int:
        n = int(await ctx.context.get("n", 0)) + 1
        await ctx.context.set("n", n)
        return n

    flow = Flow("loop").node("s", echo).node("inc", count).edge("s", "inc")
    flow.loop("again", start="inc", end="inc", condition="context.n < 3")
    async with FlowRuntime(flows=[flow]) as rt:
        result = await rt.run("loop", timeout=10)
    assert result.status == "completed"
    visits = [(v.node_id, v.visit, v.state) for v in result.timeline if v.node_id == "inc"]
    assert visits == [("inc", 0, "done"), ("inc", 1, "done"), ("inc", 2, "done")]


def test_the_public_shape_round_trips() -> None:
    visit = NodeVisit("n", 1, "done", (Attempt(1, "w", 1.0, 2.0, "E: x"), Attempt(2, "w", 3.0, 4.5)), 1.0, 4.5,
                      action="go")
    data = visit.to_dict()
    assert data["worker"] == "w" and data["attempts"][1]["error"] is None
    assert NodeVisit.from_dict(json.loads(json.dumps(data))) == visit
    assert visit.duration == 3.5 and visit.attempts[1].duration == 1.5 and visit.key == "1:n"
    assert set(NODE_STATES) == {"pending", "running", "done", "skipped", "failed", "awaiting", "cancelled"}
