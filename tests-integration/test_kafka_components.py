"""What the contract suite does not show about the kafka backend, on the real servers (Tansu, Cassandra
1.2.0, Redis): offsets committed only below the lowest unfinished record, no head-of-line blocking, a record
that is not a job dead-lettered while its partition moves on, redelivery after a restart, released copies
carrying their delivery count, status lookup repair, concurrent same-status changes, bad input, the seed-style
adapter and reconciler."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from test_kafka_contract import kafka_options

from flowcraft.errors import ServerUnreachableError, StoreLimitError
from flowcraft.plugins import registry
from flowcraft.spi import Backend, Job, RunRecord
from flowcraft_kafka import CassandraStatusStore, KafkaAdapter, KafkaQueue, create_kafka_reconciler

pytestmark = pytest.mark.asyncio


@pytest.fixture
def options(kafka_bootstrap: str, cassandra_contact_point: str, redis_url: str) -> dict[str, Any]:
    return {**kafka_options(kafka_bootstrap, cassandra_contact_point, redis_url), "partitions": 1,
            "visibility_timeout": 30}


@pytest_asyncio.fixture
async def backend(options: dict[str, Any]) -> AsyncIterator[Backend]:
    built = registry().build("kafka", options)
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


def queue_of(backend: Backend) -> KafkaQueue:
    assert isinstance(backend.queue, KafkaQueue)
    return backend.queue


async def take(queue: KafkaQueue, count: int, timeout: float = 15.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += await queue.dequeue(count - len(got), 0.5)
    return got


def committed(options: dict[str, Any]) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": options["bootstrap_servers"], "group.id": options["group_id"],
                         "enable.auto.commit": False})
    try:
        (tp,) = consumer.committed([TopicPartition(options["topic_name"], 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


async def committed_soon(options: dict[str, Any], expected: int) -> int:
    for _ in range(40):
        offset = await asyncio.to_thread(committed, options)
        if offset == expected:
            return offset
        await asyncio.sleep(0.1)
    return offset


async def test_offsets_stay_below_the_lowest_unfinished_record(backend: Backend, options: dict[str, Any]) -> None:
    """Three records of one partition in flight at once; acking the later two commits nothing past the first
    (no head-of-line blocking, nothing skipped); acking the first moves the offset past all three."""
    queue = queue_of(backend)
    await queue.enqueue([Job(f"r{i}", "bp", "n") for i in range(3)])
    first, second, third = sorted(await take(queue, 3), key=lambda d: d.receipt.offset)
    await queue.ack(second)
    await queue.ack(third)
    assert await committed_soon(options, 0) in (0, -1001)  # -1001: nothing committed yet
    await queue.ack(first)
    assert await committed_soon(options, 3) == 3


async def test_a_record_that_is_not_a_job_is_dead_lettered_and_the_partition_moves_on(
        backend: Backend, options: dict[str, Any]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": options["bootstrap_servers"]})
    producer.produce(options["topic_name"], value=b"not json {")
    producer.flush(10)
    queue = queue_of(backend)
    await queue.enqueue([Job("after", "bp", "n")])
    (delivery,) = await take(queue, 1)
    assert delivery.job.run_id == "after"
    await queue.ack(delivery)
    letters = await queue.dead_letters(10)
    assert len(letters) == 1 and letters[0].job is None
    assert letters[0].reason.startswith("unreadable record")
    assert await committed_soon(options, 2) == 2


async def test_an_unfinished_record_is_delivered_again_after_a_restart(options: dict[str, Any]) -> None:
    """A worker that stops without finishing a record: the next consumer of the group receives it again."""
    first = registry().build("kafka", options)
    await first.setup()
    queue = queue_of(first)
    await queue.enqueue([Job("r1", "bp", "a"), Job("r2", "bp", "b")])
    deliveries = sorted(await take(queue, 2), key=lambda d: d.receipt.offset)
    await queue.ack(deliveries[1])  # the later one is finished, the earlier one is not
    await first.close()
    second = registry().build("kafka", options)
    try:
        again = await take(queue_of(second), 2, timeout=20)
        assert [d.job.node_id for d in again][:1] == ["a"]  # redelivered from the committed offset
        for delivery in again:
            await second.queue.ack(delivery)
    finally:
        await second.close()


async def test_a_released_copy_carries_its_delivery_count(backend: Backend) -> None:
    queue = queue_of(backend)
    await queue.enqueue([Job("r", "bp", "n")])
    (delivery,) = await take(queue, 1)
    await queue.release(delivery, 0.5)
    (again,) = await take(queue, 1)
    assert again.deliveries == 2 and again.job == delivery.job
    await queue.release(again)
    (third,) = await take(queue, 1)
    assert third.deliveries == 3
    await queue.ack(third)
    await queue.release(delivery)  # a receipt of an earlier delivery acts on nothing
    assert await queue.dequeue(1, 0.5) == []


async def test_oversized_values_are_store_limit_errors(backend: Backend, options: dict[str, Any]) -> None:
    with pytest.raises(StoreLimitError):
        await backend.queue.enqueue([Job("r", "bp", "n", input="x" * 1_100_000, has_input=True)])
    with pytest.raises(StoreLimitError):
        await backend.context.apply("r", {"big": "x" * 1_100_000})


async def test_unreachable_broker_is_one_clear_line(options: dict[str, Any]) -> None:
    built = registry().build("kafka", {**options, "bootstrap_servers": "127.0.0.1:1", "connect_timeout": 1.5})
    with pytest.raises(ServerUnreachableError, match=r"Kafka at 127\.0\.0\.1:1 cannot be reached"):
        await built.queue.enqueue([Job("r", "bp", "n")])


async def test_setup_is_idempotent(backend: Backend) -> None:
    await backend.setup()
    await backend.setup()


async def test_concurrent_changes_of_one_status_lose_nothing(backend: Backend) -> None:
    """running -> running with different changes, concurrently: the optimistic version keeps every change."""
    run = "r-" + str(time.time())
    assert await backend.status.create(RunRecord(run, "bp"))
    results = await asyncio.gather(*(backend.status.transition(run, ["running"], "running",
                                                               {"errors": [{"n": i}]}) for i in range(5)))
    assert all(r is not None for r in results)
    winner = await backend.status.transition(run, ["running"], "awaiting", {"awaiting": [{"node": "w"}]})
    assert winner is not None and winner.awaiting == [{"node": "w"}]


async def test_stale_lookup_rows_are_repaired(backend: Backend) -> None:
    """A writer that died between the Redis decision and the Cassandra write left a 'running' lookup row for
    a run that is completed: stalled skips it and removes the row."""
    status = backend.status
    assert isinstance(status, CassandraStatusStore)
    await status.create(RunRecord("stale", "bp"))
    old = await status.get("stale")
    assert old is not None
    # the decision only, as if the process died before mirroring it to Cassandra
    done = RunRecord.from_dict({**old.to_dict(), "status": "completed", "updated_at": time.time()})
    await status.redis.hset(f"{status.key_prefix}cstatus:stale", mapping={"status": "completed",
                                                                         "record": json.dumps(done.to_dict())})
    assert "stale" not in {r.run_id for r in await status.stalled(time.time() + 1, 100)}
    rows = await status.client.execute(status._q_stalled, ("running", status.bucket("stale"), 0.0, time.time() + 1))
    assert "stale" not in {row.run_id for row in rows}
    durable = await status._durable("stale")
    assert durable is not None and durable.status == "completed"


async def test_seed_style_adapter_and_reconciler(options: dict[str, Any]) -> None:
    from flowcraft import Flow
    from flowcraft_kafka import CassandraClient, RedisCoordinationStore, StatusOptions
    from flowcraft_redis import make_client

    flow = Flow("seed", version="1")
    flow.node("a", lambda ctx: 1, uses="a").node("b", lambda ctx: 2, uses="b").edge("a", "b")
    redis = make_client(options["redis_url"])
    cassandra = CassandraClient(StatusOptions(cassandra_hosts=options["cassandra_hosts"],
                                              keyspace=options["keyspace"], protocol_version=1, consistency="ONE"))
    adapter = KafkaAdapter(runtime_options={"flows": [flow]},
                           kafka={k: options[k] for k in ("bootstrap_servers", "partitions", "session_timeout_ms")},
                           cassandra_client=cassandra, keyspace=options["keyspace"],
                           context_table_name="seed_contexts", status_table_name="seed_statuses",
                           topic_name=options["topic_name"], group_id=options["group_id"],
                           coordination_store=RedisCoordinationStore(redis, key_prefix=options["key_prefix"]))
    await adapter.setup()
    try:
        async with adapter:
            run_id = await adapter.client.start("seed", {})
            result = await adapter.client.wait(run_id, 30)
        assert result.status == "completed" and result.output == 2
        stats = await create_kafka_reconciler(adapter=adapter, stalled_threshold_seconds=0.0).run()
        assert stats.stalled_runs == 0 and stats.failed_runs == 0
    finally:
        await adapter.close()


async def test_a_rebalance_never_commits_past_a_record_in_hand(options: dict[str, Any]) -> None:
    """A second consumer joins the group while the first holds a record unfinished: whoever owns the
    partition after the rebalance receives the record again (the revoked one was not committed past)."""
    options = {**options, "partitions": 2}
    backend = registry().build("kafka", options)
    await backend.setup()
    first = queue_of(backend)
    await first.enqueue([Job("held", "bp", "n")])
    (held,) = await take(first, 1)
    other = registry().build("kafka", options)
    try:
        second = queue_of(other)
        assert await second.ready(20)  # joined: the group rebalanced
        again: list[Any] = []
        deadline = time.monotonic() + 20
        while not again and time.monotonic() < deadline:
            for queue in (first, second):
                again += await queue.dequeue(1, 0.2)
        assert [d.job.run_id for d in again] == ["held"]
        assert again[0].receipt.offset == held.receipt.offset
    finally:
        await other.close()
        await backend.close()
