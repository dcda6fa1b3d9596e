"""Fixtures of the ``azure`` backend's integration tests (no tests here): Azure Storage Queue on Azurite,
Cosmos DB on @vercel/cosmosdb-server, Redis; names unique to each test (queues, a Cosmos database, a Redis
key prefix), so tests run in parallel."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytest.importorskip("azure.storage.queue")
pytest.importorskip("azure.cosmos")


@pytest.fixture
def azure_names() -> str:
    """A name prefix unique to this test, valid for Azure queues and Cosmos databases/containers."""
    return f"fct{uuid.uuid4().hex[:12]}"


@pytest.fixture
def azure_options(azure_queue_connection_string: str, cosmos_client_kwargs: dict[str, Any], redis_url: str,
                  redis_prefix: str, azure_names: str) -> dict[str, Any]:
    """Options of the ``azure`` backend (JSON-serialisable, as worker processes take them)."""
    options: dict[str, Any] = {
        "azure_storage_connection_string": azure_queue_connection_string,
        "queue_name": f"{azure_names}-queue",
        "cosmos_endpoint": cosmos_client_kwargs["url"],
        "cosmos_key": cosmos_client_kwargs["credential"],
        "cosmos_database": azure_names,
        "redis_url": redis_url,
        "key_prefix": redis_prefix,
        "poll_interval": 0.02,
        "max_poll_interval": 0.25,
    }
    verify = cosmos_client_kwargs.get("connection_verify")
    if isinstance(verify, str):
        options["cosmos_ca_cert"] = verify
    return options
