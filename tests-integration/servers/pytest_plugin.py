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

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import pytest

from .base import Server, ServerNotInstalled
from .moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoServer
from .redis import RedisServer

S = TypeVar("S", bound=Server)

ENV_REDIS_URL = "FLOWCRAFT_TEST_REDIS_URL"
ENV_AWS_ENDPOINT = "FLOWCRAFT_TEST_AWS_ENDPOINT"
ENV_AWS_REGION = "FLOWCRAFT_TEST_AWS_REGION"

_started: list[Server] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(message: str) -> NoReturn:
    """Fail (in CI) or skip (locally) because something the test needs is not installed."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def start_or_skip(server: S) -> S:
    """Start ``server``; apply the not-installed policy if its program is missing."""
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
    _started.append(server)
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


# --------------------------------------------------------------------------- report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _started:
        return
    parts = [f"{s.name} {s.startup_seconds:.2f}s" for s in _started if s.startup_seconds is not None]
    terminalreporter.write_line("servers started (startup time): " + ", ".join(parts))
