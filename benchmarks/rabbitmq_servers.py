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
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

URL_OPTIONS = ("amqp_url", "postgres_dsn", "redis_url")


class RabbitMqServers:
    """The servers of one harness run and the per-trial options."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls

    @classmethod
    def start(cls, given: dict[str, Any], stack: contextlib.ExitStack, server_pids: list[int],
              server_class: Callable[[str, str], Any], start: Callable[[Any], Any],
              say: Callable[[str], None]) -> RabbitMqServers:
        """Start the servers whose URL is not in ``given`` (the user's ``--backend-options``)."""
        urls = {name: str(given[name]) for name in URL_OPTIONS if given.get(name)}
        wanted = (("amqp_url", "rabbitmq", "RabbitMqServer"), ("postgres_dsn", "postgres", "PostgresServer"),
                  ("redis_url", "redis", "RedisServer"))
        for option, module, name in wanted:
            if option in urls:
                continue
            server = start(server_class(module, name)())
            stack.callback(server.close)
            urls[option] = server.url
            server_pids.append(server.pid)
            say(f"started {server.name} pid {server.pid} on {server.url}")
        return cls(urls)

    def fresh_options(self, tag: str) -> dict[str, Any]:
        safe = "".join(c if c.isalnum() else "_" for c in tag).lower()
        return {**self.urls, "queue_name": f"fcbench-{tag}", "context_table": f"fcbench_{safe}_contexts"[:63],
                "status_table": f"fcbench_{safe}_statuses"[:63], "key_prefix": f"fcbench:{tag}:"}

    async def floor(self, chains: int, prefetch: int, hops: int = 10) -> float:
        """Messages per second of the raw chain workload (see the module docstring)."""
        return await raw_floor(self.urls["amqp_url"], chains, prefetch, hops)


async def raw_floor(amqp_url: str, chains: int, prefetch: int, hops: int = 10) -> float:
    """What RabbitMQ alone does for a chain workload: ``chains`` messages in flight on a quorum queue, each
    handled message publishes its successor (publisher confirms, persistent) until ``hops``, then is acked.
    Messages/s."""
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
