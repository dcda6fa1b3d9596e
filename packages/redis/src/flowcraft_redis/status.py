"""RedisStatusStore: run records as hashes, CAS transitions in Lua, sorted-set indexes (no KEYS/SCAN)."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from flowcraft.spi import ACTIVE_STATUSES, RunRecord, StatusStore, check_record_changes
from flowcraft_redis import scripts
from flowcraft_redis._changes import ChangeFeed
from flowcraft_redis._client import RedisClient, is_cluster
from flowcraft_redis._store import RedisStateStore
from flowcraft_redis.colocation import Colocation
from flowcraft_redis.context import RedisContext
from flowcraft_redis.layout import (
    DEFAULT_GROUPS,
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    RECORD_FIELDS,
    dumps,
    record_from_hash,
    text,
)

#: the longest ``watch`` waits for its subscription's confirmation (a wait after it then returns at the
#: confirmation, and its caller reads again)
WATCH_SECONDS = 1.0


def _flat(items: list[Any]) -> dict[bytes, bytes]:
    return {items[i]: items[i + 1] for i in range(0, len(items), 2)}


class RedisStatusStore(RedisStateStore, StatusStore):
    """``P status:{<run_id>}`` hash (one field per record field, JSON; ``status`` plain); ``P idx:created``
    sorted set (score created_at) for ``list``; ``P idx:status:<status>`` sorted sets (score updated_at)
    for ``stalled``. ``transition`` is a compare-and-set in one Lua call that returns the new record and
    publishes the new status on ``P changed:{<run_id>}``, which ``wait_for_change`` listens to.

    The scripts update the indexes too (atomic). On a Redis Cluster each queue group has its own indexes, in the
    slot of its runs' keys (``P idx:created:{<group tag>}``, ``P idx:status:<status>:{<group tag>}``: ``Keys``),
    and ``list``/``stalled`` merge the groups'.

    Colocated with a ``RedisContext`` (same client and key prefix: ``flowcraft_redis.colocate``), it
    ``writes_context``: ``transition_with_context`` writes the context values into the run's ``ctx`` hash in the
    transition's script, only if it wins. The two hashes share the run's hash tag, so this holds on a cluster."""

    name = "redis"
    notifies = True

    def __init__(self, redis: RedisClient, *, key_prefix: str = DEFAULT_PREFIX,
                 state_ttl_seconds: float = DEFAULT_TTL, cluster_queue_groups: int = DEFAULT_GROUPS) -> None:
        super().__init__(redis, key_prefix=key_prefix, state_ttl_seconds=state_ttl_seconds,
                         cluster_queue_groups=cluster_queue_groups)
        self._create = self.batcher.script(scripts.STATUS_CREATE)
        self._transition = self.batcher.script(scripts.status_transition(is_cluster(redis)))
        self._changes = ChangeFeed(redis)
        self._context_ttl: int | None = None

    def colocated(self, colocation: Colocation) -> None:
        context = colocation.context
        self._context_ttl = context.state_ttl_seconds if isinstance(context, RedisContext) else None

    @property
    def writes_context(self) -> bool:
        """True when a ``RedisContext`` on the same client and key prefix is the backend's context store."""
        return self._context_ttl is not None

    async def create(self, record: RunRecord) -> bool:
        now = time.time()
        created = record.created_at or now
        data = record.to_dict()
        data["created_at"], data["updated_at"] = created, now
        args: list[Any] = [record.run_id, self.state_ttl_seconds, record.status, repr(created), repr(now)]
        for name in RECORD_FIELDS:
            args += (name, dumps(data[name]))
        run_id = record.run_id
        keys = (self.keys.status(run_id), self.keys.created_index(run_id),
                self.keys.status_index(record.status, run_id))
        done = await self.batcher.call_script(self._create, keys, *args)
        if done:
            record.created_at, record.updated_at = created, now
        return bool(done)

    async def get(self, run_id: str) -> RunRecord | None:
        raw = await self.batcher.call("HGETALL", self.keys.status(run_id))
        return record_from_hash(raw) if raw else None

    async def delete(self, run_id: str) -> bool:
        """The record's hash first, then its index entries (an entry left behind by a crash in between is
        dropped by the next ``list``, as for an expired record)."""
        removed = bool(await self.redis.delete(self.keys.status(run_id)))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.created_index(run_id), run_id)
            for status in ("running", "awaiting", "completed", "failed", "cancelled"):
                pipe.zrem(self.keys.status_index(status, run_id), run_id)
            await pipe.execute()
        return removed

    async def transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        return await self._transit(run_id, from_statuses, to_status, changes, {})

    async def _transition_writing_context(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any],
        context: Mapping[str, Any],
    ) -> RunRecord | None:
        return await self._transit(run_id, from_statuses, to_status, changes, context)

    async def _transit(self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any],
                       context: Mapping[str, Any]) -> RunRecord | None:
        """The transition script; ``context`` (only with ``writes_context``) written with it if it wins."""
        check_record_changes(changes)
        now = time.time()
        args: list[Any] = [run_id, self.state_ttl_seconds, to_status, repr(now), self.keys.changes(run_id),
                           len(from_statuses), *from_statuses, len(context), self._context_ttl or 0]
        for key, value in context.items():
            args += (key, dumps(value))  # encoded as RedisContext.apply encodes them
        for name, value in changes.items():
            args += (name, dumps(value))
        keys = [self.keys.status(run_id), self.keys.ctx(run_id),
                *(self.keys.status_index(status, run_id) for status in (*from_statuses, to_status))]
        raw = await self.batcher.call_script(self._transition, keys, *args)
        return None if not raw else record_from_hash(_flat(raw))

    async def _records(self, run_ids: Sequence[bytes]) -> builtins.list[RunRecord | None]:
        if not run_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.status(text(run_id)))
        return [record_from_hash(raw) if raw else None for raw in await pipe.execute()]

    async def list(
        self, status: str | None = None, blueprint_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[builtins.list[RunRecord], str | None]:
        """Newest first by ``created_at``; the cursor is ``<score> <run_id>`` of the last record returned (on a
        cluster the groups' indexes are read alike and their pages merged)."""
        after: tuple[float, str] | None = None
        if cursor:
            score_text, _, last_id = cursor.partition(" ")
            after = (float(score_text), last_id)
        indexes = self.keys.created_indexes()
        pages = await asyncio.gather(*(self._list_index(index, status, blueprint_id, limit, after)
                                       for index in indexes))
        page = pages[0] if len(pages) == 1 else sorted(
            (row for rows in pages for row in rows), key=lambda row: (row[0], row[1]), reverse=True)[:limit]
        if len(page) < limit:
            return [record for _, _, record in page], None
        score, member, _ = page[-1]
        return [record for _, _, record in page], f"{score!r} {member}"

    async def _list_index(self, index: str, status: str | None, blueprint_id: str | None, limit: int,
                          after: tuple[float, str] | None) -> builtins.list[tuple[float, str, RunRecord]]:
        """Up to ``limit`` records of one creation index that match, newest first, after the cursor ``after``,
        with their scores and members."""
        max_score = "+inf" if after is None else repr(after[0])
        page: builtins.list[tuple[float, str, RunRecord]] = []
        offset = 0
        batch = max(limit * 2, 50)
        while True:
            rows: builtins.list[Any] = await self.redis.zrevrangebyscore(
                index, max_score, "-inf", start=offset, num=batch, withscores=True)
            if not rows:
                return page
            offset += len(rows)
            rows = [(member, score) for member, score in rows
                    if after is None or score < after[0] or (score == after[0] and text(member) < after[1])]
            records = await self._records([member for member, _ in rows])
            await self._drop_gone(index, rows, records)
            for (member, score), record in zip(rows, records, strict=True):
                if record is None:
                    continue
                if (status is None or record.status == status) and (
                        blueprint_id is None or record.blueprint_id == blueprint_id):
                    page.append((score, text(member), record))
                    if len(page) == limit:
                        return page

    async def _drop_gone(self, index: str, rows: builtins.list[tuple[bytes, float]],
                         records: builtins.list[RunRecord | None]) -> None:
        """Drop the entries of ``index`` (read as ``rows``) whose record is gone (expired or deleted)."""
        stale = [member for (member, _), record in zip(rows, records, strict=True) if record is None]
        if stale:
            await self.redis.zrem(index, *stale)

    async def stalled(
        self, older_than: float, limit: int = 100, *, after: tuple[float, str] | None = None
    ) -> builtins.list[RunRecord]:
        found: builtins.list[RunRecord] = []
        for status in sorted(ACTIVE_STATUSES):
            for index in self.keys.status_indexes(status):  # one, or one per queue group on a cluster
                found += await self._stalled_index(index, status, older_than, limit, after)
        found.sort(key=lambda r: (r.updated_at, r.run_id))
        return found[:limit]

    async def _stalled_index(self, index: str, status: str, older_than: float, limit: int,
                             after: tuple[float, str] | None) -> builtins.list[RunRecord]:
        """Up to ``limit`` records of one status index that still have ``status`` and were last updated before
        ``older_than``, after ``after``."""
        found: builtins.list[RunRecord] = []
        low = "-inf" if after is None else repr(after[0])
        offset = 0
        while len(found) < limit:
            rows: builtins.list[Any] = await self.redis.zrangebyscore(
                index, low, f"({older_than!r}", start=offset, num=limit, withscores=True)
            offset += len(rows)
            exhausted = len(rows) < limit
            rows = [(member, score) for member, score in rows if after is None or (score, text(member)) > after]
            records = await self._records([member for member, _ in rows])
            await self._drop_gone(index, rows, records)
            found += [r for r in records if r is not None and r.status == status and r.updated_at < older_than]
            if exhausted:
                break
        return found

    async def wait_for_change(self, run_id: str, timeout: float) -> None:
        """Returns when a transition of the run is published (or one was since the last wait on it), right
        after the first wait on a run has subscribed, or after ``timeout`` (see ``flowcraft_redis._changes``).
        Without a working subscription it sleeps, and callers poll."""
        try:
            await self._changes.wait(self.keys.changes(run_id), timeout)
        except (RedisError, OSError):
            await asyncio.sleep(timeout)

    async def watch(self, run_id: str) -> None:
        """Subscribe to the run's changes and return once the subscription is confirmed (a first wait on the
        run then waits for a change, see ``flowcraft_redis._changes``); without a working subscription it
        returns, and callers poll."""
        try:
            await self._changes.watch(self.keys.changes(run_id), WATCH_SECONDS)
        except (RedisError, OSError):
            return

    async def close(self) -> None:
        await self._changes.close()
        await self.redis.aclose()

    async def setup(self) -> None:
        await self.redis.ping()
