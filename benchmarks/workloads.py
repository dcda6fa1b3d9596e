"""The benchmark workloads, as flowcraft Flows in one App that worker processes load.

Every node does trivial async work (an ``await asyncio.sleep(0)`` and a small return value), except the
``slow`` node of ``mixed``, which sleeps 50 ms like a short I/O call. Worker processes load
``benchmarks.workloads:app``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from flowcraft import App, Flow, NodeContext

SLOW_SECONDS = 0.05


async def step(ctx: NodeContext) -> int:
    """A chain or branch node: yield to the loop once, return input + 1."""
    await asyncio.sleep(0)
    value = ctx.input
    return value + 1 if isinstance(value, int) else 1


async def join(ctx: NodeContext) -> int:
    """An all-join: its input is a dict by predecessor id; return how many arrived."""
    await asyncio.sleep(0)
    value = ctx.input
    return len(value) if isinstance(value, dict) else 1


async def slow(ctx: NodeContext) -> int:
    """The one slow node of ``mixed``: 50 ms of simulated I/O."""
    await asyncio.sleep(SLOW_SECONDS)
    value = ctx.input
    return value + 1 if isinstance(value, int) else 1


def chain(length: int) -> Flow:
    flow = Flow(f"chain{length}", version="1")
    for index in range(length):
        flow.node(f"s{index}", step, uses="step")
        if index:
            flow.edge(f"s{index - 1}", f"s{index}")
    return flow


def fan(flow_id: str, width: int) -> Flow:
    """start -> ``width`` parallel nodes -> all-join (-> end for the diamond)."""
    flow = Flow(flow_id, version="1")
    flow.node("start", step, uses="step")
    flow.node("join", join)
    for index in range(width):
        flow.node(f"b{index}", step, uses="step")
        flow.edge("start", f"b{index}")
        flow.edge(f"b{index}", "join")
    return flow


def diamond(width: int) -> Flow:
    flow = fan(f"diamond{width}", width)
    flow.node("end", step, uses="step")
    flow.edge("join", "end")
    return flow


def mixed() -> Flow:
    """Two branches of different speed, a join and a conditional exit (one exit is skipped):

    start -> slow (50 ms) ----------> join -> done     (condition holds)
          -> fast_a -> fast_b ----/       -> rejected (condition fails: dead path, never executed)
    """
    flow = Flow("mixed", version="1")
    flow.node("start", step, uses="step")
    flow.node("slow", slow)
    flow.node("fast_a", step, uses="step")
    flow.node("fast_b", step, uses="step")
    flow.node("join", join)
    flow.node("done", step, uses="step")
    flow.node("rejected", step, uses="step")
    flow.edge("start", "slow").edge("start", "fast_a").edge("fast_a", "fast_b")
    flow.edge("slow", "join").edge("fast_b", "join")
    flow.edge("join", "done", condition="result.output == 2")
    flow.edge("join", "rejected", condition="result.output != 2")
    return flow


@dataclass(frozen=True, slots=True)
class Workload:
    """A blueprint to benchmark and what one run of it executes."""

    name: str
    nodes: int  # nodes executed per run (skipped nodes are not counted)
    description: str
    in_process_only: bool = False
    run_divisor: int = 1  # runs per trial = --runs // run_divisor (big fan-outs do more work per run)
    celery: bool = False  # has a Celery canvas equivalent in benchmarks.celery_peer


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("chain10", 10, "10-node chain", celery=True),
        Workload("diamond8", 11, "start -> 8 parallel -> all-join -> end", celery=True),
        Workload("fanout100", 102, "start -> 100 parallel -> all-join", run_divisor=10),
        Workload("fanout1000", 1002, "start -> 1000 parallel -> all-join (in-process only)",
                 in_process_only=True, run_divisor=100),
        Workload("mixed", 6, "two branches (one sleeps 50 ms), all-join, conditional exit"),
    )
}

FLOWS: list[Flow] = [chain(10), diamond(8), fan("fanout100", 100), fan("fanout1000", 1000), mixed()]

app = App(flows=FLOWS)


def expected_output(name: str) -> Any:
    """The run's final output for input 0, to check a run really did the work."""
    return {"chain10": 10, "diamond8": 9, "fanout100": 100, "fanout1000": 1000, "mixed": 3}[name]
