"""pytest fixtures that provide real servers to the integration tests.

Load with ``pytest_plugins = ["servers.pytest_plugin"]`` (tests-integration/conftest.py does) or
``-p servers.pytest_plugin`` with tests-integration on ``sys.path``.

Rules
-----
* ``<name>_url`` / ``<name>_endpoint`` style fixtures honour an environment variable that points at an
  existing server (e.g. ``FLOWCRAFT_TEST_REDIS_URL``): then nothing is started. Otherwise they use the
  session-scoped ``<name>_server`` fixture, which starts the server on a free 127.0.0.1 port and stops
  it (by PID) at the end of the session.
* ``<name>_server`` fixtures always give a server this session started (tests that restart or reset
  the server need one of their own), started lazily on first use.
* A missing server program fails the test with a one-line hint when ``$CI`` is set, and skips it
  otherwise. Either way the hint says which ``scripts/install-servers.sh`` call installs it.
* ``start_server`` starts extra, test-private servers (e.g. ``start_server(RedisServer, appendonly=True)``)
  and stops them when the test ends.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn, TypeVar

import pytest

from .azurite import AzuriteServer
from .base import Server, ServerNotInstalled
from .cassandra import CassandraServer
from .cosmos import EMULATOR_KEY, CosmosServer
from .dynalite import DynaliteServer
from .kafka import KafkaServer
from .moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoServer
from .postgres import PostgresServer
from .rabbitmq import RabbitMqServer
from .redis import RedisServer
from .redis_cluster import RedisClusterServer

S = TypeVar("S", bound=Server)

ENV_REDIS_URL = "FLOWCRAFT_TEST_REDIS_URL"
ENV_AWS_ENDPOINT = "FLOWCRAFT_TEST_AWS_ENDPOINT"
ENV_AWS_REGION = "FLOWCRAFT_TEST_AWS_REGION"
ENV_DYNAMODB_ENDPOINT = "FLOWCRAFT_TEST_DYNAMODB_ENDPOINT"
ENV_POSTGRES_URL = "FLOWCRAFT_TEST_POSTGRES_URL"
ENV_RABBITMQ_URL = "FLOWCRAFT_TEST_RABBITMQ_URL"
ENV_KAFKA_BOOTSTRAP = "FLOWCRAFT_TEST_KAFKA_BOOTSTRAP"
ENV_CASSANDRA_CONTACT = "FLOWCRAFT_TEST_CASSANDRA_CONTACT"
ENV_AZURE_QUEUE_CONNECTION_STRING = "FLOWCRAFT_TEST_AZURE_QUEUE_CONNECTION_STRING"
ENV_COSMOS_ENDPOINT = "FLOWCRAFT_TEST_COSMOS_ENDPOINT"
ENV_COSMOS_KEY = "FLOWCRAFT_TEST_COSMOS_KEY"
ENV_COSMOS_CA = "FLOWCRAFT_TEST_COSMOS_CA"

_started: list[tuple[str, float]] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(message: str) -> NoReturn:
    """Fail (in CI) or skip (locally) because something the test needs is not installed."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_module(name: str, requirement: str | None = None) -> ModuleType:
    """Import a client library, applying the same fail-in-CI / skip-locally policy if it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(
            f"Python package {requirement or name} is not installed: pip install -r tests-integration/requirements.txt"
        )


def selected(name: str) -> bool:
    """``FLOWCRAFT_TEST_SERVERS`` (e.g. "redis moto") limits which servers a run uses; unset = all."""
    chosen = os.environ.get("FLOWCRAFT_TEST_SERVERS", "").replace(",", " ").split()
    return not chosen or name in chosen


def start_or_skip(server: S) -> S:
    """Start ``server``; apply the not-installed policy if its program is missing."""
    if not selected(server.install_name):
        server.close()
        pytest.skip(f"{server.name} is not among FLOWCRAFT_TEST_SERVERS")
    not_installed: str | None = None
    try:
        server.start()
    except ServerNotInstalled as exc:
        not_installed = str(exc)
    except BaseException:
        server.close()
        raise
    if not_installed is not None:
        server.close()
        missing(not_installed)
    _started.append((server.name, server.startup_seconds or 0.0))
    return server


def _managed(server: S) -> Iterator[S]:
    start_or_skip(server)
    try:
        yield server
    finally:
        server.close()


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


# --------------------------------------------------------------------------- generic


@pytest.fixture
def start_server() -> Iterator[Callable[..., Any]]:
    """Factory: ``start_server(ServerClass, **options)`` starts a server private to this test."""
    servers: list[Server] = []

    def _start(cls: type[S], *args: Any, **kwargs: Any) -> S:
        server = cls(*args, **kwargs)
        servers.append(server)
        return start_or_skip(server)

    yield _start
    for server in reversed(servers):
        server.close()


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A RedisServer started for this session (no persistence)."""
    yield from _managed(RedisServer())


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """``$FLOWCRAFT_TEST_REDIS_URL`` if set, else the URL of ``redis_server``."""
    url = _env(ENV_REDIS_URL)
    if url:
        return url
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[RedisClusterServer]:
    """A 3-shard Redis Cluster (no replicas) started for this session; its ``url`` is
    ``redis+cluster://127.0.0.1:<port>``."""
    yield from _managed(RedisClusterServer())


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to this test, e.g. ``fctest:3f2a...:``."""
    return f"fctest:{uuid.uuid4().hex}:"


# --------------------------------------------------------------------------- AWS (moto)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A moto server (SQS + DynamoDB) started for this session."""
    yield from _managed(MotoServer())


