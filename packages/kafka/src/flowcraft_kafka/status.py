"""CassandraStatusStore: run records in Cassandra, compare-and-set decisions in Redis (no LWT needed).

Cassandra 1.2 has no lightweight transactions, and a status decision (running -> completed, exactly one
winner) needs compare-and-set. So each record has two homes:

* Redis hash ``<key_prefix>cstatus:<run_id>`` (fields ``status``, ``version``, ``record``) is where every
  decision is made: ``create`` is a Lua insert-if-absent, ``transition`` a Lua compare-and-set on the status
  and an optimistic version (so concurrent ``running -> running`` changes are never lost). It expires
  ``state_ttl_seconds`` after its last write, like the coordination data of the run.
* Cassandra keeps the durable copy, written after each decision::

      CREATE TABLE flowcraft_statuses (run_id text PRIMARY KEY, status text, status_data text,
                                       blueprint_id text, created_at double, updated_at double)
      CREATE TABLE flowcraft_statuses_by_status (status text, bucket int, updated_at double, run_id text,
                                                 PRIMARY KEY ((status, bucket), updated_at, run_id))
      CREATE TABLE flowcraft_statuses_by_created (bucket int, created_at double, run_id text,
                                                  PRIMARY KEY (bucket, created_at, run_id))
          WITH CLUSTERING ORDER BY (created_at DESC, run_id DESC)

  ``status_data`` is the record's JSON. ``_by_status`` holds one row per *active* (running/awaiting) run,
  bucketed by a hash of the run id: the reconciler's ``stalled`` reads ``status_buckets`` partitions per
  active status by clustering range (no ``ALLOW FILTERING``, no scan). ``_by_created`` serves ``list``.

``get`` reads Redis (one HGET) and falls back to Cassandra when the hash has expired. An active run's lookup
row is written *before* the decision and the previous one dropped after it, so whatever moment a process
dies at, every active run has a lookup row the reconciler finds. A process that dies between the Redis
decision and the Cassandra writes leaves the Cassandra copy behind: ``stalled`` checks every lookup row
against the authoritative record, drops stale rows and rewrites the record's, and the next transition
rewrites the row.
"""

from __future__ import annotations

import asyncio
import builtins
import heapq
import json
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Self

from redis.asyncio import Redis

from flowcraft.spi import ACTIVE_STATUSES, RunRecord, StatusStore, check_record_changes, parse_options
from flowcraft_kafka._cassandra import CassandraClient, ensure_keyspace, shared_cassandra, table
from flowcraft_kafka.context import check_text, encode
from flowcraft_kafka.options import StatusOptions
from flowcraft_redis import batcher_for, make_client, shared_client

#: rows read per lookup partition per query (a constant in the statement: Cassandra 1.2 cannot bind LIMIT)
PAGE = 500

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'version', '1', 'record', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

_TRANSITION = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'version')
if not cur[1] then return -1 end
if cur[2] ~= ARGV[1] then return -2 end
local ok = false
for i = 1, tonumber(ARGV[5]) do if ARGV[5 + i] == cur[1] then ok = true end end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'version', tostring(tonumber(cur[2]) + 1), 'record', ARGV[4])
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""



