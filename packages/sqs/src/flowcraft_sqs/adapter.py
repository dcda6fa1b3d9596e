"""Seed-style explicit API (as in the TypeScript ``@flowcraft/sqs-adapter``): wire clients by hand.

    adapter = SqsAdapter(runtime_options={"flows": [flow]}, coordination_store=store, sqs_client=sqs,
                         dynamodb_client=ddb, queue_url=url, context_table_name="flowcraft-contexts",
                         status_table_name="flowcraft-statuses")
    await adapter.start()           # a worker consuming the queue in this event loop
    ...
    await adapter.stop()

The clients are aiobotocore clients the caller opened (and closes); the adapter never closes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcraft.adapters import SeedReconciler, SeedStats, WorkerAdapter
from flowcraft.app import App
from flowcraft.engine.core import EngineOptions
from flowcraft.spi import Backend, CoordinationStore
from flowcraft_sqs.context import DynamoDbContext
from flowcraft_sqs.queue import SqsQueue
from flowcraft_sqs.status import DynamoDbStatusStore

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_sqs import SQSClient


class SqsAdapter(WorkerAdapter):
    """A worker (engine + worker loop) and a client over SQS + DynamoDB, built from explicit clients."""

    def __init__(
        self,
        *,
        runtime_options: App | Mapping[str, Any],
        coordination_store: CoordinationStore,
        sqs_client: SQSClient,
        dynamodb_client: DynamoDBClient,
        queue_url: str,
        context_table_name: str,
        status_table_name: str,
        dead_letter_queue_url: str | None = None,
        status_index_name: str = "status-lastUpdated",
        visibility_timeout: float = 30.0,
        wait_time_seconds: int = 20,
        fifo: bool = False,
        concurrency: int = 16,
        poll_wait: float = 1.0,
        engine_options: EngineOptions | None = None,
        worker_id: str | None = None,
    ) -> None:
        queue = SqsQueue(sqs_client, queue_url, dead_letter_queue_url=dead_letter_queue_url,
                         visibility_timeout=visibility_timeout, wait_time_seconds=wait_time_seconds, fifo=fifo)
        backend = Backend(queue, DynamoDbContext(dynamodb_client, context_table_name),
                          DynamoDbStatusStore(dynamodb_client, status_table_name, index_name=status_index_name),
                          coordination_store, name="sqs")
        super().__init__(backend, runtime_options=runtime_options, concurrency=concurrency, poll_wait=poll_wait,
                         engine_options=engine_options, worker_id=worker_id)


@dataclass(frozen=True, slots=True)
class SqsReconcileStats(SeedStats):
    """One reconciler pass (the SQS seed's fields, plus how many jobs were re-enqueued)."""

    scanned_items: int = 0
    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0
    requeued_jobs: int = 0


class SqsReconciler(SeedReconciler[SqsReconcileStats]):
    """:class:`flowcraft.reconciler.Reconciler` over the adapter's backend; stalled runs come from the status
    table's ``status-lastUpdated`` index (no table scans)."""

    stats_type = SqsReconcileStats
    scanned_field = "scanned_items"


def create_sqs_reconciler(
    *,
    adapter: SqsAdapter | Backend,
    dynamodb_client: DynamoDBClient | None = None,
    status_table_name: str | None = None,
    status_index_name: str = "status-lastUpdated",
    stalled_threshold_seconds: float = 300.0,
    batch_size: int = 100,
) -> SqsReconciler:
    """A reconciler for the adapter's runs; ``dynamodb_client`` + ``status_table_name`` select the status
    table explicitly (default: the adapter's)."""
    backend = adapter.backend if isinstance(adapter, SqsAdapter) else adapter
    if dynamodb_client is not None and status_table_name:
        status = DynamoDbStatusStore(dynamodb_client, status_table_name, index_name=status_index_name)
        backend = Backend(backend.queue, backend.context, status, backend.coordination, name=backend.name,
                          options=dict(backend.options))
    return SqsReconciler(backend, stalled_threshold_seconds, batch_size)
