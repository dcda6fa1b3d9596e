"""DynamoDB context store: one item per (run, key), so concurrent writers of different keys never collide.

Table ``<prefix>contexts``: partition key ``runId`` (S), sort key ``key`` (S), attribute ``value`` (S, the
JSON text of the value). Reads are strongly consistent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Self

from flowcraft.spi import ContextStore
from flowcraft_sqs._aws import (
    MAX_PARTITION_KEY_BYTES,
    MAX_SORT_KEY_BYTES,
    AwsClients,
    ClientSource,
    KeyTooLongError,
    S,
    SqsOptions,
    backoff,
    check_item_size,
    check_key,
    dumps,
    loads,
    source_of,
)

_NAMES = {"#r": "runId", "#k": "key", "#v": "value"}
_BATCH_GET = 100
_BATCH_WRITE = 25


class DynamoDbContext(ContextStore):
    name = "dynamodb"

    def __init__(self, client: Any = None, table_name: str = "flowcraft-contexts", *,
                 source: ClientSource | None = None) -> None:
        self._source = source_of(client, source)
        self.table_name = table_name

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = SqsOptions.parse(options)
        return cls(table_name=parsed.table("contexts"),
                   source=AwsClients.shared(shared, parsed).source("dynamodb"))

    async def setup(self) -> None:
        from flowcraft_sqs.provisioning import ensure_table

        await ensure_table(await self._source.get(), self.table_name,
                           keys=[("runId", "HASH", "S"), ("key", "RANGE", "S")])

    async def close(self) -> None:
        await self._source.close()

    # ------------------------------------------------------------------------------------------
    async def get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        wanted = [k for k in dict.fromkeys(keys) if _valid_key(k)]
        if not wanted:
            return {}
        client = await self._source.get()
        chunks = [wanted[i : i + _BATCH_GET] for i in range(0, len(wanted), _BATCH_GET)]
        found: dict[str, Any] = {}
        for part in await asyncio.gather(*(self._get_chunk(client, run_id, chunk) for chunk in chunks)):
            found.update(part)
        return {k: found[k] for k in keys if k in found}

    async def _get_chunk(self, client: Any, run_id: str, keys: list[str]) -> dict[str, Any]:
        request: dict[str, Any] = {self.table_name: {
            "Keys": [{"runId": S(run_id), "key": S(k)} for k in keys],
            "ConsistentRead": True,
            "ProjectionExpression": "#k, #v",
            "ExpressionAttributeNames": {"#k": "key", "#v": "value"},
        }}
        found: dict[str, Any] = {}
        attempt = 0
        while request:
            response = await client.batch_get_item(RequestItems=request)
            for item in response.get("Responses", {}).get(self.table_name, []):
                found[item["key"]["S"]] = loads(item["value"]["S"])
            request = response.get("UnprocessedKeys") or {}
            if request:
                attempt += 1
                await asyncio.sleep(backoff(attempt))
        return found

    async def get_all(self, run_id: str) -> dict[str, Any]:
        check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        client = await self._source.get()
        values: dict[str, Any] = {}
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {
                "TableName": self.table_name, "ConsistentRead": True,
                "KeyConditionExpression": "#r = :r",
                "ExpressionAttributeNames": _NAMES, "ExpressionAttributeValues": {":r": S(run_id)},
                "ProjectionExpression": "#k, #v",
            }
            if start:
                kwargs["ExclusiveStartKey"] = start
            response = await client.query(**kwargs)
            for item in response.get("Items", []):
                values[item["key"]["S"]] = loads(item["value"]["S"])
            start = response.get("LastEvaluatedKey")
            if not start:
                return values

    async def apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        removed = set(deletes)
        requests: list[dict[str, Any]] = []
        for key, value in updates.items():
            if key in removed:
                continue  # deleted in the same step: the delete wins (as in the reference store)
            check_key(key, "context key", MAX_SORT_KEY_BYTES)
            item = {"runId": S(run_id), "key": S(key), "value": S(dumps(value, f"context value {key!r}"))}
            check_item_size(item, f"context value {key!r} of run {run_id!r}")
            requests.append({"PutRequest": {"Item": item}})
        for key in dict.fromkeys(deletes):
            if _valid_key(key):
                requests.append({"DeleteRequest": {"Key": {"runId": S(run_id), "key": S(key)}}})
        await self._write(requests)

    async def delete_run(self, run_id: str) -> None:
        check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        values = await self.get_all(run_id)
        await self._write([{"DeleteRequest": {"Key": {"runId": S(run_id), "key": S(k)}}} for k in values])

    async def _write(self, requests: list[dict[str, Any]]) -> None:
        if not requests:
            return
        client = await self._source.get()
        chunks = [requests[i : i + _BATCH_WRITE] for i in range(0, len(requests), _BATCH_WRITE)]
        await asyncio.gather(*(self._write_chunk(client, chunk) for chunk in chunks))

    async def _write_chunk(self, client: Any, chunk: list[dict[str, Any]]) -> None:
        pending: dict[str, Any] = {self.table_name: chunk}
        attempt = 0
        while pending:
            response = await client.batch_write_item(RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if pending:
                attempt += 1
                await asyncio.sleep(backoff(attempt))


def _valid_key(key: str) -> bool:
    try:
        check_key(key, "context key", MAX_SORT_KEY_BYTES)
    except KeyTooLongError:
        return False
    return True
