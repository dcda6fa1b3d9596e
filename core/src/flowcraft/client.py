"""Client: start runs on a backend, wait for them, inspect, resume and cancel them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flowcraft.app import App
from flowcraft.engine.control import RunResult
from flowcraft.engine.core import Engine
from flowcraft.engine.timeline import NodeVisit
from flowcraft.errors import ConfigError, WaitTimeoutError
from flowcraft.reconciler import Reconciler
from flowcraft.spi import FINAL_STATUSES, Backend, ReconcileStats, RunRecord

SETTLED_STATUSES = FINAL_STATUSES | {"awaiting"}


class Client:
    """The user's handle on a backend. ``start`` needs the blueprints (an ``App``); the rest does not."""

    def __init__(self, backend: Backend, app: App | None = None) -> None:
        self.backend = backend
        self.app = app or App()
        self.engine = Engine(self.app, backend)

    async def start(self, blueprint_id: str, input: Any = None, *, run_id: str | None = None,
                    context: Mapping[str, Any] | None = None) -> str:
        if self.app.blueprint(blueprint_id) is None:
            raise ConfigError(f"the client does not know blueprint {blueprint_id!r}",
                              hint="connect(app=...) or set `app = \"module:attribute\"` in config")
        return await self.engine.runs.start(blueprint_id, input, run_id=run_id, context=context)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunResult:
        """Wait until the run is completed, failed, cancelled or awaiting. Stores that can notify wake
        this at once; others are polled with a bounded backoff (10 ms doubling to 500 ms)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 1.0 if self.backend.capabilities.notifies else 0.01
        while True:
            record = await self.backend.status.get(run_id)
            if record is not None and record.status in SETTLED_STATUSES:
                return await self.engine.runs.result(run_id)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(f"run {run_id!r} did not settle within {timeout}s",
                                       hint="raise the timeout, check `flowcraft status`, or start a worker")
            await self.backend.status.wait_for_change(run_id, delay if remaining is None else min(delay, remaining))
            delay = min(delay * 2, 0.5)

    async def run(self, blueprint_id: str, input: Any = None, *, timeout: float | None = None,
                  run_id: str | None = None) -> RunResult:
        return await self.wait(await self.start(blueprint_id, input, run_id=run_id), timeout)

    async def status(self, run_id: str) -> RunResult:
        return await self.engine.runs.result(run_id)

    async def timeline(self, run_id: str) -> list[NodeVisit]:
        """The run's timeline: per node and visit its state, attempts (worker, times, error), in start order."""
        return (await self.engine.runs.result(run_id)).timeline

    async def runs(self, status: str | None = None, blueprint_id: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> tuple[list[RunRecord], str | None]:
        return await self.backend.status.list(status, blueprint_id, limit, cursor)

    async def resume(self, run_id: str, action: str | None = None, output: Any = None,
                     node_id: str | None = None) -> None:
        await self.engine.runs.resume(run_id, action, output, node_id)

    async def cancel(self, run_id: str) -> bool:
        return await self.engine.runs.cancel(run_id)

    async def reconcile(self, stalled_threshold_seconds: float = 300.0) -> ReconcileStats:
        return await Reconciler(self.backend, stalled_threshold_seconds=stalled_threshold_seconds).run()

    async def close(self) -> None:
        await self.backend.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
