"""PostgreSQL context store: one row per (run_id, key) with the value in JSONB.

Table ``flowcraft_contexts`` (option ``context_table``)::

    run_id TEXT NOT NULL, key TEXT NOT NULL, value JSONB NOT NULL, PRIMARY KEY (run_id, key)

A key set to ``None`` is a row holding JSON ``null`` (it exists). Writes are one statement each
(``INSERT ... ON CONFLICT DO UPDATE`` of the updated keys, ``DELETE`` of the deleted ones, in one statement):
no read-modify-write of a whole document, so concurrent writers of different keys never lose an update.

Writes of updates only (the engine's per-node write) made during one event-loop iteration are coalesced into
one statement for all their runs (``unnest`` of run ids, keys and values), as the Redis stores pipeline: a worker
running many jobs sends one statement where it sent one per job. A write that shares a (run, key) with an
earlier one in the batch goes in the next statement, so each statement touches a row at most once and a
caller's writes keep their order. If PostgreSQL refuses a value, the batch is retried write by write, so only
the write holding it fails. ``get_many`` reads made during one event-loop iteration (runs ending together read
their outputs) are one statement likewise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from flowcraft.errors import ConfigError
from flowcraft.spi import ContextStore
from flowcraft_rabbitmq._pg import PgClient, PgTableStore, ValueRefusedError, check_text, columns, dumps, text_array
from flowcraft_rabbitmq.options import PostgresOptions


class PostgresContext(PgTableStore, ContextStore):
    """A run's context in PostgreSQL (see the module docstring)."""

    name = "postgres"
    Options = PostgresOptions
    table_option = "context_table"

    def __init__(self, client: PgClient | Any, table_name: str = "flowcraft_contexts", *,
                 schema: str | None = None) -> None:
        super().__init__(client, table_name, schema=schema)
        t = self._table
        self._get_all = sql.SQL("SELECT key, value FROM {} WHERE run_id = %s").format(t)
        self._get_many = sql.SQL("SELECT key, value FROM {} WHERE run_id = %s AND key = ANY(%s::text[])").format(t)
        self._upsert = sql.SQL(
            "INSERT INTO {} (run_id, key, value) SELECT %s, k, v::jsonb FROM unnest(%s::text[], %s::text[]) AS u(k, v) "
            "ON CONFLICT (run_id, key) DO UPDATE SET value = EXCLUDED.value").format(t)
        self._upsert_delete = sql.SQL(
            "WITH gone AS (DELETE FROM {t} WHERE run_id = %s AND key = ANY(%s)) "
            "INSERT INTO {t} (run_id, key, value) SELECT %s, k, v::jsonb FROM unnest(%s::text[], %s::text[]) "
            "AS u(k, v) ON CONFLICT (run_id, key) DO UPDATE SET value = EXCLUDED.value").format(t=t)
        self._delete = sql.SQL("DELETE FROM {} WHERE run_id = %s AND key = ANY(%s)").format(t)
        self._delete_run = sql.SQL("DELETE FROM {} WHERE run_id = %s").format(t)
        self._upsert_runs = sql.SQL(
            "INSERT INTO {} (run_id, key, value) SELECT r, k, v::jsonb FROM unnest(%s::text[], %s::text[], "
            "%s::text[]) AS u(r, k, v) ON CONFLICT (run_id, key) DO UPDATE SET value = EXCLUDED.value").format(t)
        self._get_runs = sql.SQL(
            "SELECT run_id, key, value FROM {} WHERE run_id = ANY(%s::text[]) AND key = ANY(%s::text[])").format(t)
        #: updates-only writes waiting for the next coalesced statement (see the module docstring)
        self._waiting: list[_Write] = []
        #: ``get_many`` reads waiting for the next coalesced statement
        self._reading: list[_Read] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def setup(self) -> None:
        t = self._table

        async def create(conn: psycopg.AsyncConnection[Any]) -> None:
            await self.create_schema(conn)
            await conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (run_id TEXT NOT NULL, key TEXT NOT NULL, value JSONB NOT NULL, "
                "PRIMARY KEY (run_id, key))").format(t))
            found = await columns(conn, self.schema, self.table_name)
            if not {"run_id", "key", "value"} <= set(found):
                raise ConfigError(
                    f"table {self.table_name!r} exists with other columns ({', '.join(found)}): it is not a "
                    "Flowcraft for Python context table (the TypeScript seed's keeps one JSONB document per run)",
                    hint="set the context_table option to a new table name, or migrate the rows to one per key")

        await self.client.run(create)

    # ------------------------------------------------------------------------------------------
    async def get_all(self, run_id: str) -> dict[str, Any]:
        check_text(run_id, "run id")

        async def read(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
            return await (await conn.execute(self._get_all, [run_id])).fetchall()

        return {key: value for key, value in await self.client.run(read)}

    async def get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        """The keys asked for that exist. Reads made in one event-loop iteration (runs ending together read
        their outputs) are one statement: ``run_id = ANY(...) AND key = ANY(...)``, each caller taking its own
        pairs from the rows."""
        wanted = [k for k in dict.fromkeys(keys) if "\x00" not in k]
        if not wanted:
            return {}
        check_text(run_id, "run id")
        loop = asyncio.get_running_loop()
        read = _Read(run_id, wanted, loop.create_future())
        if not self._reading:  # the first read of this iteration: flush on the next one, with all that joined
            task = loop.create_task(self._flush_reads())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        self._reading.append(read)
        found = await read.done
        return {k: found[k] for k in keys if k in found}

    async def _flush_reads(self) -> None:
        reads, self._reading = self._reading, []
        try:
            if len(reads) == 1:
                query, params = self._get_many, [reads[0].run_id, text_array(reads[0].keys)]
            else:
                query = self._get_runs
                params = [text_array(dict.fromkeys(read.run_id for read in reads)),
                          text_array(dict.fromkeys(key for read in reads for key in read.keys))]

            async def run(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
                return await (await conn.execute(query, params)).fetchall()

            rows = await self.client.run(run)
        except BaseException as exc:
            _fail(reads, exc)
            return
        if len(reads) == 1:
            _settle(reads[0], None, {key: value for key, value in rows})
            return
        by_run: dict[str, dict[str, Any]] = {}
        for row_run, key, value in rows:
            by_run.setdefault(row_run, {})[key] = value
        for read in reads:
            mine = by_run.get(read.run_id, {})
            _settle(read, None, {key: mine[key] for key in read.keys if key in mine})

    async def apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        check_text(run_id, "run id")
        removed = list(dict.fromkeys(k for k in deletes if "\x00" not in k))
        keys: list[str] = []
        values: list[str] = []
        for key, value in updates.items():
            if key in deletes:
                continue  # deleted in the same step: the delete wins (as in the reference store)
            keys.append(check_text(key, "context key"))
            values.append(dumps(value, f"context value {key!r} of run {run_id!r}"))
        if keys and removed:
            query, params = self._upsert_delete, [run_id, removed, run_id, keys, values]
        elif keys:
            await self._coalesced(_Write(run_id, keys, values))
            return
        elif removed:
            query, params = self._delete, [run_id, removed]
        else:
            return

        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(query, params)

        await self.client.run(write)

    async def delete_run(self, run_id: str) -> None:
        check_text(run_id, "run id")

        async def delete(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(self._delete_run, [run_id])

        await self.client.run(delete)

    # ------------------------------------------------------------------------------------------ coalescing
    def _coalesced(self, write: _Write) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        write.done = loop.create_future()
        if not self._waiting:  # the first write of this iteration: flush on the next one, with all that joined
            task = loop.create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        self._waiting.append(write)
        return write.done

    async def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        try:
            while waiting:
                batch: list[_Write] = []
                later: list[_Write] = []
                rows: set[tuple[str, str]] = set()
                for write in waiting:
                    mine = {(write.run_id, key) for key in write.keys}
                    if later or rows & mine:  # a row twice in one statement is an error: this write waits
                        later.append(write)
                        continue
                    rows |= mine
                    batch.append(write)
                await self._write(batch)
                waiting = later
        finally:  # interrupted (the loop closing): no caller waits for ever
            for write in waiting:
                _settle(write, asyncio.CancelledError())

    async def _write(self, batch: Sequence[_Write]) -> None:
        if len(batch) == 1:
            write = batch[0]
            query, params = self._upsert, [write.run_id, text_array(write.keys), text_array(write.values)]
        else:
            run_ids = [write.run_id for write in batch for _ in write.keys]
            query = self._upsert_runs
            params = [text_array(run_ids), text_array(k for write in batch for k in write.keys),
                      text_array(v for write in batch for v in write.values)]

        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(query, params)

        try:
            await self.client.run(run)
        except ValueRefusedError as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            for write in batch:  # find the write PostgreSQL refuses: only it fails
                await self._write([write])
            return
        except BaseException as exc:
            _fail(batch, exc)
            return
        for write in batch:
            _settle(write, None)


class _Write:
    """One coalesced ``apply`` of updates only."""

    __slots__ = ("done", "keys", "run_id", "values")

    def __init__(self, run_id: str, keys: list[str], values: list[str]) -> None:
        self.run_id = run_id
        self.keys = keys
        self.values = values
        self.done: asyncio.Future[None] | None = None


class _Read:
    """One coalesced ``get_many``."""

    __slots__ = ("done", "keys", "run_id")

    def __init__(self, run_id: str, keys: list[str], done: asyncio.Future[dict[str, Any]]) -> None:
        self.run_id = run_id
        self.keys = keys
        self.done = done


def _fail(items: Sequence[_Write | _Read], exc: BaseException) -> None:
    """Hand a statement's failure to every caller waiting on it; re-raise a cancellation (the loop closing)."""
    for item in items:
        _settle(item, exc if isinstance(exc, Exception) else asyncio.CancelledError())
    if not isinstance(exc, Exception):
        raise exc


def _settle(item: _Write | _Read, error: BaseException | None, result: Any = None) -> None:
    done: asyncio.Future[Any] | None = item.done
    if done is None or done.done():
        return
    if error is None:
        done.set_result(result)
    else:
        done.set_exception(error)
