"""Fixtures the rabbitmq tests share (imported by each test_rabbitmq_*.py; this module holds no tests):
options naming a queue, two tables and a Redis key prefix unique to each test."""

from __future__ import annotations

import uuid
from typing import Any

import pytest


def unique_names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"queue_name": f"fc-{tag}", "context_table": f"fc_{tag}_contexts", "status_table": f"fc_{tag}_statuses",
            "key_prefix": f"fc:{tag}:"}


@pytest.fixture(name="rabbitmq_options")
def rabbitmq_options_fixture(rabbitmq_url: str, postgres_url: str, redis_url: str) -> dict[str, Any]:
    """Options of the ``rabbitmq`` backend on the session's servers, with names unique to this test."""
    return {"amqp_url": rabbitmq_url, "postgres_dsn": postgres_url, "redis_url": redis_url,
            "pool_max_size": 4, "reconnect_seconds": 60, **unique_names()}
