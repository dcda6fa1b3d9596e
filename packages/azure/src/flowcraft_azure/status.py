"""Cosmos DB status store: one item per run; transitions compare-and-set on the item's etag (HTTP 412 loses).

Container ``status_container`` (default ``flowcraft-statuses``), partition key ``/runId``; an item is
``{"id": <encoded run id>, "runId", "status", "lastUpdated" (epoch seconds), "createdAt", "blueprintId",
"version", "blueprintHash", "input", "errors", "awaiting", "parent"}`` (the last four as JSON text). Its
indexing policy has the composite indexes ``(status, lastUpdated, runId)`` and ``(lastUpdated, runId)`` (both
directions) that the reconciler's query (``status = @s AND lastUpdated < @t ORDER BY lastUpdated, runId``) and the
listings (newest first) are answered from, page by page.
"""

from __future__ import annotations

import base64
import builtins
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowcraft.errors import ConfigError
from flowcraft.spi import ACTIVE_STATUSES, SEED_RECORD_ATTRIBUTES, RunRecord, StatusStore
from flowcraft_azure._clients import (
    InvalidKeyError,
    ItemTooLargeError,
    dumps,
    item_id,
    status_code,
)
from flowcraft_azure._cosmos import CosmosContainerStore
from flowcraft_azure.options import MAX_ITEM_BYTES

if TYPE_CHECKING:
    from azure.cosmos.aio import ContainerProxy

_FIELDS = SEED_RECORD_ATTRIBUTES  # the seed's status item layout

INDEXING_POLICY: dict[str, Any] = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": "/input/?"}, {"path": "/errors/?"}, {"path": "/awaiting/?"}, {"path": "/parent/?"},
                      {"path": '/"_etag"/?'}],
    "compositeIndexes": [
        [{"path": "/status", "order": "ascending"}, {"path": "/lastUpdated", "order": "ascending"},
         {"path": "/runId", "order": "ascending"}],
        [{"path": "/lastUpdated", "order": "ascending"}, {"path": "/runId", "order": "ascending"}],
        [{"path": "/lastUpdated", "order": "descending"}, {"path": "/runId", "order": "descending"}],
    ],
}

_STALLED = ("SELECT * FROM c WHERE c.status = @s AND c.lastUpdated < @t {after}"
            "ORDER BY c.status, c.lastUpdated, c.runId")
_AFTER = "AND (c.lastUpdated > @a OR (c.lastUpdated = @a AND c.runId > @r)) "
_BEFORE = "(c.lastUpdated < @u OR (c.lastUpdated = @u AND c.runId < @r))"


#: How many run records a store remembers as the starting point of its next transition of the run.
RECENT_RECORDS = 1024
#: Records with more JSON text than this (input, errors) are not remembered.
_RECENT_MAX_CHARS = 16 * 1024


