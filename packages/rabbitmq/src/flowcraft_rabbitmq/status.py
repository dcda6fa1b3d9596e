"""PostgreSQL status store: one row per run; transitions are one compare-and-set statement.

Table ``flowcraft_statuses`` (option ``status_table``)::

    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, blueprint_id TEXT NOT NULL, status_data JSONB NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL      -- epoch seconds
    INDEX <table>_status_updated (status, updated_at, run_id)                         -- the reconciler's
    INDEX <table>_blueprint_updated (blueprint_id, updated_at, run_id)                -- listings by blueprint

``status_data`` holds the rest of the run record (version, blueprint hash, input, errors, awaiting, parent).
A transition is ``UPDATE ... SET status = %s, updated_at = %s, status_data = status_data || %s
WHERE run_id = %s AND status = ANY(%s) RETURNING ...``: of concurrent callers exactly one wins.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from flowcraft.errors import ConfigError
from flowcraft.spi import ACTIVE_STATUSES, RunRecord, StatusStore
from flowcraft_rabbitmq._pg import (
    PgClient,
    PgTableStore,
    ValueRefusedError,
    check_text,
    columns,
    dumps,
    float_array,
    index_name,
    text_array,
)
from flowcraft_rabbitmq.options import PostgresOptions

if TYPE_CHECKING:
    from flowcraft_rabbitmq.context import PostgresContext

#: RunRecord fields kept in ``status_data`` (status, blueprint_id and the times have their own columns).
DATA_FIELDS = ("version", "blueprint_hash", "input", "errors", "awaiting", "parent")
_COLUMNS = "run_id, status, blueprint_id, status_data, created_at, updated_at"


#: a status row: (run_id, status, blueprint_id, status_data JSON, created_at, updated_at)
_Row = tuple[str, str, str, str, float, float]


def record_row(record: RunRecord) -> _Row:
    """The row of a record: (run_id, status, blueprint_id, status_data JSON, created_at, updated_at)."""
    data = {name: getattr(record, name) for name in DATA_FIELDS}
    return (check_text(record.run_id, "run id"), record.status, check_text(record.blueprint_id, "blueprint id"),
            dumps(data, f"run record of {record.run_id!r}"), record.created_at, record.updated_at)


def row_record(row: Sequence[Any]) -> RunRecord:
    """A record from a row as ``_COLUMNS`` selects it (status_data decoded by psycopg)."""
    run_id, status, blueprint_id, data, created_at, updated_at = row
    data = data if isinstance(data, dict) else {}
    return RunRecord.from_dict({**data, "run_id": run_id, "status": status, "blueprint_id": blueprint_id,
                                "created_at": created_at, "updated_at": updated_at})


def _resolve(future: asyncio.Future[bool], outcome: bool | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def change_data(changes: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """A transition's changes as (new blueprint_id or None, the status_data keys to merge)."""
    blueprint_id: str | None = None
    data: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "blueprint_id":
            blueprint_id = str(value)
        elif name in DATA_FIELDS:
            data[name] = value
        elif name == "created_at":
            continue
        else:
            raise ConfigError(f"run records have no field {name!r} that a transition may change")
    return blueprint_id, data


