"""Quickstart: build a flow in code and run it in this process.

    python examples/quickstart.py

The same flow runs distributed unchanged: put it in an ``App`` (``app = flowcraft.App(flows=[flow])``),
start workers with ``flowcraft worker --app quickstart:app`` and runs with ``flowcraft run orders --wait``.
"""

from __future__ import annotations

from typing import Any

from flowcraft import App, Flow, FlowRuntime, NodeContext, NodeResult


async def fetch_order(ctx: NodeContext) -> dict[str, Any]:
    return {"order_id": ctx.input["order_id"], "total": 42.0, "items": ["book", "lamp"]}


def check_fraud(ctx: NodeContext) -> NodeResult:
    # a plain function runs in a thread; an action picks the outgoing edges
    risky = ctx.input["total"] > 1000
    return NodeResult(output=ctx.input, action="review" if risky else "ok")


async def charge(ctx: NodeContext) -> dict[str, Any]:
    await ctx.context.set("charged", ctx.input["total"])
    return {"charged": ctx.input["total"], "idempotency_key": ctx.idempotency_key}


async def notify(ctx: NodeContext) -> str:
    return f"order {ctx.input['order_id']} confirmed"


async def manual_review(ctx: NodeContext) -> str:
    return "sent to a human"


flow = Flow("orders", version="1")
flow.node("fetch", fetch_order)
flow.node("fraud", check_fraud)
flow.node("charge", charge, retries=3, retry_delay=0.5, timeout=10)
flow.node("review", manual_review)
flow.node("notify", notify, inputs="fetch")  # input: the output of node "fetch"
flow.edge("fetch", "fraud")
flow.edge("fraud", "charge", action="ok")
flow.edge("fraud", "review", action="review")
flow.edge("charge", "notify", condition="result.output.charged > 0")

app = App(flows=[flow])

if __name__ == "__main__":
    result = FlowRuntime(flows=[flow]).run_sync("orders", {"order_id": 7})
    print(result.status)  # completed
    print(result.output)  # order 7 confirmed
    print(result.outputs["charge"])
