"""Throughput of the rq backend: chain10 and diamond8, N runs submitted at once, one worker process.

    python packages/rq/benchmarks/bench_rq.py --redis-url redis://127.0.0.1:6379/0 [--runs 500]

Prints nodes/s and, per node: Redis commands the client sent (EVALSHA and plain commands; the commands a
script runs inside Redis are not round trips), pipelines sent (network round trips, thanks to
auto-pipelining) and the server-side ``INFO commandstats`` delta of EVALSHA. Also runs the in-memory
backend for a ratio.
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from flowcraft import App, Engine, Flow, NodeContext, Worker
from flowcraft.backends.memory import memory_backend
from flowcraft.client import Client
from flowcraft.plugins import registry
from flowcraft.spi import Backend


async def noop(ctx: NodeContext) -> int:
    return 1


def noop_sync(ctx: NodeContext) -> int:
    return 1


def chain10(node: Any) -> Flow:
    flow = Flow("chain10")
    for i in range(10):
        flow.node(f"n{i}", node, uses="noop")
        if i:
            flow.edge(f"n{i - 1}", f"n{i}")
    return flow


def diamond8(node: Any) -> Flow:
    flow = Flow("diamond8")
    flow.node("a", node, uses="noop").node("z", node, uses="noop")
    for i in range(8):
        flow.node(f"m{i}", node, uses="noop").edge("a", f"m{i}").edge(f"m{i}", "z")
    return flow


async def measure(backend: Backend, flow: Flow, runs: int, concurrency: int, redis: Any = None) -> dict[str, float]:
    app = App(flows=[flow])
    client = Client(backend, app)
    run_ids = [await client.start(flow.id) for _ in range(runs)]
    nodes = runs * 10
    stats0 = await redis.info("commandstats") if redis is not None else {}
    batcher = getattr(backend.queue, "batcher", None)  # the client's auto-pipeline, shared by all four
    commands0, trips0 = (batcher.commands, batcher.round_trips) if batcher else (0, 0)
    worker = Worker(Engine(app, backend), concurrency=concurrency, poll_wait=0.2)
    started = time.perf_counter()
    task = asyncio.create_task(worker.run())
    if redis is not None:
        indexes = backend.status.keys.status_indexes("completed")  # type: ignore[attr-defined]  # one per group
        while sum([await redis.zcard(index) for index in indexes]) < runs:  # noqa: ASYNC110  # another process
            await asyncio.sleep(0.01)
    else:
        for run_id in run_ids:
            await client.wait(run_id)
    elapsed = time.perf_counter() - started
    worker.stop()
    await task
    out = {"nodes_per_s": nodes / elapsed, "seconds": elapsed}
    if redis is not None and batcher is not None:
        stats1 = await redis.info("commandstats")
        evalsha = stats1["cmdstat_evalsha"]["calls"] - stats0.get("cmdstat_evalsha", {"calls": 0})["calls"]
        out["client_commands_per_node"] = (batcher.commands - commands0) / nodes
        out["round_trips_per_node"] = (batcher.round_trips - trips0) / nodes
        out["server_evalsha_per_node"] = evalsha / nodes
    return out


async def main(args: argparse.Namespace) -> None:
    node = noop_sync if args.sync else noop
    for make in (chain10, diamond8):
        memory = await measure(memory_backend(), make(node), args.runs, args.concurrency)
        prefix = f"bench:{uuid.uuid4().hex[:8]}:"
        backend = registry().build("rq", {"redis_url": args.redis_url, "key_prefix": prefix})
        try:
            figures = await measure(backend, make(node), args.runs, args.concurrency,
                                    redis=backend.queue.redis)  # type: ignore[attr-defined]
        finally:
            await cleanup(backend)
            await backend.close()
        line = ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
        print(f"{make.__name__}: rq {line}; memory {memory['nodes_per_s']:.0f} nodes/s "
              f"(rq/memory {figures['nodes_per_s'] / memory['nodes_per_s']:.2f})")


async def cleanup(backend: Backend) -> None:
    """Forget the benchmark's runs (records, contexts, coordination) and its rq queue (on a cluster: its groups)."""
    redis = backend.queue.redis  # type: ignore[attr-defined]
    keys = backend.status.keys  # type: ignore[attr-defined]
    run_ids = [raw for index in keys.created_indexes() for raw in await redis.zrange(index, 0, -1)]
    for raw in run_ids:
        run_id = raw.decode()
        await backend.context.delete_run(run_id)
        await backend.coordination.delete_run(run_id)
        await backend.status.delete(run_id)
    for group in backend.queue.groups:  # type: ignore[attr-defined]
        for key in (group.queue_key, group.wip_key, group.scheduled_key):
            await redis.delete(key)
        await redis.srem(backend.queue.queues_key, group.queue_key)  # type: ignore[attr-defined]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sync", action="store_true", help="plain (thread-run) node functions instead of async")
    asyncio.run(main(parser.parse_args()))
