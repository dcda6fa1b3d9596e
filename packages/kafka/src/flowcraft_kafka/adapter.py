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

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from flowcraft.adapters import SeedReconciler, SeedStats, WorkerAdapter
from flowcraft.app import App
from flowcraft.engine.core import EngineOptions
from flowcraft.spi import Backend, CoordinationStore, parse_options
from flowcraft_kafka._cassandra import CassandraClient
from flowcraft_kafka.context import CassandraContext
from flowcraft_kafka.options import KafkaOptions, StatusOptions
from flowcraft_kafka.queue import KafkaQueue
from flowcraft_kafka.status import CassandraStatusStore
from flowcraft_redis import make_client


class KafkaAdapter(WorkerAdapter):
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
        status = CassandraStatusStore.build(state, client, redis,
                                            owns_redis=getattr(coordination_store, "redis", None) is None)
        backend = Backend(KafkaQueue(kafka_options), CassandraContext.build(state, client), status,
                          coordination_store, name="kafka")
        super().__init__(backend, runtime_options=runtime_options, concurrency=concurrency, poll_wait=poll_wait,
                         engine_options=engine_options, worker_id=worker_id)


@dataclass(frozen=True, slots=True)
class KafkaReconcileStats(SeedStats):
    """One reconciler pass (the Kafka seed's fields, plus how many jobs were re-enqueued)."""

    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0
    requeued_jobs: int = 0
    scanned: int = 0


class KafkaReconciler(SeedReconciler[KafkaReconcileStats]):
    """:class:`flowcraft.reconciler.Reconciler` over the adapter's backend; stalled runs come from the
    ``<status table>_by_status`` lookup partitions (no ``ALLOW FILTERING``, no scan)."""

    stats_type = KafkaReconcileStats


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
