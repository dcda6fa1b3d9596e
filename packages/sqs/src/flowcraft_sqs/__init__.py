"""Flowcraft on AWS: an SQS queue with DynamoDB context, status and coordination (preset ``sqs``).

Everything is imported lazily, so ``flowcraft backends`` lists this plugin without importing aiobotocore.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcraft_sqs._aws import ItemTooLargeError, KeyTooLongError, MessageTooLargeError, SqsOptions
    from flowcraft_sqs.adapter import SqsAdapter, SqsReconciler, SqsReconcileStats, create_sqs_reconciler
    from flowcraft_sqs.context import DynamoDbContext
    from flowcraft_sqs.coordination import DynamoDbCoordinationStore
    from flowcraft_sqs.queue import SqsQueue
    from flowcraft_sqs.status import DynamoDbStatusStore

__version__ = "0.1.0"

_EXPORTS = {
    "SqsAdapter": "adapter", "SqsReconciler": "adapter", "SqsReconcileStats": "adapter",
    "create_sqs_reconciler": "adapter", "DynamoDbContext": "context",
    "DynamoDbCoordinationStore": "coordination", "SqsQueue": "queue", "DynamoDbStatusStore": "status",
    "SqsOptions": "_aws", "ItemTooLargeError": "_aws", "KeyTooLongError": "_aws", "MessageTooLargeError": "_aws",
}

__all__ = [
    "DynamoDbContext", "DynamoDbCoordinationStore", "DynamoDbStatusStore", "ItemTooLargeError",
    "KeyTooLongError", "MessageTooLargeError", "SqsAdapter", "SqsOptions", "SqsQueue", "SqsReconcileStats",
    "SqsReconciler", "create_sqs_reconciler",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowcraft_sqs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"flowcraft_sqs.{module}"), name)