@pytest.fixture(scope="session")
def moto_endpoint(request: pytest.FixtureRequest) -> str:
    """``$FLOWCRAFT_TEST_AWS_ENDPOINT`` if set (moto, LocalStack...), else ``moto_server``'s URL."""
    url = _env(ENV_AWS_ENDPOINT)
    if url:
        return url
    server: MotoServer = request.getfixturevalue("moto_server")
    return server.endpoint_url


@pytest.fixture(scope="session")
def aws_client_kwargs(moto_endpoint: str) -> dict[str, str]:
    """``boto3.client("sqs", **aws_client_kwargs)``: endpoint, region and test credentials."""
    return {
        "endpoint_url": moto_endpoint,
        "region_name": _env(ENV_AWS_REGION) or REGION,
        "aws_access_key_id": _env("AWS_ACCESS_KEY_ID") or ACCESS_KEY_ID,
        "aws_secret_access_key": _env("AWS_SECRET_ACCESS_KEY") or SECRET_ACCESS_KEY,
    }


@pytest.fixture(scope="session")
def dynalite_server() -> Iterator[DynaliteServer]:
    """dynalite (DynamoDB only, atomic conditional writes) started for this session."""
    yield from _managed(DynaliteServer())


@pytest.fixture(scope="session")
def dynamodb_endpoint(request: pytest.FixtureRequest) -> str:
    """The DynamoDB endpoint for code whose correctness rests on conditional writes being atomic (moto's
    are not): ``$FLOWCRAFT_TEST_DYNAMODB_ENDPOINT`` if set, else ``$FLOWCRAFT_TEST_AWS_ENDPOINT`` if set (a
    real account or LocalStack serves both services), else ``dynalite_server``'s URL."""
    url = _env(ENV_DYNAMODB_ENDPOINT) or _env(ENV_AWS_ENDPOINT)
    if url:
        return url
    server: DynaliteServer = request.getfixturevalue("dynalite_server")
    return server.endpoint_url


@dataclass(frozen=True)
class AwsNames:
    """Unique resource names for one test: ``aws_names("queue")`` -> ``fct-1a2b3c4d5e6f-queue``.

    Valid as SQS queue names (append ``.fifo`` for FIFO queues) and DynamoDB table names.
    """

    prefix: str

    def __call__(self, base: str) -> str:
        return f"{self.prefix}-{base}"

    def queue(self, base: str = "queue") -> str:
        return self(base)

    def table(self, base: str = "table") -> str:
        return self(base)


@pytest.fixture
def aws_names() -> AwsNames:
    """Unique queue/table name prefix for this test (tests never share AWS resources)."""
    return AwsNames(f"fct-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqs_options(moto_endpoint: str, dynamodb_endpoint: str, aws_names: AwsNames,
                monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Options of the ``sqs`` backend with queue and table names unique to this test (SQS on moto, DynamoDB
    on dynalite); credentials in the standard AWS variables, which worker processes inherit."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", os.environ.get("AWS_ACCESS_KEY_ID") or "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY") or "test")
    return {"endpoint_url": moto_endpoint, "dynamodb_endpoint_url": dynamodb_endpoint,
            "region": os.environ.get("FLOWCRAFT_TEST_AWS_REGION") or "us-east-1",
            "queue_name": aws_names.queue(), "table_prefix": f"{aws_names.prefix}-"}


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster started for this session."""
    yield from _managed(PostgresServer())


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """``$FLOWCRAFT_TEST_POSTGRES_URL`` if set, else ``postgres_server``'s
    ``postgresql://flowcraft:flowcraft@127.0.0.1:PORT/flowcraft``."""
    url = _env(ENV_POSTGRES_URL)
    if url:
        return url
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url


