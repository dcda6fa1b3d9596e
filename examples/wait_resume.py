"""Human in the loop: the run waits for a decision; the action chooses the branch."""

import asyncio

from flowcraft import Flow, FlowRuntime


async def draft(ctx):
    return f"draft of {ctx.input}"


async def publish(ctx):
    return f"published ({ctx.input['note']})"


async def archive(ctx):
    return "archived"


flow = Flow("article").node("draft", draft).wait("review", prompt="publish this draft?")
flow.node("publish", publish).node("archive", archive)
flow.edge("draft", "review").edge("review", "publish", action="approve").edge("review", "archive", action="reject")


async def main() -> None:
    async with FlowRuntime(flows=[flow]) as runtime:
        paused = await runtime.run("article", "release notes")
        print(paused.status, "waiting for", paused.awaiting)
        done = await runtime.resume(paused, action="approve", output={"note": "looks good"})
        print(done.status, done.outputs["publish"])


if __name__ == "__main__":
    asyncio.run(main())
