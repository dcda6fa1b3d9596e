"""The ``kafka`` preset's factory: one Cassandra session for the context and status stores, one Redis client
for the status decisions and the coordination store. No fast path: the queue, the context and the
coordination live on three different servers (``Backend.capabilities`` all off)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.spi import Backend, parse_options
from flowcraft_kafka._cassandra import CassandraClient
from flowcraft_kafka.context import CassandraContext
from flowcraft_kafka.options import KafkaOptions, StatusOptions
from flowcraft_kafka.queue import KafkaQueue
from flowcraft_kafka.status import CassandraStatusStore
from flowcraft_redis import RedisCoordinationStore, make_client


def build_backend(options: Mapping[str, Any]) -> Backend:
    kafka = parse_options(KafkaOptions, options)
    state = parse_options(StatusOptions, options)
    cassandra = CassandraClient(state)
    redis = make_client(state.redis_url)
    cassandra.acquire()
    cassandra.acquire()
    return Backend(
        KafkaQueue(kafka),
        CassandraContext.build(state, cassandra),
        CassandraStatusStore.build(state, cassandra, redis, owns_redis=False),
        RedisCoordinationStore(redis, key_prefix=state.key_prefix, state_ttl_seconds=state.state_ttl_seconds),
        name="kafka", options=dict(options))
