"""The test servers themselves: each one starts, answers its official client, and stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis

from servers import (
    AzuriteServer,
    CosmosServer,
    MotoServer,
    PostgresServer,
    RedisServer,
    ServerError,
    ServerNotInstalled,
    free_port,
    port_open,
)
from servers.base import REPO_ROOT
from servers.pytest_plugin import AwsNames, missing, require_module, selected

# azure-cosmos never verifies certificates for 127.0.0.1/localhost (and its background health checks
# warn about that in whichever test is running): see servers/cosmos.py.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

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
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
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


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_round_trip(postgres_url: str) -> None:
    psycopg = require_module("psycopg", "psycopg[binary]")
    table = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (run_id text PRIMARY KEY, status text)")
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", ("r1", "running"))
        conn.execute(
            f"INSERT INTO {table} VALUES (%s, %s) ON CONFLICT (run_id) DO UPDATE SET status = EXCLUDED.status",
            ("r1", "completed"),
        )
        assert conn.execute(f"SELECT status FROM {table}").fetchall() == [("completed",)]
        conn.execute(f"DROP TABLE {table}")


def test_postgres_restart_keeps_data(start_server: Callable[..., Any]) -> None:
    psycopg = require_module("psycopg", "psycopg[binary]")
    server: PostgresServer = start_server(PostgresServer)
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE runs (id text)")
        conn.execute("INSERT INTO runs VALUES ('r1')")
        server.restart()  # fast shutdown although this connection is still open
    with psycopg.connect(server.url) as conn:
        assert conn.execute("SELECT id FROM runs").fetchall() == [("r1",)]


# --------------------------------------------------------------------------- RabbitMQ


def test_rabbitmq_round_trip(rabbitmq_url: str) -> None:
    pika = require_module("pika")
    queue = f"fct-{uuid.uuid4().hex[:12]}"
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue, auto_delete=False)
        ch.basic_publish("", queue, b"job-1", pika.BasicProperties(delivery_mode=2))
        method, _props, body = ch.basic_get(queue, auto_ack=False)
        assert body == b"job-1" and method is not None
        ch.basic_ack(method.delivery_tag)
        ch.queue_delete(queue)
    finally:
        conn.close()


# --------------------------------------------------------------------------- Kafka (Tansu)


def test_kafka_round_trip(kafka_bootstrap: str) -> None:
    kafka = require_module("confluent_kafka", "confluent-kafka")
    admin_mod = require_module("confluent_kafka.admin", "confluent-kafka")
    topic = f"fct-{uuid.uuid4().hex[:12]}"
    admin = admin_mod.AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([admin_mod.NewTopic(topic, 1, 1)]).values():
        future.result(10)
    producer = kafka.Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(topic, b"hello", key=b"run-1")
    assert producer.flush(10) == 0
    consumer = kafka.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic, "enable.auto.commit": False})
    try:
        consumer.assign([kafka.TopicPartition(topic, 0, 0)])  # no group join: that is slow on Tansu
        deadline = time.monotonic() + 15
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None
        assert (msg.key(), msg.value()) == (b"run-1", b"hello")
    finally:
        consumer.close()


# --------------------------------------------------------------------------- Cassandra


def test_cassandra_round_trip(cassandra_contact_point: str) -> None:
    require_module("cassandra", "cassandra-driver")
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile

    host, port = cassandra_contact_point.rsplit(":", 1)
    keyspace = f"fct_{uuid.uuid4().hex[:12]}"
    cluster = Cluster(
        [host],
        port=int(port),
        protocol_version=1,  # Cassandra 1.2 speaks native protocol v1 only
        execution_profiles={EXEC_PROFILE_DEFAULT: ExecutionProfile(consistency_level=ConsistencyLevel.ONE)},
    )
    try:
        session = cluster.connect()
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        )
        session.execute(f"CREATE TABLE {keyspace}.ctx (run_id text, key text, value text, PRIMARY KEY (run_id, key))")
        session.execute(f"INSERT INTO {keyspace}.ctx (run_id, key, value) VALUES ('r1', 'a', '1')")
        rows = list(session.execute(f"SELECT key, value FROM {keyspace}.ctx WHERE run_id = 'r1'"))
        assert [(r.key, r.value) for r in rows] == [("a", "1")]
        session.execute(f"DROP KEYSPACE {keyspace}")
    finally:
        cluster.shutdown()


# --------------------------------------------------------------------------- Azure Storage Queue (Azurite)


def test_azure_queue_round_trip(azure_queue_connection_string: str) -> None:
    azq = require_module("azure.storage.queue", "azure-storage-queue")
    service = azq.QueueServiceClient.from_connection_string(azure_queue_connection_string)
    queue = service.create_queue(f"fct-{uuid.uuid4().hex[:12]}")
    try:
        queue.send_message("job-1")
        msg = queue.receive_message(visibility_timeout=30)
        assert msg is not None and msg.content == "job-1" and msg.dequeue_count == 1
        queue.delete_message(msg)
        assert queue.receive_message() is None
    finally:
        queue.delete_queue()


# --------------------------------------------------------------------------- Cosmos DB emulator


def test_cosmos_round_trip(cosmos_client_kwargs: dict[str, Any]) -> None:
    cosmos = require_module("azure.cosmos", "azure-cosmos")
    if_not_modified = require_module("azure.core", "azure-core").MatchConditions.IfNotModified
    client = cosmos.CosmosClient(**cosmos_client_kwargs)
    db = client.create_database(f"fct-{uuid.uuid4().hex[:12]}")
    try:
        container = db.create_container("contexts", partition_key=cosmos.PartitionKey("/runId"))
        container.upsert_item({"id": "r1", "runId": "r1", "status": "running"})
        item = container.read_item("r1", partition_key="r1")
        assert item["status"] == "running"
        item["status"] = "completed"
        container.replace_item("r1", item, etag=item["_etag"], match_condition=if_not_modified)
        with pytest.raises(cosmos.exceptions.CosmosAccessConditionFailedError):
            container.replace_item("r1", item, etag=item["_etag"], match_condition=if_not_modified)
        with pytest.raises(cosmos.exceptions.CosmosResourceNotFoundError):  # 404, not the emulator's 500
            container.read_item("missing", partition_key="missing")
    finally:
        client.delete_database(db)


def test_cosmos_certificate_verifies(start_server: Callable[..., Any]) -> None:
    server: CosmosServer = start_server(CosmosServer)
    ctx = ssl.create_default_context(cafile=str(server.ca_cert_path))
    with (
        socket.create_connection((server.host, server.port), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname=server.host) as tls,
    ):
        assert tls.version() is not None


# --------------------------------------------------------------------------- azurite/ and localstack/ folders


def test_azurite_provision_script(azure_queue_connection_string: str) -> None:
    require_module("azure.storage.queue", "azure-storage-queue")
    queue, dlq = f"fct-{uuid.uuid4().hex[:12]}", f"fct-{uuid.uuid4().hex[:12]}-dlq"
    argv = [sys.executable, str(REPO_ROOT / "azurite" / "provision.py"), "--queue", queue, "--dlq", dlq]
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azure_queue_connection_string}
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"queue {queue}: created", f"queue {dlq}: created"]
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "created" not in again.stdout


def test_azurite_start_script_detached(tmp_path: Path) -> None:
    if not selected("azurite"):
        pytest.skip("azurite is not among FLOWCRAFT_TEST_SERVERS")
    probe = AzuriteServer()
    probe.close()  # only asked whether node and azurite are installed
    try:
        probe.check_installed()
    except ServerNotInstalled as exc:
        missing(str(exc))
    port = free_port()
    env = {
        **os.environ,
        "AZURITE_QUEUE_PORT": str(port),
        "AZURITE_PIDFILE": str(tmp_path / "azurite.pid"),
        "AZURITE_LOG": str(tmp_path / "azurite.log"),
    }
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "azurite" / "start.sh"), "-d"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.strip())
    try:
        assert (tmp_path / "azurite.pid").read_text().strip() == str(pid)
        assert port_open(port)
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
