"""Throughput of the rabbitmq backend: chain10 and diamond8 (N runs submitted at once, then one worker process
drains them), next to the raw RabbitMQ floor measured on the same broker in the same run.

    python packages/rabbitmq/benchmarks/bench_rabbitmq.py [--runs 100] [--concurrency 32] [--trials 3]
        [--amqp-url URL --postgres-dsn DSN --redis-url URL]

Without the URLs a RabbitMQ node, a PostgreSQL cluster and a Redis server are started on free loopback ports
(``tests-integration/servers``) and stopped (by PID) at the end.

Prints, per workload: nodes/s, the fraction of the raw floor, the worker process's CPU seconds per node, and
its state round trips per node (PostgreSQL statements, Redis commands and scripts, AMQP publishes and
acks). The raw floor is no-op messages through a quorum queue with the same pattern the backend uses:
``runs`` chains in flight, each delivery publishes its successor (persistent, mandatory, awaited publisher
confirm) and is then acked, prefetch = concurrency. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# the repository root on the path: the benchmarks package the per-package scripts share
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.backend_servers import COUNTS
from benchmarks.package_bench import NODES, app, chain_through_queue, start_worker_process, stop_worker_process
from benchmarks.rabbitmq_servers import count_requests, raw_floor
from flowcraft import Engine, Worker
from flowcraft.client import Client
from flowcraft.plugins import registry

SCRIPT = str(Path(__file__).resolve())
REPO = Path(__file__).resolve().parents[3]




@contextlib.contextmanager
def servers() -> Iterator[dict[str, str]]:
    sys.path.insert(0, str(REPO / "tests-integration"))
    from servers import PostgresServer, RabbitMqServer, RedisServer

    with RabbitMqServer() as broker, PostgresServer() as database, RedisServer() as redis:
        yield {"amqp_url": broker.url, "postgres_dsn": database.url, "redis_url": redis.url}


# ---------------------------------------------------------------------------------------------- raw floor
async def queue_floor(options: dict[str, Any], window: int, concurrency: int, hops: int = 10) -> float:
    """The same chain workload through RabbitMqQueue: dequeue up to ``concurrency``, enqueue each successor,
    ack each delivery (as the engine does)."""
    backend = registry().build("rabbitmq", options)
    await backend.queue.setup()
    queue = backend.queue
    try:
        return await chain_through_queue(queue, window, concurrency, hops)
    finally:
        await backend.close()


# ---------------------------------------------------------------------------------------------- the worker process
async def worker_process(options: dict[str, Any], concurrency: int) -> None:
    """Runs in the child: one worker; counts its PostgreSQL statements, Redis commands and scripts (the
    coordination store's batcher may pipeline several into one round trip) and AMQP publishes/acks; prints them
    and its CPU seconds when stopped."""
    backend = registry().build("rabbitmq", options)
    count_requests(backend)  # the harness's hook: PostgreSQL statements, AMQP publishes and acks/nacks
    counts = COUNTS
    batcher: Any = backend.coordination.batcher  # type: ignore[attr-defined]  # flowcraft_redis's Batcher
    # the batcher counts the commands and scripts in its pipelines (the hook counts the round trips)
    redis_commands = batcher.commands
    worker = Worker(Engine(app, backend), concurrency=concurrency, poll_wait=1.0)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    print("ready", flush=True)
    cpu = time.process_time()
    try:
        await worker.run()
    finally:
        await backend.close()
    cpu = time.process_time() - cpu
    counts["(redis commands)"] = batcher.commands - redis_commands
    counts["amqp ack/nack"] = backend.queue.settle_frames  # type: ignore[attr-defined]  # frames (multiple acks)
    print(json.dumps({"counts": dict(counts), "handled": worker.handled, "cpu": cpu}), flush=True)


async def measure(options: dict[str, Any], flow: str, runs: int, concurrency: int) -> dict[str, Any]:
    backend = registry().build("rabbitmq", options)
    await backend.setup()
    try:
        client = Client(backend, app)
        for _ in range(runs):
            await client.start(flow)
        child = await start_worker_process(SCRIPT, json.dumps(options), "--concurrency", str(concurrency))
        started = time.perf_counter()
        while True:
            page, _ = await backend.status.list(status="completed", blueprint_id=flow, limit=runs)
            if len(page) >= runs:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        report = await stop_worker_process(child)
        nodes = runs * NODES[flow]
        per_node = {name: n / nodes for name, n in report["counts"].items()}
        return {"nodes_per_s": nodes / elapsed, "seconds": elapsed, "round_trips_per_node": per_node,
                "cpu_ms_per_node": 1000 * report["cpu"] / nodes}
    finally:
        await backend.close()


async def main(args: argparse.Namespace, urls: dict[str, str]) -> None:
    """``--trials`` rounds of: raw floor, RabbitMqQueue floor, chain10, diamond8 — side by side."""
    rows: dict[str, list[tuple[float, float, float, float]]] = {"chain10": [], "diamond8": []}
    layers: list[float] = []
    for trial in range(1, args.trials + 1):
        tag = uuid.uuid4().hex[:8]

        def names(kind: str, tag: str = tag) -> dict[str, str]:
            return {"queue_name": f"bench-{kind}-{tag}", "context_table": f"bench_{kind}_{tag}_contexts",
                    "status_table": f"bench_{kind}_{tag}_statuses", "key_prefix": f"bench:{kind}:{tag}:"}

        raw = await raw_floor(urls["amqp_url"], args.runs, args.concurrency)
        layer = await queue_floor({**urls, **names("q")}, args.runs, args.concurrency)
        layers.append(layer / raw)
        print(f"trial {trial}: raw RabbitMQ floor ({args.runs} chains in flight; publish with confirm + consume + "
              f"ack) {raw:.0f} messages/s; through RabbitMqQueue {layer:.0f} messages/s", flush=True)
        for flow in rows:
            figures = await measure({**urls, **names(flow)}, flow, args.runs, args.concurrency)
            trips = figures["round_trips_per_node"]
            total = sum(n for name, n in trips.items() if not name.startswith("("))
            rows[flow].append((figures["nodes_per_s"], raw, total, figures["cpu_ms_per_node"]))
            detail = ", ".join(f"{name} {n:.2f}" for name, n in trips.items())
            print(f"  {flow}: {figures['nodes_per_s']:.1f} nodes/s ({figures['seconds']:.1f} s for {args.runs} runs), "
                  f"{figures['nodes_per_s'] / raw:.1%} of the raw floor; worker CPU {figures['cpu_ms_per_node']:.2f} "
                  f"ms/node; {total:.2f} round trips/node: {detail}", flush=True)
    print()
    print(f"medians of {args.trials} trials, {args.runs} runs in flight, one worker process (concurrency "
          f"{args.concurrency}); RabbitMqQueue alone reaches {statistics.median(layers):.0%} of the raw floor")
    print("| workload | nodes/s | raw RabbitMQ msgs/s | ratio | worker CPU ms/node | round trips/node |")
    print("|---|---|---|---|---|---|")
    for flow, trials in rows.items():
        print(f"| {flow} | {statistics.median(t[0] for t in trials):.1f} | "
              f"{statistics.median(t[1] for t in trials):.0f} | {statistics.median(t[0] / t[1] for t in trials):.1%} | "
              f"{statistics.median(t[3] for t in trials):.2f} | {statistics.median(t[2] for t in trials):.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--amqp-url")
    parser.add_argument("--postgres-dsn")
    parser.add_argument("--redis-url")
    parser.add_argument("--worker", metavar="OPTIONS", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        asyncio.run(worker_process(json.loads(arguments.worker), arguments.concurrency))
    elif arguments.amqp_url and arguments.postgres_dsn and arguments.redis_url:
        asyncio.run(main(arguments, {"amqp_url": arguments.amqp_url, "postgres_dsn": arguments.postgres_dsn,
                                     "redis_url": arguments.redis_url}))
    else:
        with servers() as started:
            asyncio.run(main(arguments, started))
