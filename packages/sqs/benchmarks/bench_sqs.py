"""Throughput of the sqs backend on a moto server: chain10 and diamond8 (N runs submitted at once, then one
worker process drains them), next to the raw SQS floor measured on the same server in the same run.

    python packages/sqs/benchmarks/bench_sqs.py [--runs 100] [--concurrency 32] [--trials 3] [--endpoint URL]

Without ``--endpoint`` a moto server is started on a free loopback port and stopped (by PID) at the end.
Credentials come from the AWS environment variables (``test``/``test`` is used when they are unset).

Prints, per workload: nodes/s, the backend's nodes/s as a fraction of the raw SQS floor, the AWS
requests the worker process sent per node (by operation), and CPU per node: the worker process's, and the
moto server's (when this script started it). The raw floor is no-op messages through SQS with
the same batching the backend uses (SendMessageBatch / ReceiveMessage of up to 10 / DeleteMessageBatch),
once with the plain client and once through ``SqsQueue`` (enqueue / dequeue / ack).
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

# the repository root on the path: the benchmarks package the per-package scripts share
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.package_bench import NODES, app, chain_through_queue, start_worker_process, stop_worker_process
from flowcraft import Engine, Worker
from flowcraft.client import Client
from flowcraft.plugins import registry
from flowcraft.spi import Backend, Job

SCRIPT = str(Path(__file__).resolve())
#: single-item DynamoDB requests by what they bill: a write request unit, a read request unit (per KB / 4 KB)
WRITES = frozenset({"UpdateItem", "PutItem", "DeleteItem"})
READS = frozenset({"GetItem", "Query"})




# ---------------------------------------------------------------------------------------------- moto
#: the moto server this script started (its CPU time is read from /proc), else None
SERVER_PID: int | None = None


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux /proc), None when unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Any:
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if binary is None:
        raise SystemExit("moto_server is not installed: pip install 'moto[sqs,dynamodb]' flask flask-cors")
    port = free_port()
    process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    global SERVER_PID
    SERVER_PID = process.pid
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                opener.open(f"{url}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("moto_server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------- raw floor
async def raw_floor(endpoint: str, region: str, window: int, hops: int = 10) -> float:
    """What SQS alone does for a chain workload on this server: ``window`` messages in flight (one per run),
    each handled message sends its successor until ``hops``; one consumer loop with ReceiveMessage (10, long
    poll), SendMessageBatch of the successors and DeleteMessageBatch. Messages/s."""
    from aiobotocore.session import get_session

    async with get_session().create_client("sqs", endpoint_url=endpoint, region_name=region) as sqs:
        url = (await sqs.create_queue(QueueName=f"bench-raw-{uuid.uuid4().hex[:8]}"))["QueueUrl"]

        def body(hop: int) -> str:
            return json.dumps({**Job("run", "bench", "node").to_dict(), "payload": {"hop": hop}})

        started = time.perf_counter()
        for start in range(0, window, 10):
            await sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": body(0)} for i in range(min(10, window - start))])
        done, total = 0, window * hops
        while done < total:
            response = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                                 VisibilityTimeout=30, AttributeNames=["ApproximateReceiveCount"])
            batch = response.get("Messages", [])
            if not batch:
                continue
            successors = [json.loads(m["Body"])["payload"]["hop"] + 1 for m in batch]
            work = [sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])]
            if any(h < hops for h in successors):
                work.append(sqs.send_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "MessageBody": body(h)} for i, h in enumerate(successors) if h < hops]))
            await asyncio.gather(*work)
            done += len(batch)
        elapsed = time.perf_counter() - started
        await sqs.delete_queue(QueueUrl=url)
    return total / elapsed


async def queue_floor(options: dict[str, Any], window: int, concurrency: int, hops: int = 10) -> float:
    """The same chain workload through SqsQueue: dequeue up to ``concurrency``, enqueue each successor and
    ack each delivery on its own (as the engine does; the queue coalesces them into batch calls)."""
    backend = registry().build("sqs", options)
    await backend.queue.setup()
    queue = backend.queue
    try:
        return await chain_through_queue(queue, window, concurrency, hops)
    finally:
        await backend.close()


# ---------------------------------------------------------------------------------------------- the worker process
async def worker_process(options: dict[str, Any], concurrency: int) -> None:
    """Runs in the child: one worker; counts the AWS requests it sends; prints them when stopped."""
    backend = registry().build("sqs", options)
    requests: Counter[str] = Counter()
    items: Counter[str] = Counter()  # DynamoDB bills a batched request per item: written, read
    messages: Counter[str] = Counter()  # SQS messages sent, deleted and received in batch calls

    def count(event_name: str, **kwargs: Any) -> None:
        requests[event_name.rsplit(".", 1)[-1]] += 1

    def count_items(event_name: str, params: dict[str, Any], **kwargs: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if operation == "BatchWriteItem":
            items["written"] += sum(len(entries) for entries in params.get("RequestItems", {}).values())
        elif operation == "BatchGetItem":
            items["read"] += sum(len(table["Keys"]) for table in params.get("RequestItems", {}).values())
        elif operation in WRITES:
            items["written"] += 1
        elif operation in READS:
            items["read"] += 1
        elif operation in ("SendMessageBatch", "DeleteMessageBatch"):
            messages[operation] += len(params.get("Entries", []))

    def count_received(event_name: str, parsed: dict[str, Any], **kwargs: Any) -> None:
        messages["ReceiveMessage"] += len(parsed.get("Messages", []))

    for component in (backend.queue, backend.coordination):
        client = await component._source.get()  # type: ignore[attr-defined]
        client.meta.events.register("before-call.*.*", count)
        client.meta.events.register("before-parameter-build.*.*", count_items)  # the API's own parameters
        client.meta.events.register("after-call.sqs.ReceiveMessage", count_received)
    worker = Worker(Engine(app, backend), concurrency=concurrency, poll_wait=1.0)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    print("ready", flush=True)
    cpu = time.process_time()
    try:
        await worker.run()
    finally:
        await backend.close()
    print(json.dumps({"requests": dict(requests), "items": dict(items), "messages": dict(messages),
                      "handled": worker.handled,
                      "cpu_s": time.process_time() - cpu}), flush=True)


async def measure(options: dict[str, Any], flow: str, runs: int, concurrency: int) -> dict[str, Any]:
    backend = registry().build("sqs", options)
    await backend.setup()
    try:
        client = Client(backend, app)
        for _ in range(runs):
            await client.start(flow)
        child = await start_worker_process(SCRIPT, json.dumps(options), "--concurrency", str(concurrency))
        server_cpu = process_cpu_seconds(SERVER_PID)
        started = time.perf_counter()
        ddb = await backend.status._source.get()  # type: ignore[attr-defined]
        while await completed(ddb, backend, "completed") < runs:  # noqa: ASYNC110  # another process's progress
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        server_after = process_cpu_seconds(SERVER_PID)
        report = await stop_worker_process(child)
        nodes = runs * NODES[flow]
        per_node = {op: n / nodes for op, n in sorted(report["requests"].items(), key=lambda kv: -kv[1])}
        items = await count_items(ddb, backend.coordination.table_name)  # type: ignore[attr-defined]
        largest = await largest_item_kb(ddb, backend.coordination.table_name)  # type: ignore[attr-defined]
        server_us = None if server_cpu is None or server_after is None else (server_after - server_cpu) / nodes * 1e6
        return {"largest_coordination_item_kb": largest, "nodes_per_s": nodes / elapsed, "seconds": elapsed,
                "worker_cpu_us_per_node": report["cpu_s"] / nodes * 1e6, "server_cpu_us_per_node": server_us,
                "requests_per_node": per_node,
                "messages_per_call": {op: n / report["requests"][op] for op, n in sorted(report["messages"].items())
                                      if report["requests"].get(op)},
                "coordination_items": items,
                "dynamodb_items_per_node": {kind: n / nodes for kind, n in report["items"].items()}}
    finally:
        await backend.close()


async def completed(ddb: Any, backend: Backend, status: str) -> int:
    store = backend.status
    response = await ddb.query(TableName=store.table_name, IndexName=store.index_name,  # type: ignore[attr-defined]
                               KeyConditionExpression="#s = :s", ExpressionAttributeNames={"#s": "status"},
                               ExpressionAttributeValues={":s": {"S": status}}, Select="COUNT")
    return int(response["Count"])


async def count_items(ddb: Any, table: str) -> int:
    response = await ddb.scan(TableName=table, Select="COUNT")
    return int(response["Count"])


async def largest_item_kb(ddb: Any, table: str) -> float:
    """The largest item's size, roughly as DynamoDB counts it (names + values): a write to an item bills one
    write request unit per started KB of the larger of its sizes before and after."""
    response = await ddb.scan(TableName=table)
    return max((len(json.dumps(item, separators=(",", ":"))) / 1024 for item in response["Items"]), default=0.0)


async def main(args: argparse.Namespace, endpoint: str) -> None:
    """``--trials`` rounds of: raw floor, SqsQueue floor, chain10, diamond8 — side by side, so each ratio
    compares figures taken moments apart on the same server (an emulator's speed drifts a lot)."""
    region = "us-east-1"
    base = {"endpoint_url": endpoint, "region": region}
    rows: dict[str, list[tuple[float, float, float]]] = {"chain10": [], "diamond8": []}  # nodes/s, raw, req/node
    layers: list[float] = []
    for trial in range(1, args.trials + 1):
        tag = uuid.uuid4().hex[:8]
        raw = await raw_floor(endpoint, region, args.runs)
        layer = await queue_floor({**base, "queue_name": f"bench-q-{tag}", "table_prefix": f"bench-q-{tag}-"},
                                  args.runs, args.concurrency)
        layers.append(layer / raw)
        print(f"trial {trial}: raw SQS floor ({args.runs} chains in flight; receive 10 + send successors + "
              f"delete, batched) {raw:.0f} messages/s; through SqsQueue {layer:.0f} messages/s", flush=True)
        for flow in rows:
            name = f"bench-{flow}-{tag}"
            figures = await measure({**base, "queue_name": name, "table_prefix": f"{name}-"}, flow, args.runs,
                                    args.concurrency)
            total = sum(figures["requests_per_node"].values())
            rows[flow].append((figures["nodes_per_s"], raw, total))
            requests = ", ".join(f"{op} {n:.2f}" for op, n in figures["requests_per_node"].items())
            billed = ", ".join(f"{n:.2f} {kind}" for kind, n in figures["dynamodb_items_per_node"].items())
            batches = ", ".join(f"{op} {n:.1f}" for op, n in figures["messages_per_call"].items())
            print(f"  {flow}: {figures['nodes_per_s']:.1f} nodes/s ({figures['seconds']:.1f} s for {args.runs} "
                  f"runs), {figures['nodes_per_s'] / raw:.1%} of the raw floor; {total:.2f} AWS requests/node: "
                  f"{requests} (messages per call: {batches}); "
                  f"CPU/node: worker {figures['worker_cpu_us_per_node']:.0f} µs, server "
                  f"{figures['server_cpu_us_per_node'] or 0:.0f} µs; DynamoDB items/node: {billed}; "
                  f"{figures['coordination_items']} coordination "
                  f"items at the end, the largest {figures['largest_coordination_item_kb']:.1f} KB", flush=True)
    print()
    print(f"medians of {args.trials} trials, {args.runs} runs in flight, one worker process "
          f"(concurrency {args.concurrency}); SqsQueue alone reaches {statistics.median(layers):.0%} of the raw floor")
    print("| workload | nodes/s | raw SQS msgs/s | ratio | AWS requests/node |")
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
    parser.add_argument("--endpoint", help="an SQS/DynamoDB endpoint already running (default: start moto)")
    parser.add_argument("--worker", metavar="OPTIONS", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    if arguments.worker:
        asyncio.run(worker_process(json.loads(arguments.worker), arguments.concurrency))
    elif arguments.endpoint:
        asyncio.run(main(arguments, arguments.endpoint))
    else:
        with moto_server() as url:
            asyncio.run(main(arguments, url))
