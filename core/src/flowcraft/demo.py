"""The workflow behind ``flowcraft demo``: an order checked by three services in parallel.

``plan`` fans out to ``inventory``, ``pricing`` and ``shipping``; ``pricing`` fails on its first attempt
and succeeds on its retry; ``combine`` joins all three (an ``all`` join); ``cool_down`` is a durable
one-second timer; then a condition on the total routes to ``approve`` or ``review`` (the other branch is
skipped). Each node reports the worker process that ran it, so the demo shows work spread over processes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from flowcraft.app import App
from flowcraft.flow import Flow
from flowcraft.nodes.base import NodeContext

BLUEPRINT_ID = "demo"
REVIEW_LIMIT = 100.0
DEFAULT_INPUT: dict[str, Any] = {"order_id": 7, "quantity": 3}


async def plan(ctx: NodeContext) -> dict[str, Any]:
    order = ctx.input if isinstance(ctx.input, dict) else {}
    return {"order_id": order.get("order_id", 1), "quantity": int(order.get("quantity", 1)), "pid": os.getpid()}


async def inventory(ctx: NodeContext) -> dict[str, Any]:
    await asyncio.sleep(0.3)
    return {"in_stock": True, "pid": os.getpid()}


async def pricing(ctx: NodeContext) -> dict[str, Any]:
    await asyncio.sleep(0.2)
    if ctx.attempt == 1:
        raise RuntimeError("pricing service timed out (the demo fails the first attempt on purpose)")
    return {"total": 12.5 * ctx.input["quantity"], "attempt": ctx.attempt, "pid": os.getpid()}


async def shipping(ctx: NodeContext) -> dict[str, Any]:
    await asyncio.sleep(0.4)
    return {"carrier": "parcel", "days": 2, "pid": os.getpid()}


async def combine(ctx: NodeContext) -> dict[str, Any]:
    # an `all` join with several predecessors receives {predecessor id: its output}
    parts = ctx.input
    return {"total": parts["pricing"]["total"], "in_stock": parts["inventory"]["in_stock"],
            "days": parts["shipping"]["days"], "pid": os.getpid()}


async def approve(ctx: NodeContext) -> dict[str, Any]:
    return {"decision": "approved", "total": ctx.input["total"], "pid": os.getpid()}


async def review(ctx: NodeContext) -> dict[str, Any]:
    return {"decision": "sent to review", "total": ctx.input["total"], "pid": os.getpid()}


def build_flow() -> Flow:
    flow = Flow(BLUEPRINT_ID, version="1")
    flow.node("plan", plan)
    flow.node("inventory", inventory)
    flow.node("pricing", pricing, retries=1, retry_delay=0.2)
    flow.node("shipping", shipping)
    flow.node("combine", combine)
    flow.sleep("cool_down", "1s")
    flow.node("approve", approve)
    flow.node("review", review)
    for service in ("inventory", "pricing", "shipping"):
        flow.edge("plan", service).edge(service, "combine")
    flow.edge("combine", "cool_down")
    flow.edge("cool_down", "approve", condition=f"result.output.total <= {REVIEW_LIMIT}")
    flow.edge("cool_down", "review", condition=f"result.output.total > {REVIEW_LIMIT}")
    return flow


def describe(node_id: str, output: Any) -> str:
    """One line about a finished node for the demo's progress display."""
    if node_id == "cool_down":
        return "durable timer, 1s"
    if not isinstance(output, dict):
        return ""
    text = f"worker pid {output.get('pid')}"
    if output.get("attempt", 1) > 1:
        text += f", succeeded on attempt {output['attempt']}"
    return text


app = App(flows=[build_flow()])
