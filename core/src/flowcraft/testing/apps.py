"""Workflows of the contract suite, importable by worker processes as ``flowcraft.testing.apps:app``.

Nodes append one line per execution to the file named by the run input's ``log`` (when given), so tests
can count executions across processes, and return a fresh token so a duplicate execution that leaked into
the run's state would show as a mismatch between what a successor received and what the context holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any

from flowcraft.app import App
from flowcraft.flow import Flow
from flowcraft.nodes.base import NodeContext, NodeResult


def _log(ctx: NodeContext, log: Any) -> None:
    if isinstance(log, str) and log:
        line = json.dumps({"run": ctx.run_id, "node": ctx.node_id, "visit": ctx.visit, "attempt": ctx.attempt,
                           "item": ctx.item, "pid": os.getpid()})
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


async def _log_from_context(ctx: NodeContext) -> None:
    _log(ctx, await ctx.context.get("log"))


async def start(ctx: NodeContext) -> Any:
    """Start node: keeps the run input in the context (so later nodes can read ``log``)."""
    data = ctx.input if isinstance(ctx.input, dict) else {}
    for key, value in data.items():
        await ctx.context.set(key, value)
    _log(ctx, data.get("log"))
    return data.get("value", data)


async def token(ctx: NodeContext) -> str:
    await _log_from_context(ctx)
    await asyncio.sleep(float(ctx.params.get("sleep", 0)))
    return f"{ctx.node_id}-{uuid.uuid4().hex[:8]}"


async def join(ctx: NodeContext) -> Any:
    await _log_from_context(ctx)
    return {"received": ctx.input, "token": uuid.uuid4().hex[:8]}


async def echo(ctx: NodeContext) -> Any:
    await _log_from_context(ctx)
    return ctx.input


async def nothing(ctx: NodeContext) -> None:
    await _log_from_context(ctx)
    return None


async def flaky(ctx: NodeContext) -> str:
    await _log_from_context(ctx)
    if ctx.attempt < int(ctx.params.get("succeed_on", 2)):
        raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
    return f"ok on attempt {ctx.attempt}"


async def fail(ctx: NodeContext) -> None:
    await _log_from_context(ctx)
    raise RuntimeError("this node always fails")


async def route(ctx: NodeContext) -> NodeResult:
    await _log_from_context(ctx)
    return NodeResult(output=ctx.input, action=str(ctx.input))


async def count_up(ctx: NodeContext) -> int:
    await _log_from_context(ctx)
    count = int(await ctx.context.get("count", 0)) + 1
    await ctx.context.set("count", count)
    return count


async def square(ctx: NodeContext) -> int:
    await _log_from_context(ctx)
    return int(ctx.input) ** 2


async def total(ctx: NodeContext) -> int:
    await _log_from_context(ctx)
    return sum(ctx.input)


async def increment_shared(ctx: NodeContext) -> int:
    await _log_from_context(ctx)
    return int(ctx.input or 0) + 1


def _build() -> list[Flow]:
    flows = []

    diamond = Flow("contract-diamond", version="1")
    diamond.node("s", start)
    for name in ("p1", "p2", "p3"):
        diamond.node(name, token, uses="token").edge("s", name).edge(name, "j")
    diamond.node("j", join).node("e", echo).edge("j", "e")
    flows.append(diamond)

    any_join = Flow("contract-any", version="1")
    any_join.node("s", start)
    for index, name in enumerate(("p1", "p2", "p3", "p4")):
        any_join.node(name, token, uses="token", params={"sleep": 0.05 * index}).edge("s", name).edge(name, "j")
    any_join.node("j", join, join="any").node("e", echo).edge("j", "e")
    flows.append(any_join)

    branches = Flow("contract-branches", version="1")
    branches.node("s", start).node("r", route)
    branches.node("left", token, uses="token").node("right", token, uses="token")
    branches.node("left2", echo).node("j", join).node("only-right", echo)
    branches.edge("s", "r")
    branches.edge("r", "left", action="left").edge("r", "right", action="right")
    branches.edge("left", "left2").edge("left2", "j").edge("right", "j").edge("right", "only-right")
    flows.append(branches)

    none = Flow("contract-none", version="1")
    none.node("s", start).node("n", nothing).node("e", echo).edge("s", "n").edge("n", "e")
    flows.append(none)

    retry = Flow("contract-retry", version="1")
    retry.node("s", start).node("f", flaky, retries=2, retry_delay=0.2, params={"succeed_on": 3})
    retry.edge("s", "f")
    flows.append(retry)

    fallback = Flow("contract-fallback", version="1")
    fallback.node("s", start).node("bad", fail, fallback="rescue").node("rescue", echo).node("next", echo)
    fallback.node("good", echo, fallback="unused").node("unused", token, uses="token")
    fallback.edge("s", "bad").edge("bad", "next").edge("s", "good")
    flows.append(fallback)

    failing = Flow("contract-fail", version="1")
    failing.node("s", start).node("bad", fail).node("slow", token, uses="token", params={"sleep": 0.3})
    failing.node("after", echo).edge("s", "bad").edge("s", "slow").edge("slow", "after")
    flows.append(failing)

    loop = Flow("contract-loop", version="1")
    loop.node("s", start).node("body", count_up).node("after", echo).edge("s", "body")
    loop.loop("again", start="body", end="body", condition="context.count < 4").edge("again", "after")
    flows.append(loop)

    mapped = Flow("contract-map", version="1")
    mapped.node("s", start).map("squares", square, chunk_size=2, max_concurrency=2).node("sum", total)
    mapped.edge("s", "squares").edge("squares", "sum")
    flows.append(mapped)

    sleepy = Flow("contract-sleep", version="1")
    sleepy.node("s", start).sleep("nap", 1.0).node("woke", echo).edge("s", "nap").edge("nap", "woke")
    flows.append(sleepy)

    waiting = Flow("contract-wait", version="1")
    waiting.node("s", start).wait("approval").node("approved", echo).node("rejected", echo)
    waiting.edge("s", "approval").edge("approval", "approved", action="approve")
    waiting.edge("approval", "rejected", action="reject")
    flows.append(waiting)

    child = Flow("contract-child", version="1")
    child.node("c1", increment_shared).node("c2", increment_shared).edge("c1", "c2")
    flows.append(child)

    parent = Flow("contract-parent", version="1")
    parent.node("s", start).subflow("sub", "contract-child").node("after", echo)
    parent.edge("s", "sub").edge("sub", "after")
    flows.append(parent)

    long = Flow("contract-long", version="1")
    long.node("s", start).node("slow", token, uses="token", params={"sleep": 2.0}).edge("s", "slow")
    flows.append(long)

    odd = Flow("contract ids:/ünï", version="1")
    odd.node("a:b/c d", start).node("ñ/ø:1", echo).edge("a:b/c d", "ñ/ø:1")
    flows.append(odd)
    return flows


FLOWS = _build()
app = App(flows=FLOWS)