class CassandraStatusStore(StatusStore):
    name = "cassandra"
    Options = StatusOptions

    def __init__(self, client: CassandraClient, redis: Redis, *, status_table_name: str = "flowcraft_statuses",
                 key_prefix: str = "flowcraft:", state_ttl_seconds: float = 30 * 24 * 3600,
                 status_buckets: int = 8, max_value_bytes: int = 1_000_000, replication_factor: int = 1,
                 owns_redis: bool = True) -> None:
        self.client = client
        self.redis = redis
        self.key_prefix = key_prefix
        self.state_ttl_seconds = int(state_ttl_seconds)
        self.buckets = status_buckets
        self.max_value_bytes = max_value_bytes
        self.replication_factor = replication_factor
        self.owns_redis = owns_redis
        self.table_name = status_table_name
        ks = client.keyspace
        self.table = table(ks, status_table_name)
        self.by_status = table(ks, status_table_name + "_by_status")
        self.by_created = table(ks, status_table_name + "_by_created")
        # every Redis call goes through the client's auto-pipeline (shared with the coordination store): the
        # calls of one event-loop iteration are one round trip, on a bounded number of connections
        self.batcher = batcher_for(redis)
        self._create_sha = self.batcher.script(_CREATE)
        self._transition_sha = self.batcher.script(_TRANSITION)
        t, s, c = self.table, self.by_status, self.by_created
        self._q_put = (f"INSERT INTO {t} (run_id, status, status_data, blueprint_id, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)")
        self._q_get = f"SELECT status_data FROM {t} WHERE run_id = ?"
        self._q_delete = f"DELETE FROM {t} WHERE run_id = ?"
        self._q_lookup_put = f"INSERT INTO {s} (status, bucket, updated_at, run_id) VALUES (?, ?, ?, ?)"
        self._q_lookup_del = f"DELETE FROM {s} WHERE status = ? AND bucket = ? AND updated_at = ? AND run_id = ?"
        self._q_stalled = (f"SELECT run_id, updated_at FROM {s} WHERE status = ? AND bucket = ? AND updated_at >= ? "
                           f"AND updated_at < ? LIMIT {PAGE}")
        self._q_created_put = f"INSERT INTO {c} (bucket, created_at, run_id) VALUES (?, ?, ?)"
        self._q_created_del = f"DELETE FROM {c} WHERE bucket = ? AND created_at = ? AND run_id = ?"
        self._q_created = (f"SELECT run_id, created_at FROM {c} WHERE bucket = ? AND created_at <= ? "
                           f"LIMIT {PAGE}")

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = parse_options(StatusOptions, options)
        return cls.build(parsed, shared_cassandra(parsed, shared), shared_client(options, shared), owns_redis=False)

    @classmethod
    def build(cls, o: StatusOptions, client: CassandraClient, redis: Redis | None = None, *,
              owns_redis: bool = True) -> Self:
        return cls(client, redis if redis is not None else make_client(o.redis_url),
                   status_table_name=o.status_table_name, key_prefix=o.key_prefix,
                   state_ttl_seconds=o.state_ttl_seconds, status_buckets=o.status_buckets,
                   max_value_bytes=o.max_value_bytes, replication_factor=o.cassandra_replication_factor,
                   owns_redis=owns_redis)

    async def setup(self) -> None:
        await ensure_keyspace(self.client, self.replication_factor)
        await self.client.ddl(f"CREATE TABLE {self.table} (run_id text PRIMARY KEY, status text, status_data text, "
                              "blueprint_id text, created_at double, updated_at double)")
        await self.client.ddl(f"CREATE TABLE {self.by_status} (status text, bucket int, updated_at double, "
                              "run_id text, PRIMARY KEY ((status, bucket), updated_at, run_id))")
        await self.client.ddl(f"CREATE TABLE {self.by_created} (bucket int, created_at double, run_id text, "
                              "PRIMARY KEY (bucket, created_at, run_id)) "
                              "WITH CLUSTERING ORDER BY (created_at DESC, run_id DESC)")
        await self.redis.ping()

    async def close(self) -> None:
        await self.client.close()
        if self.owns_redis:
            await self.redis.aclose()

    # ------------------------------------------------------------------------------------------ helpers
    def _key(self, run_id: str) -> str:
        return f"{self.key_prefix}cstatus:{run_id}"

    async def _create(self, run_id: str, status: str, data: str) -> Any:
        """The insert-if-absent of the Redis hash (1 when inserted)."""
        return await self.batcher.call("EVALSHA", self._create_sha, 1, self._key(run_id), status, data,
                                       self.state_ttl_seconds)

    def bucket(self, run_id: str) -> int:
        return zlib.crc32(run_id.encode("utf-8", "surrogatepass")) % self.buckets

    def _encode(self, record: RunRecord) -> str:
        return encode(record.to_dict(), self.max_value_bytes, f"run record {record.run_id!r}")

    async def _durable(self, run_id: str) -> RunRecord | None:
        rows = await self.client.execute(self._q_get, (run_id,))
        return RunRecord.from_dict(json.loads(rows[0].status_data)) if rows and rows[0].status_data else None

    async def _mirror(self, record: RunRecord, data: str, old: RunRecord | None, *, row_written: bool = False) -> None:
        """Write the decided record to Cassandra: the row, and the lookup row of an active run (unless
        ``row_written``: put before the decision), then drop the previous lookup row."""
        bucket = self.bucket(record.run_id)
        writes = [self.client.execute(self._q_put, (record.run_id, record.status, data, record.blueprint_id,
                                                    record.created_at, record.updated_at))]
        if record.status in ACTIVE_STATUSES and not row_written:
            writes.append(self._lookup_put(record))
        await asyncio.gather(*writes)
        if old is not None and old.status in ACTIVE_STATUSES and (
                old.status != record.status or old.updated_at != record.updated_at):
            await self.client.execute(self._q_lookup_del, (old.status, bucket, old.updated_at, record.run_id))

    def _lookup_put(self, record: RunRecord) -> Any:
        return self.client.execute(self._q_lookup_put, (record.status, self.bucket(record.run_id), record.updated_at,
                                                        record.run_id))

    async def _lookup_drop(self, record: RunRecord) -> None:
        await self.client.execute(self._q_lookup_del, (record.status, self.bucket(record.run_id), record.updated_at,
                                                       record.run_id))

    async def _current(self, run_id: str) -> tuple[RunRecord, str] | None:
        """The authoritative record and its version (from Redis; seeded from Cassandra when it expired)."""
        for _ in range(2):
            raw = await self.batcher.call("HMGET", self._key(run_id), "record", "version")
            if raw[0] is not None:
                return RunRecord.from_dict(json.loads(raw[0])), _text(raw[1])
            durable = await self._durable(run_id)
            if durable is None:
                return None
            await self._create(run_id, durable.status, self._encode(durable))
        return None

    # ------------------------------------------------------------------------------------------ StatusStore
    async def create(self, record: RunRecord) -> bool:
        check_text(record.run_id, "run id")
        if await self._durable(record.run_id) is not None:
            return False
        now = time.time()
        stored = record.copy()
        stored.created_at = record.created_at or now
        stored.updated_at = now
        data = self._encode(stored)
        # the lookup row goes first: an active run always has one, whatever moment a process dies at (a row
        # without a decision behind it is found stale and dropped by ``stalled``)
        active = stored.status in ACTIVE_STATUSES
        if active:
            await self._lookup_put(stored)
        created = await self._create(record.run_id, stored.status, data)
        if not created:
            if active:
                await self._lookup_drop(stored)
            return False
        await asyncio.gather(
            self._mirror(stored, data, None, row_written=active),
            self.client.execute(self._q_created_put, (self.bucket(record.run_id), stored.created_at, record.run_id)))
        record.created_at, record.updated_at = stored.created_at, stored.updated_at
        return True

    async def get(self, run_id: str) -> RunRecord | None:
        raw = await self.batcher.call("HGET", self._key(run_id), "record")
        if raw is not None:
            return RunRecord.from_dict(json.loads(raw))
        return await self._durable(run_id)

    async def get_many(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """The records of ``run_ids`` that exist (one Redis pipeline; Cassandra for those expired there)."""
        unique = list(dict.fromkeys(run_ids))
        return {run_id: record for run_id, record in zip(unique, await self._records(unique), strict=True)
                if record is not None}

    async def delete(self, run_id: str) -> bool:
        """The Cassandra rows (record, lookup row of an active run, ``_by_created`` row), then the Redis hash."""
        current = await self._current(run_id)
        if current is None:
            return False
        record, bucket = current[0], self.bucket(run_id)
        writes = [self.client.execute(self._q_delete, (run_id,)),
                  self.client.execute(self._q_created_del, (bucket, record.created_at, run_id))]
        if record.status in ACTIVE_STATUSES:
            writes.append(self.client.execute(self._q_lookup_del, (record.status, bucket, record.updated_at, run_id)))
        await asyncio.gather(*writes)
        await self.batcher.call("DEL", self._key(run_id))
        return True

    async def transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        check_record_changes(changes)
        while True:
            current = await self._current(run_id)
            if current is None:
                return None
            old, version = current
            if old.status not in from_statuses:
                return None
            new = RunRecord.from_dict({**old.to_dict(), **changes, "status": to_status,
                                       "updated_at": max(time.time(), old.updated_at)})
            data = self._encode(new)
            # an active run's new lookup row goes in before the decision (see ``create``)
            early = new.status in ACTIVE_STATUSES and (new.status, new.updated_at) != (old.status, old.updated_at)
            if early:
                await self._lookup_put(new)
            outcome = await self.batcher.call("EVALSHA", self._transition_sha, 1, self._key(run_id), version,
                                              self.state_ttl_seconds, to_status, data, len(from_statuses),
                                              *from_statuses)
            if outcome == 1:
                await self._mirror(new, data, old, row_written=early)
                return new
            if early:
                await self._lookup_drop(new)
            if outcome == 0:
                return None
            # -1 (expired meanwhile) or -2 (another change won the version): read again

    async def _records(self, run_ids: Sequence[str]) -> builtins.list[RunRecord | None]:
        if not run_ids:
            return []
        raws = await self.batcher.call_many(*(("HGET", self._key(run_id), "record") for run_id in run_ids))
        out: builtins.list[RunRecord | None] = [RunRecord.from_dict(json.loads(raw)) if raw is not None else None
                                                for raw in raws]
        missing = [i for i, r in enumerate(out) if r is None]
        if missing:
            durable = await asyncio.gather(*(self._durable(run_ids[i]) for i in missing))
            for i, record in zip(missing, durable, strict=True):
                out[i] = record
        return out

    async def stalled(
        self, older_than: float, limit: int = 100, *, after: tuple[float, str] | None = None
    ) -> builtins.list[RunRecord]:
        low = after[0] if after is not None else 0.0
        queries = [(status, bucket) for status in sorted(ACTIVE_STATUSES) for bucket in range(self.buckets)]
        pages = await asyncio.gather(*(self.client.execute(self._q_stalled, (status, bucket, low, older_than))
                                       for status, bucket in queries))
        rows: builtins.list[tuple[float, str, str]] = []
        cutoff: tuple[float, str] | None = None  # a full page may hide rows past its last one
        for (status, _), page in zip(queries, pages, strict=True):
            for row in page:
                rows.append((row.updated_at, row.run_id, status))
            if len(page) >= PAGE:
                last = (page[-1].updated_at, page[-1].run_id)
                cutoff = last if cutoff is None or last < cutoff else cutoff
        rows = sorted(r for r in rows if (after is None or (r[0], r[1]) > after)
                      and (cutoff is None or (r[0], r[1]) <= cutoff))
        found: builtins.list[RunRecord] = []
        for start in range(0, len(rows), 100):
            chunk = rows[start:start + 100]
            records = await self._records([run_id for _, run_id, _ in chunk])
            stale = []
            for (updated_at, run_id, status), record in zip(chunk, records, strict=True):
                if record is not None and record.status == status and record.updated_at == updated_at:
                    found.append(record)
                    if len(found) == limit:
                        break
                else:
                    stale.append((status, updated_at, run_id, record))
            await self._repair(stale)
            if len(found) == limit:
                break
        return found

    async def _repair(self, stale: Sequence[tuple[str, float, str, RunRecord | None]]) -> None:
        """Lookup rows a dead writer left behind: drop them, and mirror the authoritative record."""
        for status, updated_at, run_id, record in stale:
            await self.client.execute(self._q_lookup_del, (status, self.bucket(run_id), updated_at, run_id))
            if record is not None:
                await self._mirror(record, self._encode(record), None)

    async def list(
        self, status: str | None = None, blueprint_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[builtins.list[RunRecord], str | None]:
        """Newest first by ``created_at``; the cursor is ``<created_at> <run_id>`` of the last record returned."""
        upper: tuple[float, str] = (float("inf"), "")
        if cursor:
            score, _, last_id = cursor.partition(" ")
            upper = (float(score), last_id)
        page: builtins.list[RunRecord] = []
        while True:
            bound = upper[0] if upper[0] != float("inf") else 1e300
            results = await asyncio.gather(*(self.client.execute(self._q_created, (bucket, bound))
                                             for bucket in range(self.buckets)))
            cutoff: tuple[float, str] | None = None
            rows: builtins.list[tuple[float, str]] = []
            for result in results:
                rows += [(row.created_at, row.run_id) for row in result]
                if len(result) >= PAGE:
                    edge: tuple[float, str] = (result[-1].created_at, result[-1].run_id)
                    cutoff = edge if cutoff is None or edge > cutoff else cutoff
            rows = [r for r in rows if (upper[0] == float("inf") or r < upper) and (cutoff is None or r >= cutoff)]
            rows = heapq.nlargest(len(rows), rows)
            if not rows:
                return page, None
            records = await self._records([run_id for _, run_id in rows])
            for (created_at, run_id), record in zip(rows, records, strict=True):
                if record is None:
                    continue
                if (status is None or record.status == status) and (
                        blueprint_id is None or record.blueprint_id == blueprint_id):
                    page.append(record)
                    if len(page) == limit:
                        return page, f"{created_at!r} {run_id}"
            if cutoff is None:
                return page, None
            upper = rows[-1]


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
