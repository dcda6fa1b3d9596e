"""Dynamic fan-out: one execution per item, gathered in item order."""

import asyncio

from flowcraft import Flow, FlowRuntime


async def list_files(ctx):
    return [f"photo-{i}.jpg" for i in range(10)]


async def thumbnail(ctx):
    await asyncio.sleep(0.01)
    return ctx.input.replace(".jpg", "-thumb.jpg")


async def report(ctx):
    return f"{len(ctx.input)} thumbnails, first {ctx.input[0]}"


flow = Flow("thumbnails").node("list", list_files)
flow.map("thumbs", thumbnail, chunk_size=2, max_concurrency=3).node("report", report)
flow.edge("list", "thumbs").edge("thumbs", "report")

if __name__ == "__main__":
    result = FlowRuntime(flows=[flow]).run_sync("thumbnails")
    print(result.status, result.outputs["report"])
