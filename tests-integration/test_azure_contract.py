"""The contract suite (incl. crash/recovery and reconciler contracts) on the ``azure`` backend: Azure Storage
Queue on Azurite, Cosmos DB on @vercel/cosmosdb-server, coordination on Redis."""

from __future__ import annotations

from typing import Any

import pytest
from test_azure_support import azure_names, azure_options  # noqa: F401  # fixtures

from flowcraft.testing import BackendContract


class TestAzureContract(BackendContract):
    @pytest.fixture
    def backend_config(self, azure_options: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: F811
        return "azure", azure_options
