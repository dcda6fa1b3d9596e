"""The ``sqs`` preset's factory: the SQS queue and the DynamoDB stores on one set of AWS clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.spi import Backend
from flowcraft_sqs._aws import AwsClients, SqsOptions
from flowcraft_sqs.context import DynamoDbContext
from flowcraft_sqs.coordination import DynamoDbCoordinationStore
from flowcraft_sqs.queue import SqsQueue
from flowcraft_sqs.status import DynamoDbStatusStore


def build_backend(options: Mapping[str, Any]) -> Backend:
    """The ``sqs`` backend from its validated options. Its components take no fast path together (contexts
    live in their own table, the queue is another service): ``Backend.capabilities`` is all off."""
    parsed = SqsOptions.parse(options)
    clients = AwsClients.for_options(parsed)
    return Backend(SqsQueue.build(parsed, clients), DynamoDbContext.build(parsed, clients),
                   DynamoDbStatusStore.build(parsed, clients), DynamoDbCoordinationStore.build(parsed, clients))
