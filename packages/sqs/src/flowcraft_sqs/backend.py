"""The ``sqs`` preset's factory: the SQS queue and the DynamoDB stores on one set of AWS clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.spi import Backend
from flowcraft_sqs._aws import AwsClients, SqsOptions
from flowcraft_sqs.context import DynamoDbContext, RunItemContext
from flowcraft_sqs.coordination import DynamoDbCoordinationStore
from flowcraft_sqs.queue import SqsQueue
from flowcraft_sqs.status import DynamoDbStatusStore


def build_backend(options: Mapping[str, Any]) -> Backend:
    """The ``sqs`` backend from its validated options. The context lives in each run's coordination item
    (``RunItemContext``), so a commit writes a completion's context with its record (``applies_context``);
    a finishing commit drops the lease (``releases_lease``). The run item mirrors the run's status record
    while nothing has changed it, so the queue's ``receive`` gets a job's record with its lease
    (``prefetches_status``; ``DynamoDbStatusStore.mirror_into``)."""
    parsed = SqsOptions.parse(options)
    clients = AwsClients.for_options(parsed)
    coordination = DynamoDbCoordinationStore.build(parsed, clients, applies_context=True)
    context = RunItemContext(coordination, provision=DynamoDbContext.build(parsed, clients))
    status = DynamoDbStatusStore.build(parsed, clients)
    status.mirror_into(coordination)
    queue = SqsQueue.build(parsed, clients)
    queue.prefetch_with(status, coordination)
    return Backend(queue, context, status, coordination)
