"""CassandraContext: a run's context as one row per (run_id, key) — no read-modify-write of a blob.

Table ``<keyspace>.<context_table_name>``::

    CREATE TABLE flowcraft_contexts (run_id text, key text, value text, PRIMARY KEY (run_id, key))

``value`` is the key's JSON (``null`` is a value, not a missing key). ``apply`` writes each key with its own
INSERT or DELETE (idempotent; concurrent writers of different keys never touch each other's rows); the
INSERTs of small values go together as unlogged batches of the run's partition (one request).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Self

from flowcraft.errors import StoreLimitError
from flowcraft.spi import ContextStore, parse_options
from flowcraft_kafka._cassandra import CassandraClient, ensure_keyspace, shared_cassandra, table
from flowcraft_kafka.options import CassandraOptions


class ValueTooLargeError(StoreLimitError):
    """A context value or run record larger than ``max_value_bytes``, or not JSON."""


def encode(value: Any, limit: int, what: str) -> str:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise ValueTooLargeError(f"{what} cannot be stored: {exc}") from None
    if size > limit:
        raise ValueTooLargeError(f"{what} is {size} bytes of JSON; the limit (max_value_bytes) is {limit}",
                                 hint="keep large data in a blob store and put its address in the context")
    return text


def check_text(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueTooLargeError(f"{what} {value!r} is not valid UTF-8 text") from None


class CassandraContext(ContextStore):
    name = "cassandra"
    Options = CassandraOptions

    def __init__(self, client: CassandraClient, *, context_table_name: str = "flowcraft_contexts",
                 max_value_bytes: int = 1_000_000, replication_factor: int = 1) -> None:
        self.client = client
        self.table = table(client.keyspace, context_table_name)
        self.max_value_bytes = max_value_bytes
        self.replication_factor = replication_factor
        self._insert = f"INSERT INTO {self.table} (run_id, key, value) VALUES (?, ?, ?)"
        self._delete = f"DELETE FROM {self.table} WHERE run_id = ? AND key = ?"
        self._select = f"SELECT key, value FROM {self.table} WHERE run_id = ?"
        self._drop = f"DELETE FROM {self.table} WHERE run_id = ?"

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = parse_options(CassandraOptions, options)
        return cls.build(parsed, shared_cassandra(parsed, shared))

    @classmethod
    def build(cls, o: CassandraOptions, client: CassandraClient) -> Self:
        return cls(client, context_table_name=o.context_table_name, max_value_bytes=o.max_value_bytes,
                   replication_factor=o.cassandra_replication_factor)

    async def setup(self) -> None:
        await ensure_keyspace(self.client, self.replication_factor)
        await self.client.ddl(f"CREATE TABLE {self.table} (run_id text, key text, value text, "
                              "PRIMARY KEY (run_id, key))")

    async def close(self) -> None:
        await self.client.close()

    async def get_all(self, run_id: str) -> dict[str, Any]:
        rows = await self.client.execute(self._select, (run_id,))
        return {row.key: json.loads(row.value) for row in rows}

    async def apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        check_text(run_id, "run id")
        writes = []
        for key, value in updates.items():
            check_text(key, "context key")
            writes.append((run_id, key, encode(value, self.max_value_bytes, f"context value {key!r}")))
        await self.client.execute_batch(self._insert, writes)  # one row per key, one partition per run
        await self.client.execute_many(self._delete, [(run_id, key) for key in deletes])

    async def delete_run(self, run_id: str) -> None:
        await self.client.execute(self._drop, (run_id,))
