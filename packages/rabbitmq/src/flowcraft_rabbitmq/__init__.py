"""Flowcraft on RabbitMQ: a quorum-queue job queue, PostgreSQL context and status, Redis coordination
(preset ``rabbitmq``).

Everything is imported lazily, so ``flowcraft backends`` lists this plugin without importing aio-pika or psycopg.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcraft_rabbitmq._pg import PgClient, ValueRefusedError
    from flowcraft_rabbitmq.adapter import (
        RabbitMqAdapter,
        RabbitMqReconciler,
        RabbitMqReconcileStats,
        create_rabbitmq_reconciler,
    )
    from flowcraft_rabbitmq.context import PostgresContext
    from flowcraft_rabbitmq.options import PostgresOptions, RabbitMqOptions
    from flowcraft_rabbitmq.queue import MessageTooLargeError, RabbitMqQueue
    from flowcraft_rabbitmq.status import PostgresStatusStore
    from flowcraft_redis import RedisCoordinationStore

__version__ = "0.1.0"

_EXPORTS = {
    "RabbitMqAdapter": "flowcraft_rabbitmq.adapter", "RabbitMqReconciler": "flowcraft_rabbitmq.adapter",
    "RabbitMqReconcileStats": "flowcraft_rabbitmq.adapter",
    "create_rabbitmq_reconciler": "flowcraft_rabbitmq.adapter",
    "PostgresContext": "flowcraft_rabbitmq.context", "PostgresStatusStore": "flowcraft_rabbitmq.status",
    "RabbitMqQueue": "flowcraft_rabbitmq.queue", "MessageTooLargeError": "flowcraft_rabbitmq.queue",
    "RabbitMqOptions": "flowcraft_rabbitmq.options", "PostgresOptions": "flowcraft_rabbitmq.options",
    "PgClient": "flowcraft_rabbitmq._pg", "ValueRefusedError": "flowcraft_rabbitmq._pg",
    "RedisCoordinationStore": "flowcraft_redis",
}

__all__ = [
    "MessageTooLargeError", "PgClient", "PostgresContext", "PostgresOptions", "PostgresStatusStore",
    "RabbitMqAdapter", "RabbitMqOptions", "RabbitMqQueue", "RabbitMqReconcileStats", "RabbitMqReconciler",
    "RedisCoordinationStore", "ValueRefusedError", "create_rabbitmq_reconciler",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowcraft_rabbitmq' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
