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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcraft import App, EngineOptions
from flowcraft.adapters import SeedReconciler, SeedStats, WorkerAdapter
from flowcraft.spi import Backend, CoordinationStore
from flowcraft_azure._clients import FixedHome
from flowcraft_azure.context import CosmosDbContext
from flowcraft_azure.queue import AzureQueue
from flowcraft_azure.status import CosmosDbStatusStore

if TYPE_CHECKING:
    from azure.cosmos.aio import CosmosClient
    from azure.storage.queue.aio import QueueClient


class AzureQueueAdapter(WorkerAdapter):
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
        queue = AzureQueue(queue_client, dead_letter_queue_client, visibility_timeout=visibility_timeout,
                           max_dequeue_count=max_dequeue_count, message_encoding=message_encoding)
        database = cosmos_client.get_database_client(cosmos_database_name)
        home = FixedHome(cosmos_client, cosmos_database_name)
        backend = Backend(queue, CosmosDbContext(database.get_container_client(context_container_name), home=home),
                          CosmosDbStatusStore(database.get_container_client(status_container_name), home=home),
                          coordination_store, name="azure")
        super().__init__(backend, runtime_options=runtime_options, concurrency=concurrency, poll_wait=poll_wait,
                         engine_options=engine_options, worker_id=worker_id)


@dataclass(frozen=True, slots=True)
class AzureReconcileStats(SeedStats):
    """One reconciler pass: the Azure seed's ``stalled_runs``, ``reconciled_runs``, ``failed_runs``, plus the
    status items scanned and the jobs re-enqueued."""

    scanned_items: int = 0
    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0
    requeued_jobs: int = 0


class AzureReconciler(SeedReconciler[AzureReconcileStats]):
    """:class:`flowcraft.reconciler.Reconciler` over the adapter's backend; stalled runs come from the status
    container's query on ``(status, lastUpdated)`` (a composite index, paged; no scans)."""

    stats_type = AzureReconcileStats
    scanned_field = "scanned_items"


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
