"""FlowRuntime: the engine over the in-memory backend with an in-process asyncio worker pool."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flowcraft.app import App
from flowcraft.backends.memory import memory_backend
from flowcraft.client import Client
from flowcraft.engine.control import RunResult
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.events import EventBus, Listener, Middleware
from flowcraft.engine.worker import Worker
from flowcraft.flow import Flow
from flowcraft.model import Blueprint
from flowcraft.nodes.base import Implementation
from flowcraft.spi import Backend


class FlowRuntime:
    """Run blueprints in this process: same engine and semantics as the distributed workers.

    ``await runtime.run(id, input)`` returns when the run is completed, failed, cancelled or awaiting
    (then ``await runtime.resume(result, action=..., output=...)``).
    """

    def __init__(
        self,
        flows: Iterable[Flow] = (),
        blueprints: Iterable[Blueprint] = (),
        registry: Mapping[str, Implementation] | None = None,
        dependencies: Mapping[str, Any] | None = None,
        *,
        app: App | None = None,
        backend: Backend | None = None,
        concurrency: int = 64,
        middleware: Sequence[Middleware] = (),
        max_iterations: int = 1000,
        options: EngineOptions | None = None,
    ) -> None:
        self.app = app or App(flows, blueprints, registry, dependencies, max_iterations)
        self.backend = backend or memory_backend()
        self.events = EventBus()
        self.engine = Engine(self.app, self.backend, events=self.events, middleware=middleware,
                             options=options or EngineOptions(lease_seconds=30.0))
        self.client = Client(self.backend, self.app)
        self.client.engine = self.engine
        self.concurrency = concurrency
        self._worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None

    def on(self, event: str, listener: Listener) -> Listener:
        """Subscribe to an event ('node:finish', 'run:finish', ... or '*')."""
        return self.events.on(event, listener)

    async def start(self, blueprint_id: str, input: Any = None, *, run_id: str | None = None,
                    context: Mapping[str, Any] | None = None) -> str:
        self._ensure_worker()
        return await self.engine.runs.start(blueprint_id, input, run_id=run_id, context=context)

    async def run(self, blueprint_id: str, input: Any = None, *, run_id: str | None = None,
                  context: Mapping[str, Any] | None = None, timeout: float | None = None) -> RunResult:
        run_id = await self.start(blueprint_id, input, run_id=run_id, context=context)
        return await self.wait(run_id, timeout)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunResult:
        self._ensure_worker()
        return await self.client.wait(run_id, timeout)

    async def resume(self, run: str | RunResult, action: str | None = None, output: Any = None,
                     node_id: str | None = None, timeout: float | None = None) -> RunResult:
        run_id = run.run_id if isinstance(run, RunResult) else run
        self._ensure_worker()
        await self.engine.runs.resume(run_id, action, output, node_id)
        return await self.wait(run_id, timeout)

    async def cancel(self, run: str | RunResult) -> bool:
        return await self.engine.runs.cancel(run.run_id if isinstance(run, RunResult) else run)

    async def status(self, run_id: str) -> RunResult:
        return await self.engine.runs.result(run_id)

    def run_sync(self, blueprint_id: str, input: Any = None, **kwargs: Any) -> RunResult:
        """``run`` for scripts without an event loop."""
        async def main() -> RunResult:
            try:
                return await self.run(blueprint_id, input, **kwargs)
            finally:
                await self.close()
        return asyncio.run(main())

    async def close(self) -> None:
        if self._worker is not None and self._worker_task is not None:
            self._worker.stop()
            await self._worker_task
        self._worker = self._worker_task = None

    async def __aenter__(self) -> FlowRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._worker_task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._worker = Worker(self.engine, concurrency=self.concurrency, poll_wait=0.5, grace=1.0)
        self._worker_task = loop.create_task(self._worker.run())