class CosmosDbStatusStore(CosmosContainerStore, StatusStore):
    name = "cosmos"

    container_option = "status_container"
    indexing_policy = INDEXING_POLICY

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the item (with its etag) this store last read or wrote, per run: a transition tries its conditional
        # replace on it first instead of reading the item again (a stale one costs a 412 and a read)
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _remember(self, item: Mapping[str, Any]) -> None:
        run_id = str(item.get("runId"))
        if "_etag" not in item or sum(len(v) for v in item.values() if isinstance(v, str)) > _RECENT_MAX_CHARS:
            self._recent.pop(run_id, None)
            return
        self._recent[run_id] = dict(item)
        self._recent.move_to_end(run_id)
        while len(self._recent) > RECENT_RECORDS:
            self._recent.popitem(last=False)

    # ------------------------------------------------------------------------------------------
    async def create(self, record: RunRecord) -> bool:
        now = time.time()
        record.created_at = record.created_at or now
        record.updated_at = now
        item = _to_item(record)
        container = await self._source.get()
        try:
            created = await self._throttle(lambda: container.create_item(item))
        except Exception as exc:
            if status_code(exc) == 409:
                return False
            raise
        self._remember(created)
        return True

    async def get(self, run_id: str) -> RunRecord | None:
        item = await self._read(run_id)
        return None if item is None else _from_item(item)

    async def delete(self, run_id: str) -> bool:
        try:
            id_ = item_id(run_id, "run id")
        except InvalidKeyError:
            return False
        self._recent.pop(run_id, None)
        container = await self._source.get()
        try:
            await self._throttle(lambda: container.delete_item(id_, partition_key=run_id))
        except Exception as exc:
            if status_code(exc) == 404:
                return False
            raise
        return True

    async def _read(self, run_id: str) -> dict[str, Any] | None:
        try:
            id_ = item_id(run_id, "run id")
        except InvalidKeyError:
            return None
        container = await self._source.get()
        try:
            item: dict[str, Any] = await self._throttle(lambda: container.read_item(id_, partition_key=run_id))
        except Exception as exc:
            if status_code(exc) == 404:
                self._recent.pop(run_id, None)
                return None
            raise
        self._remember(item)
        return item

    async def transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        """Read the item, check its status, replace it if its etag still matches; a 412 (another writer came
        first) reads it again, so of concurrent callers exactly one wins each transition. The item this store
        read or wrote last for the run, if any, stands in for the first read: the etag condition makes a stale
        one fail (412) like any lost race, and a status it shows that forbids the transition is read again
        before the transition is refused."""
        if not from_statuses:
            return None
        for field in changes:
            if field not in _FIELDS:
                raise ConfigError(f"run records have no field {field!r} that a transition may change")
        from azure.core import MatchConditions

        container = await self._source.get()
        hint = self._recent.pop(run_id, None)
        while True:
            item = hint if hint is not None else await self._read(run_id)
            from_hint, hint = hint is not None, None
            if item is None:
                return None
            if item.get("status") not in from_statuses:
                if from_hint:
                    continue  # the remembered item may be stale: read it
                return None
            etag = item["_etag"]
            body = {k: v for k, v in item.items() if not k.startswith("_")}
            body["status"] = to_status
            body["lastUpdated"] = max(time.time(), float(item.get("lastUpdated", 0.0)))
            for field, value in changes.items():
                name, encoding = _FIELDS[field]
                body[name] = _encode(value, encoding)
            _check_size(body)
            try:
                replaced = await self._replace(container, body, etag, MatchConditions.IfNotModified)
            except Exception as exc:
                if status_code(exc) == 412:
                    continue  # lost the race: look again
                if status_code(exc) == 404:
                    return None
                raise
            self._remember(replaced)
            return _from_item(replaced)

    async def _replace(self, container: ContainerProxy, body: dict[str, Any], etag: str,
                       condition: Any) -> dict[str, Any]:
        async def call() -> dict[str, Any]:
            return dict(await container.replace_item(body["id"], body, etag=etag, match_condition=condition))

        return await self._throttle(call)

    async def stalled(
        self, older_than: float, limit: int = 100, *, after: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        """One query per active status on the ``(status, lastUpdated, runId)`` composite index, oldest first,
        strictly after the cursor, at most ``limit`` items each; merged."""
        container = await self._source.get()
        limit = max(1, limit)
        found: list[RunRecord] = []
        for status in sorted(ACTIVE_STATUSES):
            parameters: list[dict[str, Any]] = [{"name": "@s", "value": status}, {"name": "@t", "value": older_than}]
            if after is not None:
                parameters += [{"name": "@a", "value": after[0]}, {"name": "@r", "value": after[1]}]
            query = _STALLED.format(after=_AFTER if after is not None else "")
            found += await self._query(container, query, parameters, limit)
        found.sort(key=lambda r: (r.updated_at, r.run_id))
        return found[:limit]

    async def list(
        self, status: str | None = None, blueprint_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[builtins.list[RunRecord], str | None]:
        """Most recently updated first; the cursor is the last record's ``(lastUpdated, runId)``."""
        limit = max(1, limit)
        conditions: builtins.list[str] = []
        parameters: builtins.list[dict[str, Any]] = []
        if status is not None:
            conditions.append("c.status = @s")
            parameters.append({"name": "@s", "value": status})
        if blueprint_id is not None:
            conditions.append("c.blueprintId = @b")
            parameters.append({"name": "@b", "value": blueprint_id})
        if cursor:
            updated, run_id = _decode_cursor(cursor)
            conditions.append(_BEFORE)
            parameters += [{"name": "@u", "value": updated}, {"name": "@r", "value": run_id}]
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        query = f"SELECT * FROM c {where}ORDER BY c.lastUpdated DESC, c.runId DESC"
        container = await self._source.get()
        page = await self._query(container, query, parameters, limit + 1)
        if len(page) <= limit:
            return page, None
        page = page[:limit]
        return page, _encode_cursor(page[-1].updated_at, page[-1].run_id)

    async def _query(self, container: ContainerProxy, query: str, parameters: builtins.list[dict[str, Any]],
                     limit: int) -> builtins.list[RunRecord]:
        async def run() -> builtins.list[RunRecord]:
            out: builtins.list[RunRecord] = []
            items = container.query_items(query, parameters=parameters, max_item_count=min(limit, 1000))
            async for item in items:
                out.append(_from_item(item))
                if len(out) >= limit:
                    break
            return out

        return await self._throttle(run)


def _encode_cursor(updated: float, run_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([updated, run_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        updated, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(updated), str(run_id)
    except (ValueError, TypeError):
        raise ConfigError("invalid cursor for listing runs",
                          hint="pass the cursor the previous page returned") from None


def _encode(value: Any, encoding: str) -> Any:
    if value is None:
        return None
    if encoding == "s":
        return str(value)
    if encoding == "n":
        return float(value)
    return dumps(value)


def _decode(value: Any, encoding: str) -> Any:
    if value is None:
        return None
    if encoding == "j":
        return json.loads(value) if isinstance(value, str) else value
    if encoding == "n":
        return float(value)
    return str(value)


def _check_size(item: Mapping[str, Any]) -> None:
    size = len(dumps(item).encode("utf-8")) + 512
    if size > MAX_ITEM_BYTES:
        raise ItemTooLargeError(f"the run record of {item.get('runId')!r} is {size / 1024:.0f} KB; a Cosmos DB item "
                                f"holds at most {MAX_ITEM_BYTES // 1024} KB",
                                hint="pass large inputs through a blob store, not as the run's input")


def _to_item(record: RunRecord) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id(record.run_id, "run id"), "runId": record.run_id, "status": record.status,
                            "lastUpdated": record.updated_at}
    for field, (name, encoding) in _FIELDS.items():
        item[name] = _encode(getattr(record, field), encoding)
    _check_size(item)
    return item


def _from_item(item: Mapping[str, Any]) -> RunRecord:
    values = {field: _decode(item.get(name), encoding) for field, (name, encoding) in _FIELDS.items()}
    return RunRecord(
        run_id=str(item["runId"]),
        blueprint_id=values["blueprint_id"] or "",
        status=item.get("status") or "running",
        version=values["version"],
        blueprint_hash=values["blueprint_hash"],
        input=values["input"],
        created_at=values["created_at"] or 0.0,
        updated_at=float(item.get("lastUpdated") or 0.0),
        errors=values["errors"] or [],
        awaiting=values["awaiting"] or [],
        parent=values["parent"],
    )
