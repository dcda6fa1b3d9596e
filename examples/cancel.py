"""Cancelling a run: running nodes are cancelled, queued work (here a pending timer) is dropped."""

import asyncio

from flowcraft import Flow, FlowRuntime


async def start(ctx):
    return "started"


async def never(ctx):
    return "this never runs"


flow = Flow("cancellable").node("start", start).sleep("long_wait", "1h").node("never", never)
flow.edge("start", "long_wait").edge("long_wait", "never")


async def main() -> None:
    async with FlowRuntime(flows=[flow]) as runtime:
        run_id = await runtime.start("cancellable")
        await asyncio.sleep(0.2)
        print("cancelled:", await runtime.cancel(run_id))
        print((await runtime.status(run_id)).status)


if __name__ == "__main__":
    asyncio.run(main())
