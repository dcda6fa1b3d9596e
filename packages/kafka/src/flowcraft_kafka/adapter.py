"""Seed-style explicit API (as in the TypeScript ``@flowcraft/kafka-adapter``): wire clients by hand.

    adapter = KafkaAdapter(runtime_options={"flows": [flow]}, kafka={"bootstrap_servers": "broker:9092"},
                           cassandra_client=cassandra, keyspace="flowcraft",
                           context_table_name="flowcraft_contexts", status_table_name="flowcraft_statuses",
                           coordination_store=RedisCoordinationStore(redis))
    await adapter.start()           # a worker consuming the topic in this event loop
    ...
    await adapter.stop()

``cassandra_client`` is a ``flowcraft_kafka.CassandraClient`` (or the options to build one);
``coordination_store`` any coordination store (``RedisCoordinationStore`` is re-exported here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from flowcraft.app import App
from flowcraft.client import Client
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.worker import Worker
from flowcraft.reconciler import Reconciler
from flowcraft.spi import Backend, CoordinationStore, parse_options
from flowcraft_kafka._cassandra import CassandraClient
from flowcraft_kafka.context import CassandraContext
from flowcraft_kafka.options import KafkaOptions, StatusOptions
from flowcraft_kafka.queue import KafkaQueue
from flowcraft_kafka.status import CassandraStatusStore
from flowcraft_redis import make_client


class KafkaAdapter:
    """A worker (engine + worker loop) and a client over Kafka + Cassandra + a coordination store."""

    def __init__(
        self,
        *,
        runtime_options: App | Mapping[str, Any],
        kafka: KafkaOptions | Mapping[str, Any],
        cassandra_client: CassandraClient | Mapping[str, Any],
        coordination_store: CoordinationStore,
        keyspace: str | None = None,
        context_table_name: str = "flowcraft_contexts",
        status_table_name: str = "flowcraft_statuses",
        topic_name: str = "flowcraft-jobs",
        group_id: str = "flowcraft-workers",
        redis_url: str | None = None,
        concurrency: int = 16,
        poll_wait: float = 1.0,
        engine_options: EngineOptions | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.app = runtime_options if isinstance(runtime_options, App) else App(**dict(runtime_options))
        if isinstance(kafka, KafkaOptions):
            kafka_options = replace(kafka, topic_name=topic_name, group_id=group_id)
        else:
            kafka_options = parse_options(KafkaOptions, {"topic_name": topic_name, "group_id": group_id, **kafka})
        if isinstance(cassandra_client, CassandraClient):
            client = cassandra_client
            base: dict[str, Any] = {"keyspace": keyspace or client.keyspace}
        else:
            base = {**cassandra_client, **({"keyspace": keyspace} if keyspace else {})}
            client = CassandraClient(parse_options(StatusOptions, base))
        state = parse_options(StatusOptions, {**base, "context_table_name": context_table_name,
                                              "status_table_name": status_table_name,
                                              **({"redis_url": redis_url} if redis_url else {})})
        redis = getattr(coordination_store, "redis", None) or make_client(state.redis_url)
        client.acquire()
        client.acquire()
        self.queue = KafkaQueue(kafka_options)
        self.context = CassandraContext.build(state, client)
        self.status = CassandraStatusStore.build(state, client, redis,
                                                 owns_redis=getattr(coordination_store, "redis", None) is None)
        self.coordination = coordination_store
        self.backend = Backend(self.queue, self.context, self.status, coordination_store, name="kafka")
        self.engine = Engine(self.app, self.backend, worker_id=worker_id, options=engine_options)
        self.worker = Worker(self.engine, concurrency=concurrency, poll_wait=poll_wait)
        self.client = Client(self.backend, self.app)
        self._task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        """Create the topics, the keyspace and the tables (idempotent)."""
        await self.backend.setup()

    async def start(self) -> None:
        """Start consuming the topic (a background task of the running event loop)."""
        if self._task is None or self._task.done():
            self.worker = Worker(self.engine, concurrency=self.worker.concurrency, poll_wait=self.worker.poll_wait,
                                 grace=self.worker.grace)
            self._task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        """Stop consuming, let in-flight jobs finish (within the worker's grace period) and return."""
        if self._task is not None:
            self.worker.stop()
            await self._task
            self._task = None

    async def close(self) -> None:
        await self.stop()
        await self.backend.close()

    async def __aenter__(self) -> KafkaAdapter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True, slots=True)
class KafkaReconcileStats:
    """One reconciler pass (the Kafka seed's fields, plus how many jobs were re-enqueued)."""

    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0
    requeued_jobs: int = 0
    scanned: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"stalled_runs": self.stalled_runs, "reconciled_runs": self.reconciled_runs,
                "failed_runs": self.failed_runs, "requeued_jobs": self.requeued_jobs, "scanned": self.scanned}


class KafkaReconciler:
    """:class:`flowcraft.reconciler.Reconciler` over the adapter's backend; stalled runs come from the
    ``<status table>_by_status`` lookup partitions (no ``ALLOW FILTERING``, no scan)."""

    def __init__(self, backend: Backend, stalled_threshold_seconds: float = 300.0, batch_size: int = 100) -> None:
        self.backend = backend
        self.reconciler = Reconciler(backend, stalled_threshold_seconds=stalled_threshold_seconds,
                                     batch_size=batch_size)

    async def run(self) -> KafkaReconcileStats:
        stats = await self.reconciler.run()
        return KafkaReconcileStats(stats.stalled_runs, stats.reconciled_runs, stats.failed_runs,
                                   stats.requeued_jobs, stats.scanned)


def create_kafka_reconciler(
    *,
    adapter: KafkaAdapter | Backend,
    cassandra_client: CassandraClient | None = None,
    keyspace: str | None = None,
    status_table_name: str | None = None,
    stalled_threshold_seconds: float = 300.0,
    batch_size: int = 100,
) -> KafkaReconciler:
    """A reconciler for the adapter's runs; ``cassandra_client`` / ``keyspace`` / ``status_table_name`` select
    another status table explicitly (default: the adapter's)."""
    backend = adapter.backend if isinstance(adapter, KafkaAdapter) else adapter
    if cassandra_client is not None or keyspace or status_table_name:
        current = backend.status
        if not isinstance(current, CassandraStatusStore):
            raise TypeError("create_kafka_reconciler: the backend's status store is not a CassandraStatusStore")
        client = cassandra_client or current.client
        if keyspace and keyspace != client.keyspace:
            client = CassandraClient(replace(client.options, keyspace=keyspace))
        status = CassandraStatusStore(
            client.acquire(), current.redis, status_table_name=status_table_name or current.table_name,
            key_prefix=current.key_prefix, state_ttl_seconds=current.state_ttl_seconds,
            status_buckets=current.buckets, max_value_bytes=current.max_value_bytes, owns_redis=False)
        backend = Backend(backend.queue, backend.context, status, backend.coordination, name=backend.name,
                          options=dict(backend.options))
    return KafkaReconciler(backend, stalled_threshold_seconds, batch_size)
