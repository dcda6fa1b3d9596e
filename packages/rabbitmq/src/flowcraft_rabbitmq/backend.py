"""The ``rabbitmq`` preset's factory: the queue, the PostgreSQL stores on one connection pool, and the Redis
coordination store of ``flowcraft-redis``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.spi import Backend, parse_options
from flowcraft_rabbitmq._pg import PgClient
from flowcraft_rabbitmq.context import PostgresContext
from flowcraft_rabbitmq.options import PostgresOptions, RabbitMqOptions
from flowcraft_rabbitmq.queue import RabbitMqQueue
from flowcraft_rabbitmq.status import PostgresStatusStore
from flowcraft_redis import RedisClient, RedisCoordinationStore, shared_any_client
from flowcraft_redis.handover import Handover
from flowcraft_redis.options import RedisOptions


def build_backend(options: Mapping[str, Any]) -> Backend:
    """The ``rabbitmq`` backend from its validated options. Its components keep their data in three servers;
    the fast paths they take together: ``prefetches_status`` (the queue's ``receive`` reads the batch's run
    records, one PostgreSQL statement, while it takes the leases in Redis, the two at once) and, unless the
    option ``continues`` is off or Redis is a cluster, ``continues``: a finishing commit hands fired jobs to its
    worker through a Redis set beside the coordination state (``hand_over``); ``writes_context``: a run's
    ``_result`` is written by its final status transition's statement."""
    postgres = PostgresOptions.parse(options)
    pg = PgClient.for_options(postgres)
    queue_options = RabbitMqOptions.parse(options)
    queue = RabbitMqQueue.build(queue_options)
    status = PostgresStatusStore.build(postgres, pg)
    parsed = parse_options(RedisOptions, options)
    redis = shared_any_client(options, {})
    handover = hand_over(queue, redis, parsed.key_prefix, continues=queue_options.continues,
                         visibility_timeout=queue_options.handed_visibility)
    coordination = RedisCoordinationStore(redis, key_prefix=parsed.key_prefix,
                                          state_ttl_seconds=parsed.state_ttl_seconds, dispatcher=handover)
    queue.prefetch_with(status, coordination)
    context = PostgresContext.build(postgres, pg)
    status.write_context_with(context)
    return Backend(queue, context, status, coordination, name="rabbitmq")


def hand_over(queue: RabbitMqQueue, redis: RedisClient, key_prefix: str, *, continues: bool,
              visibility_timeout: float) -> Handover | None:
    """The in-flight set of the jobs commits hand over (``flowcraft_redis.handover``), given to ``queue``; None
    (no hand-over) when ``continues`` is off or ``redis`` is a Redis Cluster."""
    if not continues or not Handover.supported(redis):
        return None
    handover = Handover(redis, queue_name=queue.queue_name, key_prefix=key_prefix,
                        visibility_timeout=visibility_timeout)
    queue.hand_over_with(handover)
    return handover
