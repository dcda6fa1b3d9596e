"""``flowcraft setup --backend sqs``: create the queues and tables, idempotently."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flowcraft.errors import FlowcraftError
from flowcraft_sqs._aws import error_code, is_client_error, log

KeySpec = Sequence[tuple[str, str, str]]  # (attribute, HASH|RANGE, S|N)


async def ensure_table(
    client: Any,
    name: str,
    *,
    keys: KeySpec,
    indexes: Mapping[str, KeySpec] | None = None,
    index_attributes: Mapping[str, str] | None = None,
    ttl_attribute: str = "ttl",
    timeout: float = 120.0,
) -> None:
    """Create the table (on-demand billing) with its global secondary indexes (projection ALL) unless it
    exists, add missing indexes to an existing one, wait until it is ACTIVE and enable TTL on ``ttl``."""
    definitions = {attribute: kind for attribute, _, kind in keys}
    definitions.update(index_attributes or {})
    gsis = [
        {"IndexName": index, "KeySchema": [{"AttributeName": a, "KeyType": t} for a, t, _ in spec],
         "Projection": {"ProjectionType": "ALL"}}
        for index, spec in (indexes or {}).items()
    ]
    request: dict[str, Any] = {
        "TableName": name,
        "KeySchema": [{"AttributeName": a, "KeyType": t} for a, t, _ in keys],
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": k} for a, k in definitions.items()],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if gsis:
        request["GlobalSecondaryIndexes"] = gsis
    try:
        await client.create_table(**request)
        log.info("created DynamoDB table %s", name)
    except Exception as exc:
        if not is_client_error(exc, "ResourceInUseException"):
            raise
    description = await _wait_active(client, name, timeout)
    existing = {i["IndexName"] for i in description.get("GlobalSecondaryIndexes", [])}
    for gsi in gsis:
        if gsi["IndexName"] not in existing:
            await client.update_table(
                TableName=name, AttributeDefinitions=request["AttributeDefinitions"],
                GlobalSecondaryIndexUpdates=[{"Create": gsi}],
            )
            log.info("added index %s to DynamoDB table %s", gsi["IndexName"], name)
            await _wait_active(client, name, timeout)
    ttl = await client.describe_time_to_live(TableName=name)
    status = ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus", "DISABLED")
    if status not in ("ENABLED", "ENABLING"):
        try:
            await client.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute})
        except Exception as exc:
            if is_client_error(exc, "UnknownOperationException"):
                # emulators without TTL (dynalite): the stores treat expired items as absent by themselves
                log.warning("the DynamoDB endpoint has no UpdateTimeToLive: items of table %s never expire", name)
            elif not (is_client_error(exc, "ValidationException") and "already" in str(exc).lower()):
                raise


async def _wait_active(client: Any, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        table: dict[str, Any] = (await client.describe_table(TableName=name))["Table"]
        indexes_ready = all(i.get("IndexStatus", "ACTIVE") == "ACTIVE" for i in table.get("GlobalSecondaryIndexes", []))
        if table.get("TableStatus") == "ACTIVE" and indexes_ready:
            return table
        if time.monotonic() > deadline:
            raise FlowcraftError(f"DynamoDB table {name!r} did not become ACTIVE within {timeout:.0f}s")
        await asyncio.sleep(1.0)


async def ensure_queue(client: Any, name: str, attributes: Mapping[str, str], *, fifo: bool) -> str:
    """Create the queue (only the immutable FIFO attributes at creation) and then set ``attributes``, so a
    changed setting updates an existing queue instead of failing. Returns the queue URL."""
    create: dict[str, str] = {"FifoQueue": "true"} if fifo else {}
    try:
        url = str((await client.create_queue(QueueName=name, Attributes=create))["QueueUrl"])
        log.info("created SQS queue %s", name)
    except Exception as exc:
        if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        url = str((await client.get_queue_url(QueueName=name))["QueueUrl"])
    if attributes:
        await client.set_queue_attributes(QueueUrl=url, Attributes=dict(attributes))
    return url


async def queue_arn(client: Any, url: str) -> str:
    response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(response["Attributes"]["QueueArn"])


def redrive_policy(dead_letter_arn: str, max_receive_count: int) -> str:
    return json.dumps({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": str(max_receive_count)})
