"""DynamoDB status store: one item per run; transitions are conditional updates (exactly one winner).

Table ``<prefix>statuses``: partition key ``runId`` (S); attributes ``status`` (S), ``lastUpdated`` (N, epoch
seconds), ``createdAt`` (N), ``blueprintId`` (S), ``version`` (S), ``blueprintHash`` (S) and the JSON texts
``input``, ``errors``, ``awaiting``, ``parent`` (S). Global secondary index ``status-lastUpdated``
(partition ``status``, sort ``lastUpdated``, projection ALL) serves the reconciler and listings: no scans.
"""

from __future__ import annotations

import base64
import builtins
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from flowcraft.errors import ConfigError
from flowcraft.spi import ACTIVE_STATUSES, SEED_RECORD_ATTRIBUTES, RunRecord, StatusStore
from flowcraft_sqs._aws import (
    BATCH_GET,
    MAX_PARTITION_KEY_BYTES,
    AwsClients,
    ClientSource,
    KeyTooLongError,
    N,
    S,
    SqsOptions,
    batch_get,
    check_item_size,
    check_key,
    dumps,
    is_client_error,
    is_key,
    loads,
    num,
    source_of,
    text,
)
from flowcraft_sqs._batch import Coalescer, Entry

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

    from flowcraft_sqs.coordination import DynamoDbCoordinationStore

ALL_STATUSES = ("running", "awaiting", "completed", "failed", "cancelled")
_FIELDS = SEED_RECORD_ATTRIBUTES  # the seed's status item layout


