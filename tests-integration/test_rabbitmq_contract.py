"""The contract suite on the ``rabbitmq`` backend against real servers: RabbitMQ (quorum queue), PostgreSQL
(context and status tables) and Redis (coordination), each test with its own queue, tables and key prefix."""

from __future__ import annotations

from typing import Any

import pytest
from test_rabbitmq_support import rabbitmq_options_fixture  # noqa: F401  # the fixture rabbitmq_options

from flowcraft.testing import BackendContract


class TestRabbitMqContract(BackendContract):
    @pytest.fixture
    def backend_config(self, rabbitmq_options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "rabbitmq", rabbitmq_options
