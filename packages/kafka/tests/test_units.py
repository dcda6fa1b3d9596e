"""Unit tests of flowcraft-kafka that need no server: options, offset tracking, successors produced without
waiting, batched context writes, identifiers, encoding, registration."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from flowcraft.errors import ConfigError, StoreLimitError
from flowcraft.spi import Delivery, Job, parse_options
from flowcraft_kafka._cassandra import BATCH_CHARS, BATCH_ROWS, CassandraClient, hosts_of, ident
from flowcraft_kafka.context import encode
from flowcraft_kafka.options import CassandraOptions, KafkaOptions, StatusOptions
from flowcraft_kafka.queue import TP, KafkaQueue, MessageTooLargeError, _Record, _Tracker, finishing


def test_tracker_commits_only_below_the_lowest_unfinished_record() -> None:
    tracker = _Tracker()
    tp = ("jobs", 0)
    tracker.assign([tp])
    epochs = {tracker.seen(tp, offset) for offset in range(5)}
    assert len(epochs) == 1
    epoch = epochs.pop()
    assert epoch is not None
    tracker.finish(tp, 1, epoch)
    tracker.finish(tp, 2, epoch)
    assert tracker.commits() == [(tp, 0)]  # offset 0 is unfinished: nothing past it
    tracker.finish(tp, 0, epoch)
    assert tracker.commits() == [(tp, 3)]
    tracker.committed([(tp, 3)])
    tracker.finish(tp, 3, epoch)
    tracker.finish(tp, 4, epoch)
    assert tracker.commits() == [(tp, 5)]


def test_tracker_ignores_records_of_a_revoked_partition() -> None:
    tracker = _Tracker()
    tp = ("jobs", 1)
    tracker.assign([tp])
    old = tracker.seen(tp, 7)
    assert old is not None
    tracker.parts.pop(tp)
    tracker.assign([tp])  # assigned again: a new epoch, from the committed offset
    tracker.finish(tp, 7, old)
    assert tracker.commits() == []
    assert not tracker.live(tp, old)
    assert tracker.seen(("other", 0), 1) is None


def test_options_defaults_and_errors() -> None:
    o = parse_options(KafkaOptions, {})
    assert o.delay_topic == "flowcraft-jobs-delay" and o.dead_letter_topic == "flowcraft-jobs-dlq"
    with pytest.raises(ConfigError, match="partitions"):
        parse_options(KafkaOptions, {"partitions": 0})
    with pytest.raises(ConfigError, match="consistency"):
        parse_options(CassandraOptions, {"consistency": "SOME"})
    with pytest.raises(ConfigError, match="keyspace"):
        parse_options(CassandraOptions, {"keyspace": "bad-name; DROP"})
    status = parse_options(StatusOptions, {"redis_url": "redis://127.0.0.1:1/0", "protocol_version": 1})
    assert status.protocol_version == 1 and status.key_prefix


def test_secrets_are_not_in_repr() -> None:
    queue = KafkaQueue(parse_options(KafkaOptions, {"sasl_username": "u", "sasl_password": "hunter2"}))
    assert "hunter2" not in repr(queue)


def test_identifiers_and_hosts() -> None:
    assert ident("flowcraft_contexts") == '"flowcraft_contexts"'
    for bad in ('a"b', "a b", "1abc", "x;y", ""):
        with pytest.raises(ConfigError):
            ident(bad)
    options = parse_options(CassandraOptions, {"cassandra_hosts": "10.0.0.1, 10.0.0.2:9043", "cassandra_port": 9044})
    assert hosts_of(options) == [("10.0.0.1", 9044), ("10.0.0.2", 9043)]


def test_values_too_large_or_not_json_are_store_limit_errors() -> None:
    assert encode({"a": [1, None]}, 100, "v") == '{"a":[1,null]}'
    with pytest.raises(StoreLimitError, match="limit"):
        encode("x" * 200, 100, "v")
    with pytest.raises(StoreLimitError):
        encode(float("nan"), 100, "v")
    queue = KafkaQueue(parse_options(KafkaOptions, {"max_message_bytes": 100}))
    with pytest.raises(MessageTooLargeError):
        queue._record(Job("r", "bp", "n", input="x" * 500, has_input=True))


def test_plugin_registers_the_preset_lazily() -> None:
    from flowcraft.plugins import registry

    reg = registry()
    preset = reg.preset("kafka")
    assert preset.components() == {"queue": "kafka", "context": "cassandra", "status": "cassandra",
                                   "coordination": "redis"}


class _Producer:
    """Stands in for confluent_kafka.Producer: keeps each record's delivery callback for the test to call."""

    def __init__(self) -> None:
        self.reports: list[Any] = []

    def produce(self, topic: str, *, value: bytes, key: bytes | None, headers: Any, on_delivery: Any) -> None:
        self.reports.append(on_delivery)


