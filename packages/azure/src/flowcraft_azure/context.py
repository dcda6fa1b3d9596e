"""Cosmos DB context store: one item per (run, key), so concurrent writers of different keys never collide.

Container ``context_container`` (default ``flowcraft-contexts``), partition key ``/runId``; an item is
``{"id": <encoded key>, "runId": <run id>, "key": <key>, "value": <the value's JSON text>}``. Ids are encoded
(``b`` + base64url of the key, or ``h`` + its SHA-256 past 255 characters) because Cosmos forbids
``/ \\ ? #`` in ids; the key itself is kept in the item. Values are JSON text so numbers round-trip exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowcraft.spi import ContextStore
from flowcraft_azure._clients import (
    ItemTooLargeError,
    dumps,
    item_id,
    log,
    status_code,
)
from flowcraft_azure._cosmos import CosmosContainerStore
from flowcraft_azure.options import MAX_ITEM_BYTES

if TYPE_CHECKING:
    from azure.cosmos.aio import ContainerProxy

#: Bytes an item's own fields and Cosmos's system properties take besides the key and value.
_OVERHEAD = 1024


class CosmosDbContext(CosmosContainerStore, ContextStore):
    name = "cosmos"

    container_option = "context_container"

    # ------------------------------------------------------------------------------------------
    async def get_all(self, run_id: str) -> dict[str, Any]:
        item_id(run_id, "run id")
        container = await self._source.get()

        async def query() -> dict[str, Any]:
            found: dict[str, Any] = {}
            items = container.query_items("SELECT c.key, c[\"value\"] FROM c WHERE c.runId = @r",
                                          parameters=[{"name": "@r", "value": run_id}], partition_key=run_id)
            async for item in items:
                found[item["key"]] = _loads(item["value"])
            return found

        return await self._throttle(query)

    async def get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        """Point reads of the keys asked for (1 RU each), concurrently."""
        item_id(run_id, "run id")
        wanted = [key for key in dict.fromkeys(keys) if key]
        if not wanted:
            return {}
        container = await self._source.get()
        values = await asyncio.gather(*(self._read(container, run_id, key) for key in wanted))
        found = {key: value for key, (ok, value) in zip(wanted, values, strict=True) if ok}
        return {key: found[key] for key in keys if key in found}

    async def _read(self, container: ContainerProxy, run_id: str, key: str) -> tuple[bool, Any]:
        try:
            item = await self._throttle(lambda: container.read_item(item_id(key, "context key"), partition_key=run_id))
        except Exception as exc:
            if status_code(exc) == 404:
                return False, None
            raise
        return True, _loads(item["value"])

    async def apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        item_id(run_id, "run id")
        removed = set(deletes)
        items = []
        for key, value in updates.items():
            if key in removed:
                continue  # deleted in the same step: the delete wins (as in the reference store)
            item = {"id": item_id(key, "context key"), "runId": run_id, "key": key, "value": dumps(value)}
            size = len(item["value"].encode("utf-8")) + 2 * len(key.encode("utf-8")) + len(run_id.encode()) + _OVERHEAD
            if size > MAX_ITEM_BYTES:
                raise ItemTooLargeError(
                    f"context value {key!r} of run {run_id!r} is {size / 1024:.0f} KB; a Cosmos DB item holds at "
                    f"most {MAX_ITEM_BYTES // 1024} KB",
                    hint="keep large payloads in Blob Storage and put a reference in the context")
            items.append(item)
        container = await self._source.get()
        await asyncio.gather(*(self._upsert(container, item) for item in items),
                             *(self._delete(container, run_id, item_id(key, "context key"))
                               for key in dict.fromkeys(deletes) if key))

    async def _upsert(self, container: ContainerProxy, item: dict[str, Any]) -> None:
        async def call() -> None:
            await container.upsert_item(item)

        await self._throttle(call)

    async def delete_run(self, run_id: str) -> None:
        item_id(run_id, "run id")
        container = await self._source.get()

        async def ids() -> list[str]:
            found = container.query_items("SELECT c.id FROM c WHERE c.runId = @r",
                                          parameters=[{"name": "@r", "value": run_id}], partition_key=run_id)
            return [item["id"] async for item in found]

        await asyncio.gather(*(self._delete(container, run_id, i) for i in await self._throttle(ids)))

    async def _delete(self, container: ContainerProxy, run_id: str, id_: str) -> None:
        try:
            await self._throttle(lambda: container.delete_item(id_, partition_key=run_id))
        except Exception as exc:
            if status_code(exc) != 404:
                raise
            log.debug("context item of run %r already deleted", run_id)


def _loads(text: Any) -> Any:
    import json

    return json.loads(text) if isinstance(text, str) else text
