"""What every seed-style adapter shares: the explicit API of the TypeScript adapters (``SqsAdapter``,
``RqAdapter``, ``RabbitMqAdapter`` ...), written once.

A backend package builds its components from the clients the caller passes and hands the ``Backend`` to
``WorkerAdapter``, which adds the engine, a worker loop started and stopped in the caller's event loop, and a
client. ``SeedReconciler`` runs ``flowcraft.reconciler.Reconciler`` and returns its stats under the field names
of the package's seed (``scanned_keys``, ``scanned_items`` ...)::

    class SqsAdapter(WorkerAdapter):
        def __init__(self, *, runtime_options, sqs_client, ...):
            backend = Backend(SqsQueue(sqs_client, ...), ..., name="sqs")
            super().__init__(backend, runtime_options=runtime_options, concurrency=concurrency)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, ClassVar, Generic, Self, TypeVar

from flowcraft.app import App
from flowcraft.client import Client
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.worker import Worker
from flowcraft.reconciler import Reconciler
from flowcraft.spi import Backend

S = TypeVar("S")


def app_of(runtime_options: App | Mapping[str, Any]) -> App:
    """The ``App`` an adapter runs: given as is, as ``{"app": App}``, or as ``App`` arguments (``flows``,
    ``blueprints``, ``registry``, ``dependencies``, ``max_iterations``; other keys are the adapter's)."""
    if isinstance(runtime_options, App):
        return runtime_options
    app = runtime_options.get("app")
    if isinstance(app, App):
        return app
    return App(flows=runtime_options.get("flows", ()), blueprints=runtime_options.get("blueprints", ()),
               registry=runtime_options.get("registry"), dependencies=runtime_options.get("dependencies"),
               max_iterations=int(runtime_options.get("max_iterations", 1000)))


class WorkerAdapter:
    """A worker (engine + worker loop) and a client over a backend wired by hand.

    ``start()`` runs the worker loop as a task of the running event loop; ``stop()`` stops dequeuing and lets
    in-flight jobs finish (within the worker's grace period; the rest go back to the queue); ``close()`` also
    closes the backend's components. ``async with adapter:`` starts it and stops it."""

    def __init__(self, backend: Backend, *, runtime_options: App | Mapping[str, Any], concurrency: int = 16,
                 poll_wait: float = 1.0, engine_options: EngineOptions | None = None,
                 worker_id: str | None = None) -> None:
        self.app = app_of(runtime_options)
        self.backend = backend
        self.queue, self.context, self.status = backend.queue, backend.context, backend.status
        self.coordination = backend.coordination
        self.engine = Engine(self.app, backend, worker_id=worker_id, options=engine_options)
        self.client = Client(backend, self.app)
        self.concurrency = concurrency
        self.poll_wait = poll_wait
        self.worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        """Create what the components need on their servers (queues, tables ...), idempotently."""
        await self.backend.setup()

    async def start(self) -> None:
        """Start consuming the queue (a background task of the running event loop); a no-op while running."""
        if self._task is not None and not self._task.done():
            return
        self.worker = Worker(self.engine, concurrency=self.concurrency, poll_wait=self.poll_wait)
        self._task = asyncio.get_running_loop().create_task(self.worker.run())

    async def stop(self) -> None:
        """Stop dequeuing, let in-flight jobs finish (within the worker's grace period) and return."""
        if self.worker is not None and self._task is not None:
            self.worker.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.worker, self._task = None, None

    async def close(self) -> None:
        """``stop()``, then close the components (clients the caller passed stay open: they are the caller's)."""
        await self.stop()
        await self.backend.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class SeedStats:
    """Base of the seeds' stats dataclasses: ``to_dict`` of their fields."""

    __slots__ = ()

    def to_dict(self) -> dict[str, int]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]  # subclasses are dataclasses


class SeedReconciler(Generic[S]):
    """``flowcraft.reconciler.Reconciler`` over a backend, its stats returned as the seed's ``stats_type``, built
    with the keywords ``stalled_runs``, ``reconciled_runs``, ``failed_runs``, ``requeued_jobs`` and the records
    examined under the seed's name for them (``scanned_field``)."""

    stats_type: ClassVar[Callable[..., Any]]
    #: what the seed calls the number of records a pass examined (``scanned_keys``, ``scanned_items`` ...)
    scanned_field: ClassVar[str] = "scanned"

    def __init__(self, backend: Backend, stalled_threshold_seconds: float = 300.0, batch_size: int = 100) -> None:
        self.backend = backend
        self.reconciler = Reconciler(backend, stalled_threshold_seconds=stalled_threshold_seconds,
                                     batch_size=batch_size)

    async def run(self) -> S:
        stats = await self.reconciler.run()
        result: S = self.stats_type(**{self.scanned_field: stats.scanned}, stalled_runs=stats.stalled_runs,
                                    reconciled_runs=stats.reconciled_runs, failed_runs=stats.failed_runs,
                                    requeued_jobs=stats.requeued_jobs)
        return result
