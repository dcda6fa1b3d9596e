"""Registers the ``sqs`` preset and its components (lazily: nothing here imports aiobotocore)."""

from __future__ import annotations

from typing import Any

from flowcraft.hookspecs import hookimpl
from flowcraft.plugins import Preset

_PACKAGE = "flowcraft_sqs"


@hookimpl
def flowcraft_queues() -> list[Any]:
    return [("sqs", f"{_PACKAGE}.queue:SqsQueue")]


@hookimpl
def flowcraft_context_stores() -> list[Any]:
    return [("dynamodb", f"{_PACKAGE}.context:DynamoDbContext")]


@hookimpl
def flowcraft_status_stores() -> list[Any]:
    return [("dynamodb", f"{_PACKAGE}.status:DynamoDbStatusStore")]


@hookimpl
def flowcraft_coordination_stores() -> list[Any]:
    return [("dynamodb", f"{_PACKAGE}.coordination:DynamoDbCoordinationStore")]


@hookimpl
def flowcraft_presets() -> list[Preset]:
    return [Preset("sqs", "sqs", "dynamodb", "dynamodb", "dynamodb",
                   "Amazon SQS queue + DynamoDB context, status and coordination (no Redis)",
                   factory=f"{_PACKAGE}.backend:build_backend")]
