"""The kafka backend in the harness (``python -m benchmarks --backend kafka``): a Kafka-protocol broker (Tansu),
Cassandra and Redis, and the raw Kafka floor measured beside each trial.

Without ``bootstrap_servers``, ``cassandra_hosts`` and ``redis_url`` in ``--backend-options`` the three are
started on free loopback ports (``tests-integration/servers``; ``scripts/install-servers.sh kafka cassandra
redis``). Each trial gets its own topics, consumer group, keyspace and key prefix; the options Cassandra 1.2 and
Tansu need (protocol v1, consistency ONE, a short session timeout and fetch wait) are set here and can be
overridden in ``--backend-options``.

The raw floor (:func:`raw_floor`) is what the broker alone does for the same shape of work, with
confluent-kafka: no-op records the size of a job, ``runs`` chains, one consumer (its group joined before the
clock starts) taking at most the flowcraft workers' total concurrency records at a time, producing each one's
successor (acks=all, idempotent, linger 2 ms, as ``KafkaQueue``) and committing the consumed offsets every
100 ms (``KafkaQueue``'s ``commit_interval_ms``), with the same fetch wait as the backend.

The worker's hook counts its Cassandra requests and, from librdkafka's own statistics (every 100 ms, so the
figures may trail the phase by that much), the Produce, Fetch and OffsetCommit requests its clients sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.backend_servers import GAUGES, BackendServers, ServerSpec, counted, report_on_signal, safe_name

SESSION_TIMEOUT_MS = 3000  # Tansu: a group join takes about half of it
FETCH_WAIT_MAX_MS = 20  # Tansu answers a fetch at its max wait only
COMMIT_INTERVAL_MS = 100
KAFKA_REQUESTS = ("Produce", "Fetch", "OffsetCommit")


class KafkaServers(BackendServers):
    backend = "kafka"
    specs = (ServerSpec("kafka", "KafkaServer", ("bootstrap_servers",),
                        lambda s: {"bootstrap_servers": s.bootstrap_servers}),
             ServerSpec("cassandra", "CassandraServer", ("cassandra_hosts",),
                        lambda s: {"cassandra_hosts": s.contact_point}),
             ServerSpec("redis", "RedisServer", ("redis_url",), lambda s: {"redis_url": s.url}))
    hook = "benchmarks.kafka_servers:count_requests"

    def fresh_options(self, tag: str) -> dict[str, Any]:
        safe = safe_name(tag)
        return {**self.urls, "topic_name": f"fcbench-{tag}", "group_id": f"fcbench-{tag}", "partitions": 3,
                "session_timeout_ms": SESSION_TIMEOUT_MS, "fetch_wait_max_ms": FETCH_WAIT_MAX_MS,
                "commit_interval_ms": COMMIT_INTERVAL_MS, "keyspace": f"fcbench_{safe}"[:48],
                "protocol_version": 1, "consistency": "ONE", "key_prefix": f"fcbench:{tag}:"}

    async def floor(self, chains: int, in_flight: int, hops: int = 10) -> float:
        import asyncio

        return await asyncio.to_thread(raw_floor, str(self.urls["bootstrap_servers"]), chains, in_flight,
                                       SESSION_TIMEOUT_MS, FETCH_WAIT_MAX_MS, hops)


def raw_floor(bootstrap: str, chains: int, in_flight: int, session_timeout_ms: int, fetch_wait_max_ms: int,
              hops: int = 10) -> float:
    """Kafka alone for a chain workload (see the module docstring). Records/s."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    from flowcraft.spi import Job

    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 2})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": session_timeout_ms,
                         "fetch.wait.max.ms": fetch_wait_max_ms})
    try:
        consumer.subscribe([topic])
        while not consumer.assignment():
            consumer.poll(0.1)
        body = json.dumps(Job("run", "bench", "node").to_dict()).encode()
        started = time.perf_counter()
        for _ in range(chains):
            producer.produce(topic, value=body, headers=[("hop", b"0")])
        producer.flush()
        done, total = 0, chains * hops
        offsets: dict[tuple[str, int], int] = {}
        last_commit = time.monotonic()
        while done < total:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            batch: list[Any] = [msg, *consumer.consume(max(0, in_flight - 1), 0)] if in_flight > 1 else [msg]
            for m in batch:
                if m.error() is not None:
                    continue
                hop = int(dict(m.headers() or [])["hop"]) + 1
                if hop < hops:
                    producer.produce(topic, value=m.value(), headers=[("hop", str(hop).encode())])
                offsets[(m.topic(), m.partition())] = m.offset() + 1
                done += 1
            producer.poll(0)
            if time.monotonic() - last_commit > COMMIT_INTERVAL_MS / 1000:
                producer.flush()
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                asynchronous=False)
                last_commit = time.monotonic()
        producer.flush()
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    return total / elapsed


def count_requests(backend: Any) -> None:
    """``benchmarks.worker --hook``: count the worker's Cassandra requests and its Kafka clients' requests."""
    clients = {id(store.client): store.client for store in (backend.context, backend.status)}
    for client in clients.values():
        client.execute = counted("cassandra", client.execute)
    latest: dict[str, dict[str, int]] = {}  # librdkafka client name -> its cumulative requests by type

    def on_stats(text: str) -> None:
        stats = json.loads(text)
        requests: dict[str, int] = {}
        for broker in stats.get("brokers", {}).values():
            for kind, n in (broker.get("req") or {}).items():
                requests[kind] = requests.get(kind, 0) + int(n)
        latest[str(stats.get("name"))] = requests

    def gauge() -> dict[str, int]:
        out: dict[str, int] = {}
        for requests in latest.values():
            for kind, n in requests.items():
                key = f"kafka {kind}" if kind in KAFKA_REQUESTS else "kafka other"
                out[key] = out.get(key, 0) + n
        return out

    queue = backend.queue
    config: Callable[[], dict[str, Any]] = queue._config
    queue._config = lambda: {**config(), "statistics.interval.ms": 100, "stats_cb": on_stats}
    GAUGES.append(gauge)
    report_on_signal()
