"""Seed-style explicit API (as in the TypeScript ``@flowcraft/rabbitmq-adapter``): wire clients by hand.

    connection = await aio_pika.connect_robust("amqp://guest:guest@127.0.0.1/")
    pool = psycopg_pool.AsyncConnectionPool("postgresql://...", kwargs={"autocommit": True}, open=False)
    await pool.open()
    adapter = RabbitMqAdapter(amqp_connection=connection, pg_client=pool,
                              context_table_name="flowcraft_contexts", status_table_name="flowcraft_statuses",
                              queue_name="flowcraft-jobs", coordination_store=RedisCoordinationStore(redis),
                              runtime_options={"flows": [flow]})
    await adapter.setup()           # queues, tables and index, idempotently (optional)
    await adapter.start()           # a worker consuming the queue in this event loop
    run_id = await adapter.client.start("orders", {"order_id": 7})
    ...
    await adapter.stop()

The connection and pool are the caller's (and closed by the caller); ``amqp_connection`` and ``pg_client`` may
also be plain URLs, which the adapter then opens and ``close()`` closes. A robust connection
(``aio_pika.connect_robust``) rides out a broker restart by itself; with a URL the queue reconnects itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractConnection

from flowcraft.app import App
from flowcraft.client import Client
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.worker import Worker
from flowcraft.reconciler import Reconciler
from flowcraft.spi import Backend, CoordinationStore
from flowcraft_rabbitmq._pg import PgClient
from flowcraft_rabbitmq.context import PostgresContext
from flowcraft_rabbitmq.queue import RabbitMqQueue
from flowcraft_rabbitmq.status import PostgresStatusStore


def _pg(client: PgClient | str | Any) -> PgClient:
    if isinstance(client, PgClient):
        return client
    if isinstance(client, str):
        return PgClient(client)
    return PgClient(pool=client)


class RabbitMqAdapter:
    """A worker (engine + worker loop) and a client over RabbitMQ + PostgreSQL + a coordination store."""

    def __init__(
        self,
        *,
        runtime_options: App | Mapping[str, Any],
        coordination_store: CoordinationStore,
        amqp_connection: AbstractConnection | str,
        pg_client: PgClient | str | Any,
        context_table_name: str = "flowcraft_contexts",
        status_table_name: str = "flowcraft_statuses",
        queue_name: str = "flowcraft-jobs",
        schema: str | None = None,
        visibility_timeout: float = 30.0,
        prefetch: int = 0,
        delivery_limit: int = 20,
        concurrency: int = 16,
        poll_wait: float = 1.0,
        engine_options: EngineOptions | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.app = runtime_options if isinstance(runtime_options, App) else App(**dict(runtime_options))
        self.pg = _pg(pg_client)
        self.queue = RabbitMqQueue(amqp_connection, queue_name=queue_name, visibility_timeout=visibility_timeout,
                                   prefetch=prefetch or concurrency, delivery_limit=delivery_limit)
        self.context = PostgresContext(self.pg, context_table_name, schema=schema)
        self.status = PostgresStatusStore(self.pg, status_table_name, schema=schema)
        self.coordination = coordination_store
        self.backend = Backend(self.queue, self.context, self.status, coordination_store, name="rabbitmq")
        self.engine = Engine(self.app, self.backend, worker_id=worker_id, options=engine_options)
        self.worker = Worker(self.engine, concurrency=concurrency, poll_wait=poll_wait)
        self.client = Client(self.backend, self.app)
        self._task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        """Declare the queues and create the tables and index (idempotent)."""
        await self.queue.setup()
        await self.context.setup()
        await self.status.setup()

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

    async def close(self) -> None:
        """Stop, then close what the adapter opened itself (a given connection or pool stays open)."""
        await self.stop()
        await self.queue.close()
        await self.pg.close()

    async def __aenter__(self) -> RabbitMqAdapter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True, slots=True)
class RabbitMqReconcileStats:
    """One reconciler pass (the seeds' fields; ``scanned_rows``: status rows examined)."""

    scanned_rows: int = 0
    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0
    requeued_jobs: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"scanned_rows": self.scanned_rows, "stalled_runs": self.stalled_runs,
                "reconciled_runs": self.reconciled_runs, "failed_runs": self.failed_runs,
                "requeued_jobs": self.requeued_jobs}


class RabbitMqReconciler:
    """:class:`flowcraft.reconciler.Reconciler` over the adapter's backend; stalled runs come from the status
    table's ``(status, updated_at, run_id)`` index."""

    def __init__(self, backend: Backend, stalled_threshold_seconds: float = 300.0, batch_size: int = 100) -> None:
        self.backend = backend
        self.reconciler = Reconciler(backend, stalled_threshold_seconds=stalled_threshold_seconds,
                                     batch_size=batch_size)

    async def run(self) -> RabbitMqReconcileStats:
        stats = await self.reconciler.run()
        return RabbitMqReconcileStats(stats.scanned, stats.stalled_runs, stats.reconciled_runs, stats.failed_runs,
                                      stats.requeued_jobs)


def create_rabbitmq_reconciler(
    *,
    adapter: RabbitMqAdapter | Backend,
    pg_client: PgClient | str | Any | None = None,
    status_table_name: str | None = None,
    stalled_threshold_seconds: float = 300.0,
    batch_size: int = 100,
) -> RabbitMqReconciler:
    """A reconciler for the adapter's runs; ``pg_client`` + ``status_table_name`` select the status table
    explicitly (default: the adapter's)."""
    backend = adapter.backend if isinstance(adapter, RabbitMqAdapter) else adapter
    if pg_client is not None or status_table_name:
        current = backend.status if isinstance(backend.status, PostgresStatusStore) else None
        client = _pg(pg_client) if pg_client is not None else current.client if current else None
        if client is None:
            raise ValueError("create_rabbitmq_reconciler: pass pg_client with status_table_name")
        status = PostgresStatusStore(client, status_table_name or (current.table_name if current else
                                                                   "flowcraft_statuses"),
                                     schema=current.schema if current else None)
        backend = Backend(backend.queue, backend.context, status, backend.coordination, name=backend.name,
                          options=dict(backend.options))
    return RabbitMqReconciler(backend, stalled_threshold_seconds, batch_size)
