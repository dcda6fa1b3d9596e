"""The test servers themselves: each one starts, answers its official client, and stops."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
import redis
from servers import MotoServer, RedisServer, ServerError
from servers.pytest_plugin import AwsNames

# --------------------------------------------------------------------------- Redis


def test_redis_round_trip(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        client.set(f"{redis_prefix}k", "v")
        assert client.get(f"{redis_prefix}k") == b"v"
    finally:
        client.close()


def test_redis_prefix_is_unique_per_test(redis_prefix: str) -> None:
    assert redis_prefix.startswith("fctest:") and redis_prefix.endswith(":")


def test_redis_aof_survives_restart(start_server: Callable[..., Any]) -> None:
    server: RedisServer = start_server(RedisServer, appendonly=True)
    port, pid = server.port, server.pid
    client = redis.Redis.from_url(server.url)
    try:
        client.set("run:1", "running")
        client.hset("run:1:ctx", mapping={"a": "1"})
        server.restart()
        assert server.port == port and server.pid != pid
        assert client.get("run:1") == b"running"  # redis-py reconnects on the same URL
        assert client.hgetall("run:1:ctx") == {b"a": b"1"}
    finally:
        client.close()


def test_redis_aof_survives_crash(start_server: Callable[..., Any]) -> None:
    server: RedisServer = start_server(RedisServer, appendonly=True)
    client = redis.Redis.from_url(server.url)
    try:
        client.rpush("queue", "job-1", "job-2")
        server.restart(crash=True)  # SIGKILL, no clean shutdown
        assert client.lrange("queue", 0, -1) == [b"job-1", b"job-2"]
    finally:
        client.close()


def test_redis_without_aof_loses_data_on_restart(start_server: Callable[..., Any]) -> None:
    server: RedisServer = start_server(RedisServer)
    client = redis.Redis.from_url(server.url)
    try:
        client.set("k", "v")
        server.restart()
        assert client.get("k") is None
    finally:
        client.close()


def test_redis_stop_leaves_no_process_and_close_removes_data() -> None:
    server = RedisServer().start()
    pid = server.pid
    assert pid is not None and server.startup_seconds is not None
    assert server.startup_seconds < 1.0
    server.close()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)
    assert not server.base_dir.exists()


def test_startup_failure_reports_log_tail() -> None:
    server = RedisServer(extra_args=["--no-such-option", "x"])
    with pytest.raises(ServerError, match="no-such-option"):
        server.start()
    assert not server.running
    server.close()


# --------------------------------------------------------------------------- AWS via moto


def test_sqs_round_trip(aws_client_kwargs: dict[str, str], aws_names: AwsNames) -> None:
    sqs = boto3.client("sqs", **aws_client_kwargs)
    dlq_url = sqs.create_queue(QueueName=aws_names.queue("dlq"))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName=aws_names.queue(),
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})},
    )["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    msgs = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in msgs] == ["hello"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=msgs[0]["ReceiptHandle"])


def test_dynamodb_round_trip(aws_client_kwargs: dict[str, str], aws_names: AwsNames) -> None:
    ddb = boto3.client("dynamodb", **aws_client_kwargs)
    table = aws_names.table("contexts")
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "runId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "runId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put_item(TableName=table, Item={"runId": {"S": "r1"}, "ctx": {"S": "{}"}})
    item = ddb.get_item(TableName=table, Key={"runId": {"S": "r1"}}, ConsistentRead=True)["Item"]
    assert item == {"runId": {"S": "r1"}, "ctx": {"S": "{}"}}


def test_aws_names_are_unique(aws_names: AwsNames) -> None:
    assert aws_names("q") != AwsNames("fct-other")("q")
    assert aws_names.queue().startswith("fct-")


def test_moto_reset_clears_state(start_server: Callable[..., Any]) -> None:
    server: MotoServer = start_server(MotoServer)
    sqs = boto3.client("sqs", **server.client_kwargs())
    sqs.create_queue(QueueName="to-be-reset")
    assert sqs.list_queues().get("QueueUrls")
    server.reset()
    assert not sqs.list_queues().get("QueueUrls")
    t0 = time.perf_counter()
    server.stop()
    assert time.perf_counter() - t0 < 10
