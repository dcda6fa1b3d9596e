"""A flowcraft worker process for the benchmarks (started and stopped by the harness).

    python -m benchmarks.worker --backend sqlite --options '{"path": "/tmp/x.db"}' --concurrency 16

It runs ``flowcraft.Engine`` + ``flowcraft.Worker`` over ``benchmarks.workloads:app``, prints a ready line once
it is dequeuing, stops gracefully on SIGTERM/SIGINT and prints how many jobs it handled. With
``FLOWCRAFT_BENCH_PROFILE=DIR`` in its environment it runs under cProfile and writes ``DIR/worker-<pid>.prof``
when it stops (``python -m pstats`` reads it): where a worker process's CPU per node goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import json
import os
import signal
from collections.abc import Sequence

from flowcraft import Engine, EngineOptions, Worker, load_app
from flowcraft.config import run_event_loop
from flowcraft.plugins import registry

READY_MARKER = "flowcraft worker ready"


async def serve(args: argparse.Namespace) -> None:
    backend = registry().build(args.backend, json.loads(args.options))
    if args.hook:  # e.g. the harness's per-node request counters (benchmarks/backend_servers.py)
        module, _, function = args.hook.partition(":")
        getattr(importlib.import_module(module), function)(backend)
    engine = Engine(load_app(args.app), backend, options=EngineOptions(lease_seconds=args.lease))
    worker = Worker(engine, concurrency=args.concurrency, poll_wait=args.poll_wait, grace=5.0)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    loop.add_signal_handler(signal.SIGINT, worker.stop)
    print(READY_MARKER, flush=True)
    try:
        await worker.run()
    finally:
        await backend.close()
        print(f"flowcraft worker stopped: handled {worker.handled} failed {worker.failed}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--options", default="{}", help="backend options as JSON")
    parser.add_argument("--app", default="benchmarks.workloads:app")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--poll-wait", type=float, default=0.5)
    parser.add_argument("--hook", default="", help="MODULE:FUNCTION called with the backend before the worker starts")
    parser.add_argument("--event-loop", default=os.environ.get("FLOWCRAFT_EVENT_LOOP", "auto"),
                        help="auto (uvloop when installed), asyncio or uvloop; default: $FLOWCRAFT_EVENT_LOOP or auto")
    args = parser.parse_args(argv)
    profile_dir = os.environ.get("FLOWCRAFT_BENCH_PROFILE")
    if not profile_dir:
        run_event_loop(serve(args), args.event_loop)
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run_event_loop(serve(args), args.event_loop)
    finally:
        profiler.disable()
        profiler.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.prof"))


if __name__ == "__main__":
    main()
