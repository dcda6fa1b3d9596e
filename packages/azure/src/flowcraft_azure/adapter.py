"""Seed-style explicit API (as in the TypeScript ``@flowcraft/azure-adapter``): wire clients by hand.

    adapter = AzureQueueAdapter(runtime_options={"flows": [flow]}, queue_client=queue_client,
                                cosmos_client=cosmos_client, cosmos_database_name="flowcraft",
                                context_container_name="flowcraft-contexts",
                                status_container_name="flowcraft-statuses", coordination_store=store)
    await adapter.setup()           # optional: queues, database, containers
    await adapter.start()           # a worker consuming the queue in this event loop
    ...
    await adapter.stop()

``queue_client`` is an ``azure.storage.queue.aio.QueueClient`` and ``cosmos_client`` an
``azure.cosmos.aio.CosmosClient`` the caller opened (and closes); the adapter never closes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcraft import App, Client, Engine, EngineOptions, Worker
from flowcraft.reconciler import Reconciler
from flowcraft.spi import Backend, CoordinationStore
from flowcraft_azure._clients import FixedHome
from flowcraft_azure.context import CosmosDbContext
from flowcraft_azure.queue import AzureQueue
from flowcraft_azure.status import CosmosDbStatusStore

if TYPE_CHECKING:
    from azure.cosmos.aio import CosmosClient
    from azure.storage.queue.aio import QueueClient


class AzureQueueAdapter:
    """A worker (engine + worker loop) and a client over Azure Storage Queue + Cosmos DB, built from explicit
    clients, with the coordination store you pass (``flowcraft_redis.RedisCoordinationStore``)."""

    def __init__(
        self,
        *,
        runtime_options: App | Mapping[str, Any],
        queue_client: QueueClient,
        cosmos_client: CosmosClient,
        cosmos_database_name: str,
        context_container_name: str,
        status_container_name: str,
        coordination_store: CoordinationStore,
        dead_letter_queue_client: QueueClient | None = None,
        visibility_timeout: float = 30.0,
        max_dequeue_count: int = 10,
        message_encoding: str = "base64",
        concurrency: int = 16,
        poll_wait: float = 1.0,
        engine_options: EngineOptions | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.app = runtime_options if isinstance(runtime_options, App) else App(**dict(runtime_options))
        self.queue = AzureQueue(queue_client, dead_letter_queue_client, visibility_timeout=visibility_timeout,
                                max_dequeue_count=max_dequeue_count, message_encoding=message_encoding)
        database = cosmos_client.get_database_client(cosmos_database_name)
        home = FixedHome(cosmos_client, cosmos_database_name)
        self.context = CosmosDbContext(database.get_container_client(context_container_name), home=home)
        self.status = CosmosDbStatusStore(database.get_container_client(status_container_name), home=home)
        self.coordination = coordination_store
        self.backend = Backend(self.queue, self.context, self.status, coordination_store, name="azure")
        self.engine = Engine(self.app, self.backend, worker_id=worker_id, options=engine_options)
        self.worker = Worker(self.engine, concurrency=concurrency, poll_wait=poll_wait)
        self.client = Client(self.backend, self.app)
        self._task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        """Create the queue, its dead-letter queue, the database and the containers unless they exist."""
        await self.backend.setup()

    async def start(self) -> None:
        """Start consuming the queue (a background task of the running event loop)."""
        if self._task is None or self._task.done():
            self.worker = Worker(self.engine, concurrency=self.worker.concurrency, poll_wait=self.worker.poll_wait,
                                 grace=self.worker.grace)
            self._task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        """Stop dequeuing, let in-flight jobs finish (within the worker's grace period) and return."""
        if self._task is not None:
            self.worker.stop()
            await self._task
            self._task = None

    async def __aenter__(self) -> AzureQueueAdapter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True, slots=True)
class AzureReconcileStats:
    """One reconciler pass (the Azure seed's fields, plus the items scanned and the jobs re-enqueued)."""

    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0
    scanned_items: int = 0
    requeued_jobs: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"stalled_runs": self.stalled_runs, "reconciled_runs": self.reconciled_runs,
                "failed_runs": self.failed_runs, "scanned_items": self.scanned_items,
                "requeued_jobs": self.requeued_jobs}


class AzureReconciler:
    """:class:`flowcraft.reconciler.Reconciler` over the adapter's backend; stalled runs come from the status
    container's query on ``(status, lastUpdated)`` (a composite index, paged; no scans)."""

    def __init__(self, backend: Backend, stalled_threshold_seconds: float = 300.0, batch_size: int = 100) -> None:
        self.backend = backend
        self.reconciler = Reconciler(backend, stalled_threshold_seconds=stalled_threshold_seconds,
                                     batch_size=batch_size)

    async def run(self) -> AzureReconcileStats:
        stats = await self.reconciler.run()
        return AzureReconcileStats(stalled_runs=stats.stalled_runs, reconciled_runs=stats.reconciled_runs,
                                   failed_runs=stats.failed_runs, scanned_items=stats.scanned,
                                   requeued_jobs=stats.requeued_jobs)


def create_azure_reconciler(
    *,
    adapter: AzureQueueAdapter | Backend,
    cosmos_client: CosmosClient | None = None,
    cosmos_database_name: str | None = None,
    status_container_name: str | None = None,
    stalled_threshold_seconds: float = 300.0,
    batch_size: int = 100,
) -> AzureReconciler:
    """A reconciler for the adapter's runs; ``cosmos_client`` + ``cosmos_database_name`` +
    ``status_container_name`` select the status container explicitly (default: the adapter's)."""
    backend = adapter.backend if isinstance(adapter, AzureQueueAdapter) else adapter
    if cosmos_client is not None and cosmos_database_name and status_container_name:
        container = cosmos_client.get_database_client(cosmos_database_name).get_container_client(
            status_container_name)
        status = CosmosDbStatusStore(container, home=FixedHome(cosmos_client, cosmos_database_name))
        backend = Backend(backend.queue, backend.context, status, backend.coordination, name=backend.name,
                          options=dict(backend.options))
    return AzureReconciler(backend, stalled_threshold_seconds, batch_size)
