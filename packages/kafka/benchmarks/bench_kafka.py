"""Throughput of the kafka backend (Kafka queue + Cassandra context/status + Redis coordination): chain10
and diamond8 (N runs submitted at once, then one worker process drains them), next to the raw Kafka floor
measured on the same broker in the same run.

    python packages/kafka/benchmarks/bench_kafka.py [--runs 100] [--concurrency 32] [--trials 3]
        [--bootstrap HOST:PORT --cassandra HOST:PORT --redis URL] [--protocol-version 1] [--consistency ONE]

Without the three addresses, a Tansu broker, Cassandra 1.2 and Redis are started on free loopback ports
through ``tests-integration/servers`` (as the tests do) and stopped by PID at the end.

Prints, per workload: nodes/s, the ratio to the raw floor, and the worker process's CPU seconds per node.
The raw floor is no-op records through Kafka with the same pattern the backend uses (one record per job:
consume, produce the successor, commit the consumed offset), once with a bare confluent-kafka consumer and
producer taking at most ``--concurrency`` records at a time (``benchmarks.kafka_servers.raw_floor``, also
measured by ``python -m benchmarks --backend kafka``), and once through ``KafkaQueue`` (enqueue / dequeue /
ack). Figures only; nothing is asserted.
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
from benchmarks.kafka_servers import raw_floor
from benchmarks.package_bench import NODES, app, chain_through_queue, start_worker_process, stop_worker_process
from flowcraft import Engine, Worker
from flowcraft.client import Client
from flowcraft.plugins import registry

SCRIPT = str(Path(__file__).resolve())
ROOT = Path(__file__).resolve().parents[3]




@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str, str]]:
    sys.path.insert(0, str(ROOT / "tests-integration"))
    from servers import CassandraServer, KafkaServer, RedisServer

    with KafkaServer() as kafka, CassandraServer() as cassandra, RedisServer() as redis:
        yield kafka.bootstrap_servers, f"{cassandra.host}:{cassandra.port}", redis.url


# ---------------------------------------------------------------------------------------------- raw floor
async def queue_floor(options: dict[str, Any], window: int, concurrency: int, hops: int = 10) -> float:
    """The same chain through KafkaQueue: dequeue up to ``concurrency``, enqueue each successor and ack each
    delivery on its own, as the engine does."""
    from flowcraft_kafka import KafkaQueue

    queue = registry().build("kafka", options).queue
    assert isinstance(queue, KafkaQueue)
    await queue.setup()
    try:
        await queue.ready()
        return await chain_through_queue(queue, window, concurrency, hops)
    finally:
        await queue.close()


# ---------------------------------------------------------------------------------------------- the worker process
async def worker_process(options: dict[str, Any], concurrency: int) -> None:
    """Runs in the child: one worker; reports its CPU seconds between its group join and its stop."""
    from flowcraft_kafka import KafkaQueue

    backend = registry().build("kafka", options)
    assert isinstance(backend.queue, KafkaQueue)
    await backend.queue.ready()
    worker = Worker(Engine(app, backend), concurrency=concurrency, poll_wait=1.0)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    cpu = time.process_time()
    print("ready", flush=True)
    try:
        await worker.run()
    finally:
        cpu = time.process_time() - cpu
        await backend.close()
    print(json.dumps({"cpu": cpu, "handled": worker.handled}), flush=True)


async def measure(options: dict[str, Any], flow: str, runs: int, concurrency: int) -> dict[str, Any]:
    backend = registry().build("kafka", options)
    await backend.setup()
    try:
        client = Client(backend, app)
        run_ids = [await client.start(flow) for _ in range(runs)]
        child = await start_worker_process(SCRIPT, json.dumps(options), "--concurrency", str(concurrency))
        started = time.perf_counter()
        for run_id in run_ids:  # one read at a time: the measuring process must not load the servers
            while True:
                record = await backend.status.get(run_id)
                if record is not None and record.status == "completed":
                    break
                await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        report = await stop_worker_process(child)
        nodes = runs * NODES[flow]
        return {"nodes_per_s": nodes / elapsed, "seconds": elapsed, "cpu_ms_per_node": 1000 * report["cpu"] / nodes}
    finally:
        await backend.close()


async def main(args: argparse.Namespace, bootstrap: str, cassandra: str, redis: str) -> None:
    def options(tag: str) -> dict[str, Any]:
        return {"bootstrap_servers": bootstrap, "topic_name": f"bench-{tag}", "group_id": f"bench-{tag}",
                "partitions": 3, "session_timeout_ms": args.session_timeout_ms, "cassandra_hosts": cassandra,
                "keyspace": f"bench_{tag}", "protocol_version": args.protocol_version,
                "consistency": args.consistency, "redis_url": redis, "key_prefix": f"bench:{tag}:",
                "fetch_wait_max_ms": args.fetch_wait_max_ms}

    rows: dict[str, list[tuple[float, float, float]]] = {"chain10": [], "diamond8": []}
    layers: list[float] = []
    for trial in range(1, args.trials + 1):
        raw = await asyncio.to_thread(raw_floor, bootstrap, args.runs, args.concurrency, args.session_timeout_ms,
                                      args.fetch_wait_max_ms)
        layer = await queue_floor(options(uuid.uuid4().hex[:8]), args.runs, args.concurrency)
        layers.append(layer / raw)
        print(f"trial {trial}: raw Kafka floor ({args.runs} chains in flight; consume + produce successor + "
              f"commit) {raw:.0f} records/s; through KafkaQueue {layer:.0f} records/s", flush=True)
        for flow in rows:
            figures = await measure(options(uuid.uuid4().hex[:8]), flow, args.runs, args.concurrency)
            rows[flow].append((figures["nodes_per_s"], raw, figures["cpu_ms_per_node"]))
            print(f"  {flow}: {figures['nodes_per_s']:.1f} nodes/s ({figures['seconds']:.1f} s for {args.runs} "
                  f"runs), {figures['nodes_per_s'] / raw:.1%} of the raw floor; worker CPU "
                  f"{figures['cpu_ms_per_node']:.2f} ms/node", flush=True)
    print()
    print(f"medians of {args.trials} trials, {args.runs} runs in flight, one worker process "
          f"(concurrency {args.concurrency}); KafkaQueue alone reaches {statistics.median(layers):.0%} of the raw "
          "floor")
    print("| workload | nodes/s | raw Kafka records/s | ratio | worker CPU ms/node |")
    print("|---|---|---|---|---|")
    for flow, trials in rows.items():
        print(f"| {flow} | {statistics.median(t[0] for t in trials):.1f} | "
              f"{statistics.median(t[1] for t in trials):.0f} | {statistics.median(t[0] / t[1] for t in trials):.1%} | "
              f"{statistics.median(t[2] for t in trials):.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--bootstrap", help="a Kafka broker already running (with --cassandra and --redis)")
    parser.add_argument("--cassandra", help="host:port of a Cassandra already running")
    parser.add_argument("--redis", help="URL of a Redis already running")
    parser.add_argument("--protocol-version", type=int, default=1)
    parser.add_argument("--consistency", default="ONE")
    parser.add_argument("--session-timeout-ms", type=int, default=3000)
    parser.add_argument("--fetch-wait-max-ms", type=int, default=20,
                        help="for the raw floor and the backend alike (Tansu answers a fetch at its max wait only)")
    parser.add_argument("--worker", metavar="OPTIONS", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        asyncio.run(worker_process(json.loads(arguments.worker), arguments.concurrency))
    elif arguments.bootstrap and arguments.cassandra and arguments.redis:
        asyncio.run(main(arguments, arguments.bootstrap, arguments.cassandra, arguments.redis))
    else:
        with servers() as (kafka_address, cassandra_address, redis_url):
            asyncio.run(main(arguments, kafka_address, cassandra_address, redis_url))
