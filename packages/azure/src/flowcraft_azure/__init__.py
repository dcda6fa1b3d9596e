"""Flowcraft on Azure: an Azure Storage Queue, Cosmos DB context and status, Redis coordination (preset
``azure``).

Everything is imported lazily, so ``flowcraft backends`` lists this plugin without importing the Azure SDKs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcraft_azure._clients import InvalidKeyError, ItemTooLargeError, MessageTooLargeError
    from flowcraft_azure.adapter import (
        AzureQueueAdapter,
        AzureReconciler,
        AzureReconcileStats,
        create_azure_reconciler,
    )
    from flowcraft_azure.context import CosmosDbContext
    from flowcraft_azure.options import AzureOptions
    from flowcraft_azure.queue import AzureQueue
    from flowcraft_azure.status import CosmosDbStatusStore
    from flowcraft_redis import RedisCoordinationStore

__version__ = "0.1.0"

_EXPORTS = {
    "AzureQueueAdapter": "flowcraft_azure.adapter", "AzureReconciler": "flowcraft_azure.adapter",
    "AzureReconcileStats": "flowcraft_azure.adapter", "create_azure_reconciler": "flowcraft_azure.adapter",
    "CosmosDbContext": "flowcraft_azure.context", "CosmosDbStatusStore": "flowcraft_azure.status",
    "AzureQueue": "flowcraft_azure.queue", "AzureOptions": "flowcraft_azure.options",
    "InvalidKeyError": "flowcraft_azure._clients", "ItemTooLargeError": "flowcraft_azure._clients",
    "MessageTooLargeError": "flowcraft_azure._clients", "RedisCoordinationStore": "flowcraft_redis",
}

__all__ = [
    "AzureOptions", "AzureQueue", "AzureQueueAdapter", "AzureReconcileStats", "AzureReconciler", "CosmosDbContext",
    "CosmosDbStatusStore", "InvalidKeyError", "ItemTooLargeError", "MessageTooLargeError", "RedisCoordinationStore",
    "create_azure_reconciler",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowcraft_azure' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
