"""A node that runs another blueprint as a linked child run."""

from flowcraft import Flow, FlowRuntime


async def price(ctx):
    return ctx.input["qty"] * 3


async def tax(ctx):
    return round(ctx.input * 1.2, 2)


billing = Flow("billing").node("price", price).node("tax", tax).edge("price", "tax")

checkout = Flow("checkout").node("cart", lambda ctx: {"qty": 5})
checkout.subflow("bill", "billing").node("confirm", lambda ctx: f"charged {ctx.input}")
checkout.edge("cart", "bill").edge("bill", "confirm")

if __name__ == "__main__":
    result = FlowRuntime(flows=[billing, checkout]).run_sync("checkout")
    print(result.status, result.outputs["confirm"])