def _holding(job: Job) -> tuple[KafkaQueue, _Producer, Delivery, TP]:
    """A queue whose consumer holds one record of ``job`` (offset 0 of partition 0), handed out."""
    queue = KafkaQueue(parse_options(KafkaOptions, {}))
    producer = _Producer()
    queue._producer = producer
    queue._reached = True  # no broker to reach
    tp = ("flowcraft-jobs", 0)
    queue._main.assign([tp])
    epoch = queue._main.seen(tp, 0)
    assert epoch is not None
    queue._ready.append(_Record(tp, 0, epoch, job, b"{}", 1))
    [delivery] = queue._take(1)
    return queue, producer, delivery, tp


async def test_an_acked_job_is_committed_only_once_its_successors_are_confirmed() -> None:
    job = Job("r1", "flow", "a")
    queue, producer, delivery, tp = _holding(job)
    finishing(job.run_id, job.key)  # what KafkaCoordinationStore.commit does
    await queue.enqueue([Job("r1", "flow", "b"), Job("r1", "flow", "c")])  # returns before any confirmation
    await queue.ack(delivery)
    assert len(producer.reports) == 2
    assert queue._main.commits() == [(tp, 0)]  # the acked record is still unfinished
    producer.reports[0](None, None)
    assert queue._main.commits() == [(tp, 0)]
    producer.reports[1](None, None)
    assert queue._main.commits() == [(tp, 1)]


async def test_an_acked_job_whose_successor_is_refused_is_handed_out_again() -> None:
    job = Job("r1", "flow", "a")
    queue, producer, delivery, tp = _holding(job)
    finishing(job.run_id, job.key)
    await queue.enqueue([Job("r1", "flow", "b")])
    producer.reports[0]("broker down", None)  # refused before the ack
    await queue.ack(delivery)
    assert queue._main.commits() == [(tp, 0)]
    [again] = queue._take(1)
    assert again.job == job and again.deliveries == 2


async def test_enqueue_waits_outside_a_finishing_task() -> None:
    """A task that committed nothing (a client), or a job this consumer does not hold, gets no early return."""
    job = Job("r1", "flow", "a")
    queue, producer, delivery, tp = _holding(job)
    finishing("another-run", job.key)
    enqueued = asyncio.ensure_future(queue.enqueue([Job("r1", "flow", "b")]))
    await asyncio.sleep(0.01)
    assert not enqueued.done()
    producer.reports[0](None, None)  # the delivery report settles the wait
    await asyncio.wait_for(enqueued, 5)
    await queue.ack(delivery)
    assert queue._main.commits() == [(tp, 1)]


async def test_execute_batch_groups_small_rows_and_sends_big_ones_alone() -> None:
    calls: list[tuple[str, list[Any]]] = []

    class Recording(CassandraClient):
        async def execute(self, cql: str, values: Sequence[Any] = ()) -> list[Any]:
            calls.append((cql, list(values)))
            return []

    client = Recording(CassandraOptions())
    insert = 'INSERT INTO "ks"."t" (run_id, key, value) VALUES (?, ?, ?)'
    small = [("r", f"k{i}", "1") for i in range(BATCH_ROWS + 2)]
    big = ("r", "big", "x" * BATCH_CHARS)
    await client.execute_batch(insert, [*small, big])
    batches = sorted(calls, key=lambda call: -len(call[1]))
    assert [len(values) for _, values in batches] == [3 * BATCH_ROWS, 6, 3]
    assert batches[0][0] == "BEGIN UNLOGGED BATCH " + "; ".join([insert] * BATCH_ROWS) + "; APPLY BATCH"
    assert batches[1][1] == [v for row in small[BATCH_ROWS:] for v in row]
    assert batches[2] == (insert, list(big))
    calls.clear()
    await client.execute_batch(insert, [small[0]])
    assert calls == [(insert, list(small[0]))]