# --------------------------------------------------------------------------- RabbitMQ


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMqServer]:
    """A private RabbitMQ node started for this session (takes a few seconds)."""
    yield from _managed(RabbitMqServer())


@pytest.fixture(scope="session")
def rabbitmq_url(request: pytest.FixtureRequest) -> str:
    """``$FLOWCRAFT_TEST_RABBITMQ_URL`` if set, else ``amqp://guest:guest@127.0.0.1:PORT/``."""
    url = _env(ENV_RABBITMQ_URL)
    if url:
        return url
    server: RabbitMqServer = request.getfixturevalue("rabbitmq_server")
    return server.url


# --------------------------------------------------------------------------- Kafka (Tansu)


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    """A Tansu Kafka-protocol broker (in memory) started for this session."""
    yield from _managed(KafkaServer())


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``$FLOWCRAFT_TEST_KAFKA_BOOTSTRAP`` if set, else ``127.0.0.1:PORT`` of ``kafka_server``."""
    bootstrap = _env(ENV_KAFKA_BOOTSTRAP)
    if bootstrap:
        return bootstrap
    server: KafkaServer = request.getfixturevalue("kafka_server")
    return server.bootstrap_servers


# --------------------------------------------------------------------------- Cassandra


@pytest.fixture(scope="session")
def cassandra_server() -> Iterator[CassandraServer]:
    """Apache Cassandra 1.2.0 started for this session (protocol v1, consistency ONE)."""
    yield from _managed(CassandraServer())


@pytest.fixture(scope="session")
def cassandra_contact_point(request: pytest.FixtureRequest) -> str:
    """``$FLOWCRAFT_TEST_CASSANDRA_CONTACT`` (``host:port``) if set, else ``cassandra_server``'s."""
    contact = _env(ENV_CASSANDRA_CONTACT)
    if contact:
        return contact
    server: CassandraServer = request.getfixturevalue("cassandra_server")
    return server.contact_point


# --------------------------------------------------------------------------- Azure Storage Queue


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[AzuriteServer]:
    """Azurite's queue service (in memory) started for this session."""
    yield from _managed(AzuriteServer())


@pytest.fixture(scope="session")
def azure_queue_connection_string(request: pytest.FixtureRequest) -> str:
    """``$FLOWCRAFT_TEST_AZURE_QUEUE_CONNECTION_STRING`` if set, else ``azurite_server``'s."""
    conn = _env(ENV_AZURE_QUEUE_CONNECTION_STRING)
    if conn:
        return conn
    server: AzuriteServer = request.getfixturevalue("azurite_server")
    return server.connection_string


# --------------------------------------------------------------------------- Cosmos DB


@pytest.fixture(scope="session")
def cosmos_server() -> Iterator[CosmosServer]:
    """The Cosmos DB emulator (HTTPS, generated certificate) started for this session."""
    yield from _managed(CosmosServer())


@pytest.fixture(scope="session")
def cosmos_client_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``CosmosClient(**cosmos_client_kwargs)``: ``url``, ``credential``, ``connection_verify``.

    From ``$FLOWCRAFT_TEST_COSMOS_ENDPOINT`` (+ ``_KEY``, default the emulator key, and ``_CA``, a CA
    bundle) if set, else from ``cosmos_server``. (azure-cosmos skips certificate checks by itself
    for the hosts 127.0.0.1 and localhost.)
    """
    endpoint = _env(ENV_COSMOS_ENDPOINT)
    if endpoint:
        return {
            "url": endpoint,
            "credential": _env(ENV_COSMOS_KEY) or EMULATOR_KEY,
            "connection_verify": _env(ENV_COSMOS_CA) or True,
        }
    server: CosmosServer = request.getfixturevalue("cosmos_server")
    return {"url": server.endpoint, "credential": server.key, "connection_verify": str(server.ca_cert_path)}


# --------------------------------------------------------------------------- report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _started:
        return
    parts = [f"{name} {seconds:.2f}s" for name, seconds in _started]
    terminalreporter.write_line("servers started (startup time): " + ", ".join(parts))
