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
#: Cosmos DB's limits on one transactional batch: operations, and bytes of the request.
MAX_BATCH_OPERATIONS = 100
MAX_BATCH_BYTES = 2 * 1024 * 1024


class CosmosDbContext(CosmosContainerStore, ContextStore):
    name = "cosmos"

    container_option = "context_container"
    #: whether ``apply`` writes several keys in one transactional batch (cleared when the server refuses one)
    batches = True

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
        """The writes of one step: one transactional batch (one request) when there are several and they fit
        in one, else one upsert or delete per key, concurrently."""
        item_id(run_id, "run id")
        removed = set(deletes)
        items = []
        total = 0
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
            total += size
        gone = [item_id(key, "context key") for key in dict.fromkeys(deletes) if key]
        container = await self._source.get()
        if self.batches and len(items) + len(gone) > 1 and len(items) + len(gone) <= MAX_BATCH_OPERATIONS \
                and total + _OVERHEAD * len(gone) <= MAX_BATCH_BYTES:
            try:
                await self._batch(container, run_id, items, gone)
                return
            except Exception as exc:
                if not self._batch_refused(exc, run_id, bool(gone)):
                    raise
        await asyncio.gather(*(self._upsert(container, item) for item in items),
                             *(self._delete(container, run_id, id_) for id_ in gone))

    def _batch_refused(self, exc: Exception, run_id: str, deletes: bool) -> bool:
        """Whether a failed batch is to be written again key by key (nothing of it was applied): a delete of a
        key that is not there fails a whole batch (404), which ``apply`` ignores; a server that rejects the
        request as a whole (400/500/501 for the batch itself, not for one of its operations) does not take
        transactional batches (the ``@vercel/cosmosdb-server`` emulator wants a partition key in each
        operation, which the Python SDK sends once, in the header): this store stops batching."""
        from azure.cosmos.exceptions import CosmosBatchOperationError

        code = status_code(exc)
        if isinstance(exc, CosmosBatchOperationError):
            if code == 404 and deletes:
                log.debug("context batch of run %r deleted a missing key; writing the keys one by one", run_id)
                return True
            return False
        if code in (400, 500, 501):
            self.batches = False
            log.info("Cosmos DB refused a transactional batch (HTTP %s): context keys are written one by one "
                     "from now on", code)
            return True
        return False

    async def _batch(self, container: ContainerProxy, run_id: str, items: Sequence[dict[str, Any]],
                     gone: Sequence[str]) -> None:
        """One transactional batch in the run's partition: the upserts, then the deletes (all or nothing on
        Cosmos DB)."""
        operations: list[tuple[str, tuple[Any, ...]]] = [("upsert", (item,)) for item in items]
        operations += [("delete", (id_,)) for id_ in gone]

        async def call() -> None:
            await container.execute_item_batch(operations, partition_key=run_id)

        await self._throttle(call)

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
