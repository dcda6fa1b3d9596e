"""A durable timer: the reminder is delivered later through the queue."""

import asyncio
import time

from flowcraft import Flow, FlowRuntime


async def sign_up(ctx):
    return ctx.input["email"]


async def remind(ctx):
    return f"reminder sent to {ctx.input}"


flow = Flow("onboarding").node("sign_up", sign_up).sleep("wait_a_bit", "2s").node("remind", remind)
flow.edge("sign_up", "wait_a_bit").edge("wait_a_bit", "remind")


async def main() -> None:
    async with FlowRuntime(flows=[flow]) as runtime:
        started = time.monotonic()
        result = await runtime.run("onboarding", {"email": "ada@example.com"})
        print(result.status, result.outputs["remind"], f"after {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    asyncio.run(main())
