"""The chaos App (``flowcraft.chaos.workflows:app``): one workflow per primitive, and their expected results.

Every node appends one JSON line per execution to the file named by ``$FLOWCRAFT_CHAOS_LOG`` with a single
``os.write`` on a descriptor opened ``O_APPEND``, so a SIGKILL never tears a line and lines of concurrent
processes never interleave. Outputs are pure functions of the run input ``{"n": int}`` (and, for the retry
node, of the attempt number), so :func:`expect` can recompute every output, the context and the input each
node must see without asking the engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from flowcraft.app import App
from flowcraft.flow import Flow
from flowcraft.nodes.base import NodeContext

LOG_ENV = "FLOWCRAFT_CHAOS_LOG"
PREFIX = "chaos-"
MAP_ITEMS = 80  # in chunks of 2: a gather of 40 chunks, a join wide enough that stores count it
LOOP_PASSES = 3
RETRY_SUCCEEDS_ON = 3  # attempts 1 and 2 fail, attempt 3 succeeds
SLEEP_SECONDS = 1.0
CANCEL_CHAIN = ("z1", "z2", "z3", "z4")
CANCEL_NODE_SECONDS = 1.0
WORK_SECONDS = 0.05
ANY_PREDECESSORS = ("p1", "p2", "p3", "p4", "p5")

_log_fds: dict[str, int] = {}


async def record_execution(ctx: NodeContext, input_value: Any) -> None:
    """Append this execution to the chaos log (nothing when ``$FLOWCRAFT_CHAOS_LOG`` is unset), then work
    for ``WORK_SECONDS``, so that kills land while jobs are in flight rather than on idle workers."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    fd = _log_fds.get(path)
    if fd is None:
        fd = _log_fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = json.dumps({"run_id": ctx.run_id, "node_id": ctx.node_id, "visit": ctx.visit, "attempt": ctx.attempt,
                       "item": ctx.item, "pid": os.getpid(), "t": time.time(), "input": input_value})
    os.write(fd, (line + "\n").encode())
    await asyncio.sleep(WORK_SECONDS)


# ---------------------------------------------------------------------------------------------- nodes
async def start(ctx: NodeContext) -> int:
    await record_execution(ctx, ctx.input)
    n = int(ctx.input["n"])
    await ctx.context.set("n", n)
    return n


def _arithmetic(factor: int, offset: int) -> Any:
    async def node(ctx: NodeContext) -> int:
        await record_execution(ctx, ctx.input)
        return int(ctx.input) * factor + offset
    return node


async def add_values(ctx: NodeContext) -> int:
    await record_execution(ctx, ctx.input)
    return sum(int(v) for v in ctx.input.values())


async def echo(ctx: NodeContext) -> Any:
    await record_execution(ctx, ctx.input)
    return ctx.input


async def any_predecessor(ctx: NodeContext) -> int:
    await record_execution(ctx, ctx.input)
    index = int(ctx.node_id[1:])
    await asyncio.sleep(0.02 * index)
    return int(ctx.input) * 10 + index


async def count_pass(ctx: NodeContext) -> int:
    await record_execution(ctx, ctx.input)
    count = int(await ctx.context.get("count", 0)) + 1
    await ctx.context.set("count", count)
    return count * int(await ctx.context.get("n"))


async def flaky(ctx: NodeContext) -> int:
    await record_execution(ctx, ctx.input)
    if ctx.attempt < RETRY_SUCCEEDS_ON:
        raise ConnectionError(f"chaos: planned failure of attempt {ctx.attempt}")
    return int(ctx.input) * 7 + ctx.attempt


async def items(ctx: NodeContext) -> list[int]:
    await record_execution(ctx, ctx.input)
    return [int(ctx.input) + i for i in range(MAP_ITEMS)]


async def square(ctx: NodeContext) -> int:
    await record_execution(ctx, ctx.input)
    return int(ctx.input) ** 2


