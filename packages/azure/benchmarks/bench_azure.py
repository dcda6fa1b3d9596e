"""Throughput of the azure backend on Azurite + the Cosmos DB emulator + Redis: chain10 and diamond8 (N runs
submitted at once, then one worker process drains them), next to the raw Azure Storage Queue floor measured
on the same Azurite in the same run.

    python packages/azure/benchmarks/bench_azure.py [--runs 100] [--concurrency 32] [--trials 3]

The servers are started on free loopback ports with the project's test servers (tests-integration/servers:
``scripts/install-servers.sh azurite cosmos redis``) and stopped by PID at the end.

Prints, per workload: nodes/s, the backend's nodes/s as a fraction of the raw queue floor, the HTTP requests
the worker process sent per node (Azure bills Storage Queue and Cosmos DB per operation) by service and
method, the Redis coordination calls per node, and the worker's CPU seconds per node. The raw floor
(``benchmarks.azure_servers.raw_floor``, also measured by ``python -m benchmarks --backend azure``) is no-op
messages through Azurite with the SDK alone, at most ``--concurrency`` received and not yet deleted: for each
message send its successor and delete it (Azure queues have no batch send or delete). Figures only; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# the repository root on the path: the benchmarks package the per-package scripts share
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.azure_servers import count_requests, raw_floor
from benchmarks.backend_servers import COUNTS
from benchmarks.package_bench import NODES, app, start_worker_process, stop_worker_process
from flowcraft import Engine, Worker
from flowcraft.client import Client
from flowcraft.plugins import registry

SCRIPT = str(Path(__file__).resolve())
SERVERS = Path(__file__).resolve().parents[3] / "tests-integration"




# ---------------------------------------------------------------------------------------------- the worker process
async def worker_process(options: dict[str, Any], concurrency: int) -> None:
    """Runs in the child: one worker; counts its requests (HTTP by service and method, as the harness's hook
    does, and Redis coordination calls) and CPU; prints them when stopped."""
    backend = registry().build("azure", options)
    count_requests(backend)
    requests = COUNTS
    coordination = backend.coordination
    for name in ("schedule", "begin", "renew", "release", "commit", "jobs", "activity"):
        method = getattr(coordination, name)

        async def wrapped(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            requests[f"redis {_name}"] += 1
            return await _method(*args, **kwargs)

        setattr(coordination, name, wrapped)
    worker = Worker(Engine(app, backend), concurrency=concurrency, poll_wait=1.0)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    print("ready", flush=True)
    cpu = time.process_time()
    try:
        await worker.run()
    finally:
        await backend.close()
    print(json.dumps({"requests": dict(requests), "handled": worker.handled, "cpu": time.process_time() - cpu}),
          flush=True)


async def measure(options: dict[str, Any], flow: str, runs: int, concurrency: int) -> dict[str, Any]:
    backend = registry().build("azure", options)
    await backend.setup()
    try:
        client = Client(backend, app)
        ids = [await client.start(flow) for _ in range(runs)]
        child = await start_worker_process(SCRIPT, json.dumps(options), "--concurrency", str(concurrency))
        started = time.perf_counter()
        while await completed(backend) < runs:  # noqa: ASYNC110  # another process's progress
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        report = await stop_worker_process(child)
        nodes = runs * NODES[flow]
        per_node = {op: n / nodes for op, n in sorted(report["requests"].items(), key=lambda kv: -kv[1])}
        for run_id in ids[:3]:
            assert (await client.status(run_id)).status == "completed"
        return {"nodes_per_s": nodes / elapsed, "seconds": elapsed, "requests_per_node": per_node,
                "cpu_ms_per_node": report["cpu"] * 1000 / nodes}
    finally:
        await backend.close()


async def completed(backend: Any) -> int:
    container = await backend.status._source.get()
    rows = container.query_items("SELECT VALUE COUNT(1) FROM c WHERE c.status = @s",
                                 parameters=[{"name": "@s", "value": "completed"}])
    return int(sum([row async for row in rows]))


async def main(args: argparse.Namespace, base: dict[str, Any]) -> None:
    """``--trials`` rounds of: raw floor, chain10, diamond8 — side by side, so each ratio compares figures taken
    moments apart on the same servers."""
    rows: dict[str, list[tuple[float, float, float, float]]] = {"chain10": [], "diamond8": []}
    for trial in range(1, args.trials + 1):
        raw = await raw_floor(base["azure_storage_connection_string"], args.runs, args.concurrency)
        print(f"trial {trial}: raw Azure queue floor ({args.runs} chains, {args.concurrency} in flight; send + delete) "
              f"{raw:.0f} messages/s", flush=True)
        for flow in rows:
            tag = f"b{uuid.uuid4().hex[:10]}"
            figures = await measure({**base, "queue_name": f"{tag}-{flow}", "cosmos_database": tag,
                                     "key_prefix": f"bench:{tag}:"}, flow, args.runs, args.concurrency)
            http = sum(n for op, n in figures["requests_per_node"].items() if not op.startswith("redis"))
            rows[flow].append((figures["nodes_per_s"], raw, http, figures["cpu_ms_per_node"]))
            detail = ", ".join(f"{op} {n:.2f}" for op, n in figures["requests_per_node"].items())
            print(f"  {flow}: {figures['nodes_per_s']:.1f} nodes/s ({figures['seconds']:.1f} s for {args.runs} runs), "
                  f"{figures['nodes_per_s'] / raw:.1%} of the raw floor; {http:.2f} Azure requests/node; "
                  f"{figures['cpu_ms_per_node']:.2f} ms worker CPU/node; {detail}", flush=True)
    print()
    print(f"medians of {args.trials} trials, {args.runs} runs in flight, one worker process "
          f"(concurrency {args.concurrency})")
    print("| workload | nodes/s | raw queue msgs/s | ratio | Azure requests/node | worker CPU ms/node |")
    print("|---|---|---|---|---|---|")
    for flow, trials in rows.items():
        print(f"| {flow} | {statistics.median(t[0] for t in trials):.1f} | "
              f"{statistics.median(t[1] for t in trials):.0f} | {statistics.median(t[0] / t[1] for t in trials):.1%} | "
              f"{statistics.median(t[2] for t in trials):.2f} | {statistics.median(t[3] for t in trials):.2f} |")


def run_with_servers(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(SERVERS))
    from servers import AzuriteServer, CosmosServer, RedisServer

    with ExitStack() as stack:
        azurite = stack.enter_context(AzuriteServer())
        cosmos = stack.enter_context(CosmosServer())
        redis = stack.enter_context(RedisServer())
        base = {"azure_storage_connection_string": azurite.connection_string, "cosmos_endpoint": cosmos.endpoint,
                "cosmos_key": cosmos.key, "cosmos_ca_cert": str(cosmos.ca_cert_path), "redis_url": redis.url,
                "visibility_timeout": 30}
        asyncio.run(main(args, base))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--worker", metavar="OPTIONS", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        asyncio.run(worker_process(json.loads(arguments.worker), arguments.concurrency))
    else:
        run_with_servers(arguments)