class DynamoDbStatusStore(StatusStore):
    name = "dynamodb"
    Options = SqsOptions

    def __init__(self, client: DynamoDBClient | None = None, table_name: str = "flowcraft-statuses", *,
                 index_name: str = "status-lastUpdated", source: ClientSource[DynamoDBClient] | None = None) -> None:
        self._source = source_of(client, source)
        self.table_name = table_name
        self._gets = Coalescer(self._get_batch, max_entries=BATCH_GET)  # reads of concurrent nodes
        self.index_name = index_name
        self.mirror: DynamoDbCoordinationStore | None = None

    def mirror_into(self, coordination: DynamoDbCoordinationStore) -> None:
        """Keep the run items of ``coordination`` able to tell a job's record (``begin_prefetch``): a record
        this store creates is handed to the run item's first write, and every transition and delete first
        writes the run item's mark unless this process saw it there already (the ``sqs`` preset wires this)."""
        self.mirror = coordination

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = SqsOptions.parse(options)
        return cls.build(parsed, AwsClients.shared(shared, parsed))

    @classmethod
    def build(cls, options: SqsOptions, clients: AwsClients) -> Self:
        """The store its options describe, on the backend's ``clients``."""
        return cls(table_name=options.table("statuses"), index_name=options.status_index,
                   source=clients.source("dynamodb"))

    async def setup(self) -> None:
        from flowcraft_sqs.provisioning import ensure_table

        await ensure_table(await self._source.get(), self.table_name, keys=[("runId", "HASH", "S")],
                           indexes={self.index_name: [("status", "HASH", "S"), ("lastUpdated", "RANGE", "N")]},
                           index_attributes={"status": "S", "lastUpdated": "N"})

    async def close(self) -> None:
        await self._source.close()

    # ------------------------------------------------------------------------------------------
    async def create(self, record: RunRecord) -> bool:
        check_key(record.run_id, "run id", MAX_PARTITION_KEY_BYTES)
        now = time.time()
        record.created_at = record.created_at or now
        record.updated_at = now
        item = _to_item(record)
        check_item_size(item, f"status record of run {record.run_id!r}")
        client = await self._source.get()
        try:
            await client.put_item(TableName=self.table_name, Item=item,
                                  ConditionExpression="attribute_not_exists(#r)",
                                  ExpressionAttributeNames={"#r": "runId"})
        except Exception as exc:
            if is_client_error(exc, "ConditionalCheckFailedException"):
                return False
            raise
        if self.mirror is not None:
            self.mirror.offer_record(record.run_id, item)
        return True

    async def get(self, run_id: str) -> RunRecord | None:
        try:
            check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        except KeyTooLongError:
            return None
        (item,) = await self._gets.submit([({"runId": S(run_id)}, 0)])
        return None if not item else _from_item(item)

    async def get_many(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """The records of several runs (one BatchGetItem per 100; runs without a record left out)."""
        wanted = [run_id for run_id in dict.fromkeys(run_ids) if is_key(run_id, MAX_PARTITION_KEY_BYTES)]
        items = await self._gets.submit([({"runId": S(i)}, 0) for i in wanted])
        return {run_id: _from_item(item) for run_id, item in zip(wanted, items, strict=True) if item}

    @staticmethod
    def record_of(item: Mapping[str, Any]) -> RunRecord:
        """The record a status item (or its mirror in a run item) holds."""
        return _from_item(item)

    async def delete(self, run_id: str) -> bool:
        try:
            check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        except KeyTooLongError:
            return False
        if self.mirror is not None:
            await self.mirror.mark(run_id, create=False)
        client = await self._source.get()
        response = await client.delete_item(TableName=self.table_name, Key={"runId": S(run_id)},
                                            ReturnValues="ALL_OLD")
        return bool(response.get("Attributes"))

    async def _get_batch(self, entries: list[Entry]) -> list[dict[str, Any] | None]:
        """One consistent BatchGetItem for the reads of concurrent callers."""
        ids = list(dict.fromkeys(entry.request["runId"]["S"] for entry in entries))
        items = await batch_get(await self._source.get(), self.table_name, [{"runId": S(i)} for i in ids])
        found = {item["runId"]["S"]: item for item in items}
        return [found.get(entry.request["runId"]["S"]) for entry in entries]

    async def transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        if not from_statuses:
            return None
        names = {"#status": "status", "#updated": "lastUpdated"}
        values: dict[str, Any] = {":to": S(to_status), ":now": N(time.time())}
        sets = ["#status = :to", "#updated = :now"]
        removes: list[str] = []
        for index, (field, value) in enumerate(changes.items()):
            if field not in _FIELDS:
                raise ConfigError(f"run records have no field {field!r} that a transition may change")
            attribute, encoding = _FIELDS[field]
            names[f"#f{index}"] = attribute
            if value is None:
                removes.append(f"#f{index}")
                continue
            values[f":f{index}"] = _encode(value, encoding, f"run field {field!r}")
            sets.append(f"#f{index} = :f{index}")
        allowed = []
        for index, status in enumerate(dict.fromkeys(from_statuses)):
            values[f":s{index}"] = S(status)
            allowed.append(f":s{index}")
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        if self.mirror is not None and is_key(run_id, MAX_PARTITION_KEY_BYTES) and not self.mirror.marked(run_id):
            await self.mirror.mark(run_id)  # first: a run item without it tells that nothing changed yet
        client = await self._source.get()
        try:
            response = await client.update_item(
                TableName=self.table_name, Key={"runId": S(run_id)}, UpdateExpression=expression,
                ConditionExpression=f"#status IN ({', '.join(allowed)})",
                ExpressionAttributeNames=names, ExpressionAttributeValues=values, ReturnValues="ALL_NEW",
            )
        except Exception as exc:
            if is_client_error(exc, "ConditionalCheckFailedException"):
                return None
            raise
        return _from_item(response["Attributes"])

    async def stalled(
        self, older_than: float, limit: int = 100, *, after: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        """Queries the ``status-lastUpdated`` index per active status (oldest first, from the ``after``
        cursor's time on), paginated; ties with the cursor's time are ordered by run id."""
        client = await self._source.get()
        found: list[RunRecord] = []
        since = after[0] if after is not None else None
        for status in sorted(ACTIVE_STATUSES):
            start: dict[str, Any] | None = None
            taken = 0
            while taken < limit:
                condition = "#s = :s AND #u < :t" if since is None else "#s = :s AND #u BETWEEN :a AND :t"
                values = {":s": S(status), ":t": N(older_than)}
                if since is not None:
                    values[":a"] = N(since)
                kwargs: dict[str, Any] = {
                    "TableName": self.table_name, "IndexName": self.index_name,
                    "KeyConditionExpression": condition,
                    "ExpressionAttributeNames": {"#s": "status", "#u": "lastUpdated"},
                    "ExpressionAttributeValues": values,
                    "Limit": max(1, min(1000, limit)),
                }
                if start:
                    kwargs["ExclusiveStartKey"] = start
                response = await client.query(**kwargs)
                page = [record for record in map(_from_item, response.get("Items", []))
                        if record.updated_at < older_than
                        and (after is None or (record.updated_at, record.run_id) > after)]
                found += page
                taken += len(page)
                start = response.get("LastEvaluatedKey")
                if not start:
                    break
        found.sort(key=lambda r: (r.updated_at, r.run_id))
        return found[:limit]

    async def list(
        self, status: str | None = None, blueprint_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[RunRecord], str | None]:
        """Most recently updated first. Each status is one descending query of the index; without a status
        filter the five queries are merged, and the cursor keeps each one's position."""
        limit = max(1, limit)
        statuses = [status] if status else list(ALL_STATUSES)
        positions: dict[str, Any] = _decode_cursor(cursor) if cursor else dict.fromkeys(statuses)
        client = await self._source.get()
        fetched: dict[str, tuple[list[dict[str, Any]], bool]] = {}
        for name in statuses:
            position = positions.get(name)
            if position == "end":
                continue
            fetched[name] = await self._fetch(client, name, blueprint_id, position, limit)
        # newest first; within one status the index order is kept, so what a page takes is a prefix
        merged = sorted((-num(item["lastUpdated"]), name, index)
                        for name, (items, _) in fetched.items() for index, item in enumerate(items))[:limit]
        consumed: dict[str, int] = {}
        for _, name, index in merged:
            consumed[name] = max(consumed.get(name, 0), index + 1)
        page = [_from_item(fetched[name][0][index]) for _, name, index in merged]
        for name, (items, exhausted) in fetched.items():
            used = consumed.get(name, 0)
            if used == len(items) and exhausted:
                positions[name] = "end"
            elif used:
                positions[name] = _index_key(items[used - 1])
        done = all(positions.get(name) == "end" for name in statuses)
        return page, None if done else _encode_cursor(positions)

    async def _fetch(self, client: DynamoDBClient, status: str, blueprint_id: str | None, start: dict[str, Any] | None,
                     limit: int) -> tuple[builtins.list[dict[str, Any]], bool]:
        """Up to ``limit`` items of one status, newest first, from ``start``; and whether none are left."""
        items: builtins.list[dict[str, Any]] = []
        while True:
            kwargs: dict[str, Any] = {
                "TableName": self.table_name, "IndexName": self.index_name, "ScanIndexForward": False,
                "KeyConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":s": S(status)}, "Limit": max(limit, 25),
            }
            if blueprint_id is not None:
                kwargs["FilterExpression"] = "#b = :b"
                kwargs["ExpressionAttributeNames"]["#b"] = "blueprintId"
                kwargs["ExpressionAttributeValues"][":b"] = S(blueprint_id)
            if start:
                kwargs["ExclusiveStartKey"] = start
            response = await client.query(**kwargs)
            page = response.get("Items", [])
            start = response.get("LastEvaluatedKey")
            room = limit - len(items)
            items += page[:room]
            if len(page) > room:
                return items, False
            if not start:
                return items, True
            if len(items) >= limit:
                return items, False


def _index_key(item: Mapping[str, Any]) -> dict[str, Any]:
    return {"runId": item["runId"], "status": item["status"], "lastUpdated": item["lastUpdated"]}


def _encode_cursor(positions: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(positions, separators=(",", ":")).encode()).decode()


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ConfigError("invalid cursor for listing runs", hint="pass the cursor the previous page returned")
    return data


def _encode(value: Any, encoding: str, what: str) -> dict[str, str]:
    if encoding == "s":
        return S(str(value))
    if encoding == "n":
        return N(float(value))
    return S(dumps(value, what))


def _to_item(record: RunRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "runId": S(record.run_id), "status": S(record.status), "lastUpdated": N(record.updated_at),
    }
    for field, (attribute, encoding) in _FIELDS.items():
        value = getattr(record, field)
        if value is not None:
            item[attribute] = _encode(value, encoding, f"run field {field!r}")
    return item


def _from_item(item: Mapping[str, Any]) -> RunRecord:
    return RunRecord(
        run_id=item["runId"]["S"],
        blueprint_id=text(item.get("blueprintId")) or "",
        # a RunStatus: the attribute holds only what this store wrote from a RunRecord
        status=text(item.get("status")) or "running",  # type: ignore[arg-type]
        version=text(item.get("version")),
        blueprint_hash=text(item.get("blueprintHash")),
        input=loads(text(item.get("input"))),
        created_at=num(item.get("createdAt")),
        updated_at=num(item.get("lastUpdated")),
        errors=loads(text(item.get("errors"))) or [],
        awaiting=loads(text(item.get("awaiting"))) or [],
        parent=loads(text(item.get("parent"))),
    )