async def total(ctx: NodeContext) -> int:
    await record_execution(ctx, ctx.input)
    return sum(int(v) for v in ctx.input)


async def child_total(ctx: NodeContext) -> int:
    await record_execution(ctx, ctx.input)
    value = int(ctx.input) + 1
    await ctx.context.set("total", value)
    return value


async def slow(ctx: NodeContext) -> Any:
    await record_execution(ctx, ctx.input)
    await asyncio.sleep(CANCEL_NODE_SECONDS)
    return ctx.input


async def always_fails(ctx: NodeContext) -> None:
    await record_execution(ctx, ctx.input)
    raise RuntimeError("chaos: this node always fails")


def build_flows() -> list[Flow]:
    diamond = Flow(PREFIX + "diamond", version="1")
    diamond.node("s", start)
    diamond.node("a", _arithmetic(2, 0)).node("a2", _arithmetic(1, 1)).node("b", _arithmetic(3, 0))
    diamond.node("c", _arithmetic(1, 100)).node("j", add_values).node("e", _arithmetic(1, 1))
    diamond.edge("s", "a", condition="result.output % 2 == 0").edge("a", "a2").edge("a2", "j")
    diamond.edge("s", "b", condition="result.output % 2 == 1").edge("b", "j")
    diamond.edge("s", "c").edge("c", "j").edge("j", "e")

    any5 = Flow(PREFIX + "any5", version="1")
    any5.node("s", start)
    for name in ANY_PREDECESSORS:
        any5.node(name, any_predecessor, uses="p").edge("s", name).edge(name, "j")
    any5.node("j", echo, join="any").node("e", add_values).edge("j", "e")

    loop = Flow(PREFIX + "loop", version="1")
    loop.node("s", start).node("body", count_pass).node("after", echo).edge("s", "body")
    loop.loop("again", start="body", end="body", condition=f"context.count < {LOOP_PASSES}").edge("again", "after")

    retry = Flow(PREFIX + "retry", version="1")
    retry.node("s", start).node("flaky", flaky, retries=RETRY_SUCCEEDS_ON - 1, retry_delay=0.1).edge("s", "flaky")

    mapped = Flow(PREFIX + "map", version="1")
    mapped.node("s", start).node("items", items).map("squares", square, chunk_size=2, max_concurrency=8)
    mapped.node("total", total).edge("s", "items").edge("items", "squares").edge("squares", "total")

    sleepy = Flow(PREFIX + "sleep", version="1")
    sleepy.node("s", start).sleep("nap", SLEEP_SECONDS).node("woke", _arithmetic(1, 1))
    sleepy.edge("s", "nap").edge("nap", "woke")

    waiting = Flow(PREFIX + "wait", version="1")
    waiting.node("s", start).wait("approval").node("approved", echo).node("rejected", echo)
    waiting.edge("s", "approval").edge("approval", "approved", action="approve")
    waiting.edge("approval", "rejected", action="reject")

    child = Flow(PREFIX + "child", version="1")
    child.node("c1", _arithmetic(2, 0)).node("c2", child_total).edge("c1", "c2")

    parent = Flow(PREFIX + "subflow", version="1")
    parent.node("s", start).subflow("sub", PREFIX + "child", outputs={"child_total": "total"})
    parent.node("after", _arithmetic(1, 1000)).edge("s", "sub").edge("sub", "after")

    cancel = Flow(PREFIX + "cancel", version="1")
    cancel.node("s", start)
    previous = "s"
    for name in CANCEL_CHAIN:
        cancel.node(name, slow, uses="slow").edge(previous, name)
        previous = name
    cancel.node("done", echo).edge(previous, "done")

    failing = Flow(PREFIX + "fail", version="1")
    failing.node("s", start).node("bad", always_fails, retries=1).node("never", echo)
    failing.edge("s", "bad").edge("bad", "never")
    return [diamond, any5, loop, retry, mapped, sleepy, waiting, child, parent, cancel, failing]


app = App(flows=build_flows())
