"""The ``rabbitmq`` preset's factory: the queue, the PostgreSQL stores on one connection pool, and the Redis
coordination store of ``flowcraft-redis``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.spi import Backend
from flowcraft_rabbitmq._pg import PgClient
from flowcraft_rabbitmq.context import PostgresContext
from flowcraft_rabbitmq.options import PostgresOptions, RabbitMqOptions
from flowcraft_rabbitmq.queue import RabbitMqQueue
from flowcraft_rabbitmq.status import PostgresStatusStore
from flowcraft_redis import RedisCoordinationStore


def build_backend(options: Mapping[str, Any]) -> Backend:
    """The ``rabbitmq`` backend from its validated options. Its components keep their data in three servers;
    the one fast path they take together is ``prefetches_status``: the queue's ``receive`` reads the batch's run
    records (one PostgreSQL statement) while it takes the leases (Redis), the two at once."""
    postgres = PostgresOptions.parse(options)
    pg = PgClient.for_options(postgres)
    queue = RabbitMqQueue.build(RabbitMqOptions.parse(options))
    status = PostgresStatusStore.build(postgres, pg)
    coordination = RedisCoordinationStore.from_config(options, {})
    queue.prefetch_with(status, coordination)
    return Backend(queue, PostgresContext.build(postgres, pg), status, coordination, name="rabbitmq")
