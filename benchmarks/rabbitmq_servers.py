"""The rabbitmq backend in the harness (``python -m benchmarks --backend rabbitmq``): its three servers and the
raw RabbitMQ floor measured beside each trial.

Without ``amqp_url``, ``postgres_dsn`` and ``redis_url`` in ``--backend-options`` a RabbitMQ node, a PostgreSQL
cluster and a Redis server are started on free loopback ports (``tests-integration/servers``) and stopped by the
harness's exit stack. Each trial gets its own queue, tables and key prefix.

The raw floor is what the broker alone does for the same shape of work: no-op JSON messages the size of a job,
``runs`` chains in flight through a quorum queue, each delivery publishing its successor (persistent,
``mandatory``, awaited publisher confirm) and then acked, prefetch = the flowcraft workers' total concurrency.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from benchmarks.backend_servers import (
    COUNTS,
    GAUGES,
    BackendServers,
    ServerSpec,
    counted,
    report_on_signal,
    safe_name,
)


class RabbitMqServers(BackendServers):
    """RabbitMQ + PostgreSQL + Redis; the floor is :func:`raw_floor` with prefetch = the workers' window."""

    backend = "rabbitmq"
    specs = (ServerSpec("rabbitmq", "RabbitMqServer", ("amqp_url",), lambda s: {"amqp_url": s.url}),
             ServerSpec("postgres", "PostgresServer", ("postgres_dsn",), lambda s: {"postgres_dsn": s.url}),
             ServerSpec("redis", "RedisServer", ("redis_url",), lambda s: {"redis_url": s.url}))
    hook = "benchmarks.rabbitmq_servers:count_requests"

    def fresh_options(self, tag: str) -> dict[str, Any]:
        safe = safe_name(tag)
        return {**self.urls, "queue_name": f"fcbench-{tag}", "context_table": f"fcbench_{safe}_contexts"[:63],
                "status_table": f"fcbench_{safe}_statuses"[:63], "key_prefix": f"fcbench:{tag}:"}

    async def floor(self, chains: int, in_flight: int, hops: int = 10) -> float:
        return await raw_floor(self.urls["amqp_url"], chains, in_flight, hops)


_patched = False


def count_requests(backend: Any) -> None:
    """``benchmarks.worker --hook``: count the process's PostgreSQL statements (psycopg cursor executes; the
    stores' connections are in autocommit mode, so each one outside a ``transaction()`` block is a transaction
    and one round trip) and ``transaction()`` blocks, the queue's AMQP publishes and the ack/nack frames it
    sent (one ``multiple`` ack may settle several deliveries)."""
    global _patched
    if not _patched:
        import psycopg

        execute = psycopg.AsyncCursor.execute
        transaction = psycopg.AsyncConnection.transaction

        async def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
            COUNTS["postgres statements"] += 1
            return await execute(self, *args, **kwargs)

        def counted_transaction(self: Any, *args: Any, **kwargs: Any) -> Any:
            COUNTS["postgres transaction blocks"] += 1
            return transaction(self, *args, **kwargs)

        psycopg.AsyncCursor.execute = counted_execute  # type: ignore[method-assign]
        psycopg.AsyncConnection.transaction = counted_transaction  # type: ignore[method-assign]
        _patched = True
    queue: Any = backend.queue
    queue.link.publish = counted("amqp publish", queue.link.publish)
    GAUGES.append(lambda: {"amqp ack/nack": queue.settle_frames})
    report_on_signal()


async def raw_floor(amqp_url: str, chains: int, prefetch: int, hops: int = 10) -> float:
    """What RabbitMQ alone does for a chain workload: ``chains`` messages on a quorum queue, at most ``prefetch``
    delivered and not yet acked, each handled message publishes its successor (publisher confirms, persistent)
    until ``hops``, then is acked. Messages/s."""
    import aio_pika

    from flowcraft.spi import Job

    connection = await aio_pika.connect(amqp_url)
    try:
        publisher = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=max(1, prefetch))
        name = f"fcbench-raw-{uuid.uuid4().hex[:8]}"
        queue = await consumer.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        done = asyncio.Event()
        total, handled = chains * hops, 0

        def message(hop: int) -> aio_pika.Message:
            body = json.dumps({**Job("run", "bench", "node").to_dict(), "payload": {"hop": hop}}).encode()
            return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

        async def handle(incoming: Any) -> None:
            nonlocal handled
            hop = json.loads(incoming.body)["payload"]["hop"] + 1
            if hop < hops:
                await publisher.default_exchange.publish(message(hop), name, mandatory=True)
            await incoming.ack()
            handled += 1
            if handled >= total:
                done.set()

        started = time.perf_counter()
        await asyncio.gather(*(publisher.default_exchange.publish(message(0), name, mandatory=True)
                               for _ in range(chains)))
        consumer_tag = await queue.consume(handle)
        await done.wait()
        await queue.cancel(consumer_tag)
        elapsed = time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
        return total / elapsed
    finally:
        await connection.close()
