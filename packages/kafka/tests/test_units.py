"""Unit tests of flowcraft-kafka that need no server: options, offset tracking, identifiers, encoding,
registration."""

from __future__ import annotations

import pytest

from flowcraft.errors import ConfigError, StoreLimitError
from flowcraft.spi import Job, parse_options
from flowcraft_kafka._cassandra import hosts_of, ident
from flowcraft_kafka.context import encode
from flowcraft_kafka.options import CassandraOptions, KafkaOptions, StatusOptions
from flowcraft_kafka.queue import KafkaQueue, MessageTooLargeError, _Tracker


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
