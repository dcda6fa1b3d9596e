"""A worker process for crash tests: ``python -m flowcraft.testing.worker --backend NAME --options JSON``.

``--fault POINT --fault-at N`` arms the engine's fault-injection hook: the N-th time this process reaches
POINT of job handling it SIGKILLs itself, exactly like a machine dying there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any

from flowcraft.app import load_app
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.events import Event, EventBus
from flowcraft.engine.worker import Worker
from flowcraft.plugins import registry

FAULT_POINTS = ("after_dequeue", "after_execute", "after_commit", "after_enqueue", "before_ack")


class KillAt:
    """Fault hook: SIGKILL this process the ``at``-th time ``point`` is reached."""

    def __init__(self, point: str, at: int) -> None:
        if point not in FAULT_POINTS:
            raise SystemExit(f"unknown fault point {point!r}; use one of {', '.join(FAULT_POINTS)}")
        self.point, self.at, self.seen = point, at, 0

    def __call__(self, point: str) -> None:
        if point == self.point:
            self.seen += 1
            if self.seen >= self.at:
                os.kill(os.getpid(), signal.SIGKILL)


async def main(args: argparse.Namespace) -> None:
    backend = registry().build(args.backend, json.loads(args.options))
    events = EventBus()
    log_path = os.environ.get("FLOWCRAFT_TEST_EVENTS")
    if log_path:
        def record(event: Event) -> None:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"event": event.name, "run": event.run_id, **_plain(event.data)}) + "\n")
        events.on("run:finish", record)
    fault = KillAt(args.fault, args.fault_at) if args.fault else None
    engine = Engine(load_app(args.app), backend, events=events, fault=fault,
                    options=EngineOptions(lease_seconds=args.lease))
    worker = Worker(engine, concurrency=args.concurrency, poll_wait=0.2)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    loop.add_signal_handler(signal.SIGINT, worker.stop)
    print("worker ready", flush=True)
    try:
        await worker.run()
    finally:
        await backend.close()


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if isinstance(v, str | int | float | bool | type(None))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--app", default="flowcraft.testing.apps:app")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--fault", choices=FAULT_POINTS)
    parser.add_argument("--fault-at", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
