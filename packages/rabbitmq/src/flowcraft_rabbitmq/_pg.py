"""The PostgreSQL side shared by the context and status stores: one psycopg_pool per DSN, retries with
backoff across a server restart, and errors translated into Flowcraft's (password masked)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Self, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from flowcraft.config import redact_text
from flowcraft.errors import ServerUnreachableError, StoreLimitError
from flowcraft_rabbitmq.options import PostgresOptions

log = logging.getLogger("flowcraft.rabbitmq.postgres")
T = TypeVar("T")

#: PostgreSQL's limit of one jsonb value (bytes of its text form, a little under 256 MiB).
MAX_JSONB_BYTES = 255 * 1024 * 1024


class ValueRefusedError(StoreLimitError):
    """PostgreSQL refused a value for good: too large, a NUL character (text and jsonb cannot hold U+0000)."""


def dumps(value: Any, what: str) -> str:
    """Compact JSON text of a value the store keeps; refuses what PostgreSQL cannot hold, in one line."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueRefusedError(f"{what} is not JSON: {exc}") from None
    if "\\u0000" in text:
        raise ValueRefusedError(f"{what} contains the character U+0000, which PostgreSQL's jsonb cannot hold")
    if len(text) > MAX_JSONB_BYTES // 4 and len(text.encode("utf-8")) > MAX_JSONB_BYTES:
        raise ValueRefusedError(f"{what} is {len(text.encode('utf-8')) / 2**20:.0f} MiB of JSON; a PostgreSQL jsonb "
                                f"value holds at most {MAX_JSONB_BYTES / 2**20:.0f} MiB",
                                hint="keep large data in a blob store and put its address in the context")
    return text


def check_text(value: str, what: str) -> str:
    """A run id or key as a text column: PostgreSQL text cannot hold NUL."""
    if "\x00" in value:
        raise ValueRefusedError(f"{what} {value!r} contains a NUL character, which PostgreSQL text cannot hold")
    return value


def text_array(values: Iterable[str]) -> str:
    """A ``text[]`` literal (``{"a","b"}``) for a ``%s::text[]`` parameter: psycopg's list dumper quotes each
    element with a regular expression, which costs more than the statement's own work on the hot path."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def float_array(values: Iterable[float]) -> str:
    """A ``float8[]`` literal (``{1.5,2.25}``); ``repr`` is the shortest text that reads back as the same
    double, so a timestamp compared later (a create's retry) matches exactly."""
    return "{" + ",".join(repr(float(v)) for v in values) + "}"


class PgClient:
    """A psycopg ``AsyncConnectionPool`` (autocommit connections) opened on first use, with retries.

    ``run(fn)`` runs ``fn(connection)``; when the server is restarting (a connection broke, the pool could not
    connect) it retries with exponential backoff for ``reconnect_seconds``. Every statement this package
    sends is idempotent or a compare-and-set, so a retry after an unknown outcome is safe (README "Limits").
    Before the server was ever reached, a failure is reported at once as one line naming it.
    """

    def __init__(self, dsn: str | None = None, *, pool: AsyncConnectionPool[Any] | None = None, min_size: int = 1,
                 max_size: int = 10, connect_timeout: float = 10.0, reconnect_seconds: float = 60.0) -> None:
        if pool is None and dsn is None:
            raise ValueError("PgClient needs a dsn or a pool")
        self.dsn = dsn
        self._owned = pool is None
        self._pool = pool
        self._min_size = min_size
        self._max_size = max_size
        self.connect_timeout = connect_timeout
        self.reconnect_seconds = reconnect_seconds
        self._opening: asyncio.Lock | None = None
        self._reached = False

    def __repr__(self) -> str:
        return f"PgClient({redact_text(self.dsn or '<pool>')!r})"

    @classmethod
    def shared(cls, shared: dict[str, Any], options: PostgresOptions) -> PgClient:
        """One client per DSN among the components built from one configuration."""
        key = f"flowcraft_rabbitmq.postgres:{options.postgres_dsn}"
        client = shared.get(key)
        if not isinstance(client, PgClient):
            client = shared[key] = cls.for_options(options)
        return client

    @classmethod
    def for_options(cls, options: PostgresOptions) -> PgClient:
        return cls(options.postgres_dsn, min_size=options.pool_min_size, max_size=options.pool_max_size,
                   connect_timeout=options.connect_timeout, reconnect_seconds=options.reconnect_seconds)

    async def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is not None:
            if not self._owned or not self._pool.closed:
                return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None or (self._owned and self._pool.closed and not self._reached):
                assert self.dsn is not None
                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    self.dsn, min_size=self._min_size, max_size=self._max_size, open=False,
                    kwargs={"autocommit": True, "connect_timeout": max(1, round(self.connect_timeout))},
                    timeout=self.connect_timeout + 5, reconnect_timeout=max(self.reconnect_seconds, 1.0),
                    name="flowcraft-rabbitmq")
                try:
                    await pool.open(wait=self._min_size > 0, timeout=self.connect_timeout)
                except PoolTimeout:
                    error = await _first_error(self.dsn, self.connect_timeout)
                    await pool.close()
                    raise ServerUnreachableError(
                        f"cannot connect to PostgreSQL at {redact_text(self.dsn)}: {error}",
                        hint="check that the server runs and is reachable, the user and password, and the "
                             "postgres_dsn option (FLOWCRAFT_OPT_POSTGRES_DSN or [options] postgres_dsn)") from None
                self._pool = pool
            return self._pool

    async def run(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        deadline: float | None = None
        attempt = 0
        while True:
            pool = await self.pool()
            try:
                async with pool.connection() as conn:
                    result = await fn(conn)
                self._reached = True
                return result
            except psycopg.DataError as exc:
                raise ValueRefusedError(f"PostgreSQL refused a value: {_one_line(exc)}") from None
            except psycopg.errors.ProgramLimitExceeded as exc:
                raise ValueRefusedError(f"PostgreSQL refused a value: {_one_line(exc)}") from None
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.InsufficientPrivilege):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.reconnect_seconds
                if now >= deadline:
                    raise ServerUnreachableError(
                        f"PostgreSQL at {redact_text(self.dsn or '<pool>')} unreachable for "
                        f"{self.reconnect_seconds:g}s: {_one_line(exc)}") from None
                delay = min(2.0, 0.05 * 2.0 ** attempt) * (0.5 + random.random() / 2)
                attempt += 1
                if attempt == 1:
                    log.warning("PostgreSQL connection failed (%s); retrying", _one_line(exc))
                await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._owned and self._pool is not None:
            await self._pool.close()


