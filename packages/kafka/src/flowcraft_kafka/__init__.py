"""Flowcraft on Kafka: a Kafka queue, Cassandra context and status, Redis coordination (preset ``kafka``).

Everything is imported lazily, so ``flowcraft backends`` lists this plugin without importing confluent-kafka
or cassandra-driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcraft_kafka._cassandra import CassandraClient
    from flowcraft_kafka.adapter import KafkaAdapter, KafkaReconciler, KafkaReconcileStats, create_kafka_reconciler
    from flowcraft_kafka.context import CassandraContext, ValueTooLargeError
    from flowcraft_kafka.coordination import KafkaCoordinationStore
    from flowcraft_kafka.options import CassandraOptions, KafkaOptions, StatusOptions
    from flowcraft_kafka.queue import KafkaQueue, MessageTooLargeError
    from flowcraft_kafka.status import CassandraStatusStore
    from flowcraft_redis import RedisCoordinationStore

__version__ = "0.1.0"

_EXPORTS = {
    "KafkaAdapter": "flowcraft_kafka.adapter", "KafkaReconciler": "flowcraft_kafka.adapter",
    "KafkaReconcileStats": "flowcraft_kafka.adapter", "create_kafka_reconciler": "flowcraft_kafka.adapter",
    "CassandraContext": "flowcraft_kafka.context", "ValueTooLargeError": "flowcraft_kafka.context",
    "CassandraStatusStore": "flowcraft_kafka.status", "KafkaQueue": "flowcraft_kafka.queue",
    "MessageTooLargeError": "flowcraft_kafka.queue", "CassandraClient": "flowcraft_kafka._cassandra",
    "KafkaOptions": "flowcraft_kafka.options", "CassandraOptions": "flowcraft_kafka.options",
    "StatusOptions": "flowcraft_kafka.options", "RedisCoordinationStore": "flowcraft_redis",
    "KafkaCoordinationStore": "flowcraft_kafka.coordination",
}

__all__ = [
    "CassandraClient", "CassandraContext", "CassandraOptions", "CassandraStatusStore", "KafkaAdapter",
    "KafkaCoordinationStore", "KafkaOptions", "KafkaQueue", "KafkaReconcileStats", "KafkaReconciler",
    "MessageTooLargeError", "RedisCoordinationStore", "StatusOptions", "ValueTooLargeError", "create_kafka_reconciler",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowcraft_kafka' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
