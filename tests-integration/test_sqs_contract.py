"""The contract suite on the ``sqs`` backend against real servers: SQS on moto, DynamoDB on dynalite (whose
conditional writes are atomic; moto's are not)."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft.testing import BackendContract


class TestSqsContract(BackendContract):
    @pytest.fixture
    def backend_config(self, sqs_options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "sqs", sqs_options
