"""The ``kafka`` preset's factory: one Cassandra session for the context and status stores, one Redis client
for the status decisions and the coordination store. The fast paths it takes: the queue's ``receive`` reads
each batch's run records (Redis) while it takes the leases (``prefetches_status``), and a finishing commit
drops the owner's lease (``releases_lease``, the Redis commit script). The context lives in Cassandra, apart
from the coordination (no ``applies_context``), and commits do not produce to Kafka (no ``dispatches``);
the coordination store tells the queue which job a task committed, so that job's successors are produced
without waiting (``flowcraft_kafka.coordination``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.spi import Backend, parse_options
from flowcraft_kafka._cassandra import CassandraClient
from flowcraft_kafka.context import CassandraContext
from flowcraft_kafka.coordination import KafkaCoordinationStore
from flowcraft_kafka.options import KafkaOptions, StatusOptions
from flowcraft_kafka.queue import KafkaQueue
from flowcraft_kafka.status import CassandraStatusStore
from flowcraft_redis import make_client


def build_backend(options: Mapping[str, Any]) -> Backend:
    kafka = parse_options(KafkaOptions, options)
    state = parse_options(StatusOptions, options)
    cassandra = CassandraClient(state)
    redis = make_client(state.redis_url)
    cassandra.acquire()
    cassandra.acquire()
    queue = KafkaQueue(kafka)
    status = CassandraStatusStore.build(state, cassandra, redis, owns_redis=False)
    coordination = KafkaCoordinationStore(redis, key_prefix=state.key_prefix,
                                          state_ttl_seconds=state.state_ttl_seconds)
    queue.prefetch_with(status, coordination)
    return Backend(queue, CassandraContext.build(state, cassandra), status, coordination, name="kafka",
                   options=dict(options))
