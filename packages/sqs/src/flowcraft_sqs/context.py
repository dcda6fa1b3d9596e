"""DynamoDB context stores.

* :class:`DynamoDbContext` (component ``dynamodb``, and the seed-style adapter's): one item per (run, key) in
  table ``<prefix>contexts`` — partition key ``runId`` (S), sort key ``key`` (S), attribute ``value`` (S, the
  JSON text of the value) — so concurrent writers of different keys never collide.
* :class:`RunItemContext` (the ``sqs`` preset's): the context in the run's coordination item (map ``ctx``),
  so a commit writes a completion's context with its record in one UpdateItem (``applies_context``).

Reads are strongly consistent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from flowcraft.spi import ContextStore
from flowcraft_sqs._aws import (
    BATCH_WRITE,
    MAX_PARTITION_KEY_BYTES,
    MAX_SORT_KEY_BYTES,
    AwsClients,
    ClientSource,
    S,
    SqsOptions,
    batch_get,
    batch_write,
    check_item_size,
    check_key,
    dumps,
    loads,
    source_of,
)
from flowcraft_sqs._batch import Coalescer, Entry
from flowcraft_sqs.coordination import valid_context_key

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

    from flowcraft_sqs.coordination import DynamoDbCoordinationStore

_NAMES = {"#r": "runId", "#k": "key", "#v": "value"}


class DynamoDbContext(ContextStore):
    name = "dynamodb"
    Options = SqsOptions

    def __init__(self, client: DynamoDBClient | None = None, table_name: str = "flowcraft-contexts", *,
                 source: ClientSource[DynamoDBClient] | None = None) -> None:
        self._source = source_of(client, source)
        self.table_name = table_name
        self._writes = Coalescer(self._write_batch, max_entries=BATCH_WRITE)  # writes of concurrent nodes

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = SqsOptions.parse(options)
        return cls.build(parsed, AwsClients.shared(shared, parsed))

    @classmethod
    def build(cls, options: SqsOptions, clients: AwsClients) -> Self:
        """The store its options describe, on the backend's ``clients``."""
        return cls(table_name=options.table("contexts"), source=clients.source("dynamodb"))

    async def setup(self) -> None:
        from flowcraft_sqs.provisioning import ensure_table

        await ensure_table(await self._source.get(), self.table_name,
                           keys=[("runId", "HASH", "S"), ("key", "RANGE", "S")])

    async def close(self) -> None:
        await self._source.close()

    # ------------------------------------------------------------------------------------------
    async def get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        wanted = [k for k in dict.fromkeys(keys) if valid_context_key(k)]
        if not wanted:
            return {}
        items = await batch_get(await self._source.get(), self.table_name,
                                [{"runId": S(run_id), "key": S(k)} for k in wanted],
                                ProjectionExpression="#k, #v", ExpressionAttributeNames={"#k": "key", "#v": "value"})
        found = {item["key"]["S"]: loads(item["value"]["S"]) for item in items}
        return {k: found[k] for k in keys if k in found}

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
            if valid_context_key(key):
                requests.append({"DeleteRequest": {"Key": {"runId": S(run_id), "key": S(key)}}})
        await self._write(requests)

    async def delete_run(self, run_id: str) -> None:
        check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        values = await self.get_all(run_id)
        await self._write([{"DeleteRequest": {"Key": {"runId": S(run_id), "key": S(k)}}} for k in values])

    async def _write(self, requests: list[dict[str, Any]]) -> None:
        if requests:
            await self._writes.submit([(request, 0) for request in requests])

    async def _write_batch(self, entries: list[Entry]) -> list[None]:
        """One BatchWriteItem for the writes of concurrent callers; of two for one key the later one wins
        (DynamoDB refuses a batch naming a key twice)."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in entries:
            request = entry.request
            key = request.get("PutRequest", {}).get("Item") or request["DeleteRequest"]["Key"]
            latest[(key["runId"]["S"], key["key"]["S"])] = request
        await batch_write(await self._source.get(), self.table_name, list(latest.values()))
        return [None] * len(entries)


class RunItemContext(ContextStore):
    """The context of each run in its coordination item (``ctx``: key -> value JSON, values over 2 KB in blob
    items), read and written through ``coordination``, which is built with ``applies_context`` and so writes
    a completion's context with its record. Entries are set one by one (concurrent writers of different keys
    never collide); writes outside commits do not change the item's version (no commit retries for them)."""

    name = "dynamodb-run-item"

    def __init__(self, coordination: DynamoDbCoordinationStore, *, provision: DynamoDbContext | None = None
                 ) -> None:
        """``provision``: a context table that ``setup`` creates too, unused here (the ``sqs`` preset's
        ``setup`` keeps creating ``<prefix>contexts`` for the seed-style ``SqsAdapter`` and the ``dynamodb``
        context component, which keep their contexts in it)."""
        if not coordination.applies_context:
            raise ValueError("RunItemContext needs a coordination store built with applies_context=True")
        self.coordination = coordination
        self._provision = provision

    async def setup(self) -> None:
        await self.coordination.setup()
        if self._provision is not None:
            await self._provision.setup()

    async def close(self) -> None:
        if self._provision is not None:  # its share of the backend's clients; the coordination store closes its own
            await self._provision.close()

    async def get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        return await self.coordination.context_get_many(run_id, keys)

    async def get_all(self, run_id: str) -> dict[str, Any]:
        return await self.coordination.context_get_all(run_id)

    async def apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        await self.coordination.context_apply(run_id, updates, deletes)

    async def delete_run(self, run_id: str) -> None:
        await self.coordination.context_delete_run(run_id)

