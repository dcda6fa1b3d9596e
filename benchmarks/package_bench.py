"""What the per-package benchmark scripts (``packages/*/benchmarks/bench_*.py``) share: the chain10 and
diamond8 flows of no-op nodes their worker processes load (``app``), and the queue's own floor: the chain
workload through a backend's ``Queue`` with the engine's calls and none of its state."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

from flowcraft import App, Flow, NodeContext
from flowcraft.config import run_event_loop
from flowcraft.spi import Job, Queue


async def noop(ctx: NodeContext) -> int:
    return 1


def chain10() -> Flow:
    flow = Flow("chain10", version="1")
    for i in range(10):
        flow.node(f"n{i}", noop, uses="noop")
        if i:
            flow.edge(f"n{i - 1}", f"n{i}")
    return flow


def diamond8() -> Flow:
    flow = Flow("diamond8", version="1")
    flow.node("a", noop, uses="noop").node("z", noop, uses="noop")
    for i in range(8):
        flow.node(f"m{i}", noop, uses="noop").edge("a", f"m{i}").edge(f"m{i}", "z")
    return flow


app = App(flows=[chain10(), diamond8()])  # what the scripts' worker processes load
NODES = {"chain10": 10, "diamond8": 10}


async def chain_through_queue(queue: Queue, window: int, concurrency: int, hops: int = 10) -> float:
    """``window`` chains of ``hops`` messages through ``queue`` (set up and consuming): dequeue up to
    ``concurrency``, enqueue each successor and ack each delivery on its own, as the engine does. Messages/s."""
    started = time.perf_counter()
    await queue.enqueue([Job(f"r{i}", "bench", "node", payload={"hop": 0}) for i in range(window)])
    done, total = 0, window * hops

    async def handle(delivery: Any) -> None:
        hop = int((delivery.job.payload or {})["hop"]) + 1
        if hop < hops:
            await queue.enqueue([delivery.job.evolve(payload={"hop": hop})])
        await queue.ack(delivery)

    while done < total:
        deliveries = await queue.dequeue(concurrency, 1.0)
        await asyncio.gather(*(handle(d) for d in deliveries))
        done += len(deliveries)
    return total / (time.perf_counter() - started)


def run_worker_process(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a bench script's worker mode on the worker's event loop: uvloop when installed, as ``flowcraft
    worker`` (``FLOWCRAFT_EVENT_LOOP=asyncio`` for asyncio's own)."""
    run_event_loop(coroutine, os.environ.get("FLOWCRAFT_EVENT_LOOP", "auto"))


async def start_worker_process(script: str, *args: str) -> asyncio.subprocess.Process:
    """Run ``script --worker ARGS...`` (the script's own worker mode) and wait for its "ready" line."""
    child = await asyncio.create_subprocess_exec(sys.executable, script, "--worker", *args,
                                                 stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    if (await child.stdout.readline()).decode().strip() != "ready":
        raise SystemExit("the worker process did not start")
    return child


async def stop_worker_process(child: asyncio.subprocess.Process) -> dict[str, Any]:
    """SIGTERM the worker process and return the report it prints last (one JSON line)."""
    child.send_signal(signal.SIGTERM)
    out, _ = await child.communicate()
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report
