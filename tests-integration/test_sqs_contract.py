"""The contract suite on the ``sqs`` backend against real servers: SQS on moto, DynamoDB on dynalite (whose
conditional writes are atomic; moto's are not)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from flowcraft.testing import BackendContract


@pytest.fixture
def sqs_options(moto_endpoint: str, dynamodb_endpoint: str, aws_names: Any,
                monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Unique queue and table names per test; credentials from the standard AWS variables."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", os.environ.get("AWS_ACCESS_KEY_ID") or "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY") or "test")
    return {"endpoint_url": moto_endpoint, "dynamodb_endpoint_url": dynamodb_endpoint,
            "region": os.environ.get("FLOWCRAFT_TEST_AWS_REGION") or "us-east-1",
            "queue_name": aws_names.queue(), "table_prefix": f"{aws_names.prefix}-"}


class TestSqsContract(BackendContract):
    @pytest.fixture
    def backend_config(self, sqs_options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "sqs", sqs_options