def encode_cursor(updated_at: float, run_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([updated_at, run_id]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        updated_at, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(updated_at), str(run_id)
    except (ValueError, TypeError):
        raise ConfigError("invalid cursor for listing runs",
                          hint="pass the cursor the previous page returned") from None


class PostgresStatusStore(PgTableStore, StatusStore):
    """Run records in PostgreSQL (see the module docstring)."""

    name = "postgres"
    Options = PostgresOptions
    table_option = "status_table"

    def __init__(self, client: PgClient | Any, table_name: str = "flowcraft_statuses", *,
                 schema: str | None = None) -> None:
        super().__init__(client, table_name, schema=schema)
        t = self._table
        cols = sql.SQL(_COLUMNS)
        self._create = sql.SQL(
            "INSERT INTO {} (run_id, status, blueprint_id, status_data, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s::jsonb, %s, %s) ON CONFLICT (run_id) DO NOTHING").format(t)
        self._create_many = sql.SQL(
            "INSERT INTO {} (run_id, status, blueprint_id, status_data, created_at, updated_at) "
            "SELECT r, s, b, d::jsonb, c, u FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
            "%s::float8[], %s::float8[]) AS x(r, s, b, d, c, u) ON CONFLICT (run_id) DO NOTHING RETURNING run_id"
        ).format(t)
        #: creates made in one event-loop iteration, inserted by one statement (see ``create``)
        self._creating: list[tuple[_Row, asyncio.Future[bool]]] = []
        self._create_flushes: set[asyncio.Task[None]] = set()
        #: reads made in one event-loop iteration, answered by one statement (see ``get``)
        self._reading: list[tuple[str, asyncio.Future[RunRecord | None]]] = []
        self._reading_loop: asyncio.AbstractEventLoop | None = None
        self._read_flushes: set[asyncio.Task[None]] = set()
        self._get = sql.SQL("SELECT {} FROM {} WHERE run_id = %s").format(cols, t)
        self._get_many = sql.SQL("SELECT {} FROM {} WHERE run_id = ANY(%s::text[])").format(cols, t)
        self._delete = sql.SQL("DELETE FROM {} WHERE run_id = %s").format(t)
        self._transition = sql.SQL(
            "UPDATE {} SET status = %s, updated_at = %s, blueprint_id = COALESCE(%s, blueprint_id), "
            "status_data = status_data || %s::jsonb WHERE run_id = %s AND status = ANY(%s::text[]) RETURNING {}"
        ).format(t, cols)
        self._stalled = sql.SQL(
            "SELECT {} FROM {} WHERE status = ANY(%s) AND updated_at < %s ORDER BY updated_at, run_id LIMIT %s"
        ).format(cols, t)
        self._stalled_after = sql.SQL(
            "SELECT {} FROM {} WHERE status = ANY(%s) AND updated_at < %s AND (updated_at, run_id) > (%s, %s) "
            "ORDER BY updated_at, run_id LIMIT %s").format(cols, t)
        #: the transition that also upserts context values, when ``write_context_with`` named a context table
        self._transition_with_context_sql: sql.Composed | None = None

    def write_context_with(self, context: PostgresContext) -> None:
        """Let ``transition_with_context`` write into ``context``'s table, in the transition's statement
        (``writes_context``); only for a context store on this store's client (the preset's factory wires it)."""
        if context.client is not self.client:
            raise ValueError("write_context_with needs a PostgresContext on this status store's client")
        self._transition_with_context_sql = sql.SQL(
            "WITH won AS (UPDATE {t} SET status = %s, updated_at = %s, blueprint_id = COALESCE(%s, blueprint_id), "
            "status_data = status_data || %s::jsonb WHERE run_id = %s AND status = ANY(%s::text[]) RETURNING {cols}), "
            "written AS (INSERT INTO {c} (run_id, key, value) SELECT won.run_id, k, v::jsonb FROM won, "
            "unnest(%s::text[], %s::text[]) AS u(k, v) ON CONFLICT (run_id, key) DO UPDATE SET value = EXCLUDED.value) "
            "SELECT * FROM won").format(t=self._table, cols=sql.SQL(_COLUMNS), c=context.table)

    @property
    def writes_context(self) -> bool:
        """True once ``write_context_with`` gave it the backend's context table."""
        return self._transition_with_context_sql is not None


    async def setup(self) -> None:
        t = self._table

        async def create(conn: psycopg.AsyncConnection[Any]) -> None:
            await self.create_schema(conn)
            await conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (run_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
                "blueprint_id TEXT NOT NULL, status_data JSONB NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
                "updated_at DOUBLE PRECISION NOT NULL)").format(t))
            found = await columns(conn, self.schema, self.table_name)
            wanted = {"run_id", "status", "blueprint_id", "status_data", "created_at", "updated_at"}
            if not wanted <= set(found) or found.get("updated_at") != "double precision":
                raise ConfigError(
                    f"table {self.table_name!r} exists with other columns "
                    f"({', '.join(f'{k} {v}' for k, v in found.items())}): it is not a Flowcraft for Python "
                    "status table (the TypeScript seed's has no status column)",
                    hint="set the status_table option to a new table name")
            await conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (status, updated_at, run_id)").format(
                index_name(self.table_name, "status_updated"), t))
            await conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (blueprint_id, updated_at, run_id)").format(
                index_name(self.table_name, "blueprint_updated"), t))

        await self.client.run(create)

    # ------------------------------------------------------------------------------------------
    async def create(self, record: RunRecord) -> bool:
        """Insert the record unless the run exists. Creates made in the same event-loop iteration (a client
        starting many runs at once) go in one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING
        RETURNING run_id`` — each caller learns from the returned ids whether its row went in; a run id twice
        in the batch waits for the next statement, so exactly one of them wins."""
        now = time.time()
        record.created_at = record.created_at or now
        record.updated_at = now
        row = record_row(record)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self._creating:  # the first create of this iteration: flush on the next one, with all that joined
            task = asyncio.get_running_loop().create_task(self._flush_creates())
            self._create_flushes.add(task)
            task.add_done_callback(self._create_flushes.discard)
        self._creating.append((row, future))
        return await future

    async def _flush_creates(self) -> None:
        waiting, self._creating = self._creating, []
        try:
            while waiting:
                batch: dict[str, tuple[_Row, asyncio.Future[bool]]] = {}
                later: list[tuple[_Row, asyncio.Future[bool]]] = []
                for item in waiting:
                    if item[0][0] in batch:
                        later.append(item)
                    else:
                        batch[item[0][0]] = item
                try:
                    won = await (self._insert_one(next(iter(batch.values()))[0]) if len(batch) == 1
                                 else self._insert_many([row for row, _ in batch.values()]))
                except ValueRefusedError as exc:
                    if len(batch) == 1:
                        _resolve(next(iter(batch.values()))[1], exc)
                    else:  # find the row PostgreSQL refuses: only its create fails
                        for row, future in batch.values():
                            try:
                                _resolve(future, await self._insert_one(row))
                            except Exception as error:
                                _resolve(future, error)
                    waiting = later
                    continue
                except Exception as exc:
                    for _, future in batch.values():
                        _resolve(future, exc)
                    waiting = later
                    continue
                for run_id, (_, future) in batch.items():
                    _resolve(future, run_id in won if isinstance(won, set) else won)
                waiting = later
        finally:  # interrupted (the loop closing): no caller waits for ever
            for _, future in waiting:
                _resolve(future, asyncio.CancelledError())

    async def _insert_one(self, row: _Row) -> bool:
        attempts = 0

        async def insert(conn: psycopg.AsyncConnection[Any]) -> bool:
            nonlocal attempts
            attempts += 1
            if (await conn.execute(self._create, row)).rowcount == 1:
                return True
            # a retry after a lost reply (the server restarted) finds the row its first attempt inserted
            return attempts > 1 and await self._is_ours(conn, row[0], row[5], row[1])

        return await self.client.run(insert)

    async def _insert_many(self, rows: Sequence[_Row]) -> set[str]:
        """The run ids of ``rows`` (distinct) that this call inserted."""
        params = [text_array(row[0] for row in rows), text_array(row[1] for row in rows),
                  text_array(row[2] for row in rows), text_array(row[3] for row in rows),
                  float_array(row[4] for row in rows), float_array(row[5] for row in rows)]
        attempts = 0

        async def insert(conn: psycopg.AsyncConnection[Any]) -> set[str]:
            nonlocal attempts
            attempts += 1
            won = {row[0] for row in await (await conn.execute(self._create_many, params)).fetchall()}
            missing = [row for row in rows if row[0] not in won]
            if attempts > 1 and missing:  # a retry after a lost reply: the rows the first attempt inserted
                found = await (await conn.execute(self._get_many, [text_array(row[0] for row in missing)])).fetchall()
                mine = {(row[0], row[1], row[5]) for row in missing}
                won |= {row[0] for row in found if (row[0], row[1], row[5]) in mine}
            return won

        return await self.client.run(insert)

    async def _is_ours(self, conn: psycopg.AsyncConnection[Any], run_id: str, updated_at: float,
                       status: str) -> bool:
        found = await (await conn.execute(self._get, [run_id])).fetchone()
        return found is not None and found[5] == updated_at and found[1] == status

    async def get(self, run_id: str) -> RunRecord | None:
        """The run's record. Reads made in one event-loop iteration (the jobs a commit handed over starting
        together, heartbeats) are one statement, ``run_id = ANY(...)``; each caller gets a record of its own."""
        if "\x00" in run_id:
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RunRecord | None] = loop.create_future()
        if not self._reading or self._reading_loop is not loop:  # the first read of this iteration: flush on
            self._reading, self._reading_loop = [], loop          # the next one, with all that joined
            task = loop.create_task(self._flush_reads())
            self._read_flushes.add(task)
            task.add_done_callback(self._read_flushes.discard)
        self._reading.append((run_id, future))
        return await future

    async def _flush_reads(self) -> None:
        reads, self._reading = self._reading, []
        wanted = list(dict.fromkeys(run_id for run_id, _ in reads))
        try:
            if len(wanted) == 1:
                async def read_one(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
                    row = await (await conn.execute(self._get, wanted)).fetchone()
                    return [] if row is None else [row]

                rows = await self.client.run(read_one)
            else:
                async def read_many(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
                    return await (await conn.execute(self._get_many, [text_array(wanted)])).fetchall()

                rows = await self.client.run(read_many)
        except BaseException as exc:  # every caller gets the failure; a cancellation (the loop closing) goes on
            error = exc if isinstance(exc, Exception) else asyncio.CancelledError()
            for _, future in reads:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        found = {row[0]: row for row in rows}
        for run_id, future in reads:
            if not future.done():
                row = found.get(run_id)
                future.set_result(None if row is None else row_record(row))

    async def get_many(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """The records of several runs in one statement (missing runs are left out): the queue's prefetch
        reads every delivery of one receive this way."""
        wanted = [run_id for run_id in dict.fromkeys(run_ids) if "\x00" not in run_id]
        if not wanted:
            return {}
        if len(wanted) == 1:
            record = await self.get(wanted[0])
            return {} if record is None else {record.run_id: record}

        async def read(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
            return await (await conn.execute(self._get_many, [text_array(wanted)])).fetchall()

        return {row[0]: row_record(row) for row in await self.client.run(read)}

    async def delete(self, run_id: str) -> bool:
        if "\x00" in run_id:
            return False

        async def delete(conn: psycopg.AsyncConnection[Any]) -> int:
            return (await conn.execute(self._delete, [run_id])).rowcount

        return bool(await self.client.run(delete))

    async def transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        return await self._compare_and_set(run_id, from_statuses, to_status, changes, None)

    async def _transition_writing_context(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any],
        context: Mapping[str, Any],
    ) -> RunRecord | None:
        return await self._compare_and_set(run_id, from_statuses, to_status, changes, context)

    async def _compare_and_set(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any],
        context: Mapping[str, Any] | None,
    ) -> RunRecord | None:
        """The transition; with ``context``, one statement that also upserts those context values if it wins."""
        if not from_statuses or "\x00" in run_id:
            return None
        blueprint_id, data = change_data(changes)
        now = time.time()
        params: list[Any] = [to_status, now, blueprint_id, dumps(data, f"run record of {run_id!r}"), run_id,
                             text_array(dict.fromkeys(from_statuses))]
        query = self._transition
        if context is not None and self._transition_with_context_sql is not None:
            query = self._transition_with_context_sql
            params += [text_array(check_text(key, "context key") for key in context),
                       text_array(dumps(value, f"context value {key!r} of run {run_id!r}")
                                  for key, value in context.items())]

        attempts = 0

        async def update(conn: psycopg.AsyncConnection[Any]) -> Any:
            nonlocal attempts
            attempts += 1
            row = await (await conn.execute(query, params)).fetchone()
            if row is None and attempts > 1 and await self._is_ours(conn, run_id, now, to_status):
                # the first attempt won but its reply was lost (the server restarted): it is still this call's win
                row = await (await conn.execute(self._get, [run_id])).fetchone()
            return row

        row = await self.client.run(update)
        return None if row is None else row_record(row)

    async def stalled(
        self, older_than: float, limit: int = 100, *, after: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        statuses = sorted(ACTIVE_STATUSES)
        if after is None:
            query, params = self._stalled, [statuses, older_than, max(1, limit)]
        else:
            query, params = self._stalled_after, [statuses, older_than, after[0], after[1], max(1, limit)]

        async def read(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
            return await (await conn.execute(query, params)).fetchall()

        return [row_record(row) for row in await self.client.run(read)]

    async def list(
        self, status: str | None = None, blueprint_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[RunRecord], str | None]:
        """Most recently updated first, keyset-paged on ``(updated_at, run_id)`` (the cursor is the last row's)."""
        limit = max(1, limit)
        where: list[sql.Composable] = []
        params: list[Any] = []
        if status is not None:
            where.append(sql.SQL("status = %s"))
            params.append(status)
        if blueprint_id is not None:
            where.append(sql.SQL("blueprint_id = %s"))
            params.append(blueprint_id)
        if cursor is not None:
            where.append(sql.SQL("(updated_at, run_id) < (%s, %s)"))
            params += list(decode_cursor(cursor))
        clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
        query = sql.SQL("SELECT {} FROM {}{} ORDER BY updated_at DESC, run_id DESC LIMIT %s").format(
            sql.SQL(_COLUMNS), self._table, clause)
        params.append(limit + 1)

        async def read(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
            return await (await conn.execute(query, params)).fetchall()

        rows = await self.client.run(read)
        page = [row_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        return page, encode_cursor(page[-1].updated_at, page[-1].run_id) if more and page else None