async def _first_error(dsn: str, timeout: float) -> str:
    """Why a direct connection fails (the pool only says it timed out), as one masked line."""
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=max(1, round(timeout)))
    except Exception as exc:  # what the user must see: host down, password wrong, database missing
        return _one_line(exc)
    await conn.close()
    return "timed out"


def _one_line(exc: BaseException) -> str:
    return redact_text(" ".join(str(exc).split()) or type(exc).__name__)


def table(schema: str | None, name: str) -> sql.Composable:
    """A table name as a quoted identifier, schema-qualified when a schema is configured."""
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def index_name(table_name: str, suffix: str) -> sql.Identifier:
    return sql.Identifier(f"{table_name[:63 - len(suffix) - 1]}_{suffix}")


async def columns(conn: psycopg.AsyncConnection[Any], schema: str | None, name: str) -> Mapping[str, str]:
    """The table's columns and their types (empty when it does not exist)."""
    cursor = await conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        [f'"{schema}"."{name}"' if schema else f'"{name}"'])
    return {row[0]: row[1] for row in await cursor.fetchall()}


class PgTableStore:
    """What both PostgreSQL stores share: the client, their one table (in ``schema``, when given), how they are
    built from options (``table_option`` names the option that holds the table name) and closing."""

    table_option: ClassVar[str]

    def __init__(self, client: PgClient | Any, table_name: str, *, schema: str | None = None) -> None:
        self.client = client if isinstance(client, PgClient) else PgClient(pool=client)
        self.table_name = table_name
        self.schema = schema
        self._table = table(schema, table_name)

    @property
    def table(self) -> sql.Composable:
        """The store's table, quoted (with its schema, when given), for statements of another store."""
        return self._table

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = PostgresOptions.parse(options)
        return cls.build(parsed, PgClient.shared(shared, parsed))

    @classmethod
    def build(cls, options: PostgresOptions, client: PgClient) -> Self:
        return cls(client, getattr(options, cls.table_option), schema=options.postgres_schema)

    async def create_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The schema the table lives in, if one is configured (idempotent)."""
        if self.schema:
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))

    async def close(self) -> None:
        await self.client.close()
