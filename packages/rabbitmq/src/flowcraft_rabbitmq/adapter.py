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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractConnection

from flowcraft.adapters import SeedReconciler, SeedStats, WorkerAdapter
from flowcraft.app import App
from flowcraft.engine.core import EngineOptions
from flowcraft.spi import Backend, CoordinationStore
from flowcraft_rabbitmq._pg import PgClient
from flowcraft_rabbitmq.backend import hand_over
from flowcraft_rabbitmq.context import PostgresContext
from flowcraft_rabbitmq.queue import RabbitMqQueue
from flowcraft_rabbitmq.status import PostgresStatusStore
from flowcraft_redis import RedisCoordinationStore


def _pg(client: PgClient | str | Any) -> PgClient:
    if isinstance(client, PgClient):
        return client
    if isinstance(client, str):
        return PgClient(client)
    return PgClient(pool=client)


class RabbitMqAdapter(WorkerAdapter):
    """A worker (engine + worker loop) and a client over RabbitMQ + PostgreSQL + a coordination store.

    With a ``RedisCoordinationStore`` on one Redis that has no dispatcher yet, the adapter gives it this queue's
    hand-over (``continues``, on by default: finishing commits hand fired jobs to this worker through a Redis
    set, see ``flowcraft_redis.handover``; ``handover_visibility_timeout`` defaults to ``visibility_timeout``):
    such a store then serves this adapter only."""

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
        continues: bool = True,
        handover_visibility_timeout: float | None = None,
    ) -> None:
        self.pg = _pg(pg_client)
        queue = RabbitMqQueue(amqp_connection, queue_name=queue_name, visibility_timeout=visibility_timeout,
                              prefetch=prefetch or concurrency, delivery_limit=delivery_limit)
        context = PostgresContext(self.pg, context_table_name, schema=schema)
        status = PostgresStatusStore(self.pg, status_table_name, schema=schema)
        status.write_context_with(context)
        queue.prefetch_with(status, coordination_store)
        if isinstance(coordination_store, RedisCoordinationStore) and coordination_store.dispatcher is None:
            # hand-over (see flowcraft_redis.handover): this adapter's commits hand fired jobs to its worker
            coordination_store.dispatcher = hand_over(
                queue, coordination_store.redis, coordination_store.key_prefix, continues=continues,
                visibility_timeout=handover_visibility_timeout or visibility_timeout)
        super().__init__(Backend(queue, context, status, coordination_store, name="rabbitmq"),
                         runtime_options=runtime_options, concurrency=concurrency, poll_wait=poll_wait,
                         engine_options=engine_options, worker_id=worker_id)

    async def setup(self) -> None:
        """Declare the queues and create the tables and index (idempotent); the coordination store is the
        caller's."""
        await self.queue.setup()
        await self.context.setup()
        await self.status.setup()

    async def close(self) -> None:
        """Stop, then close what the adapter opened itself (a given connection or pool stays open)."""
        await self.stop()
        await self.queue.close()
        await self.pg.close()


@dataclass(frozen=True, slots=True)
class RabbitMqReconcileStats(SeedStats):
    """One reconciler pass (the seeds' fields; ``scanned_rows``: status rows examined)."""

    scanned_rows: int = 0
    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0
    requeued_jobs: int = 0


class RabbitMqReconciler(SeedReconciler[RabbitMqReconcileStats]):
    """:class:`flowcraft.reconciler.Reconciler` over the adapter's backend; stalled runs come from the status
    table's ``(status, updated_at, run_id)`` index."""

    stats_type = RabbitMqReconcileStats
    scanned_field = "scanned_rows"


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
