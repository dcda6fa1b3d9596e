"""RedisContext: a run's context as one Redis hash (key -> JSON value)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flowcraft.spi import ContextStore
from flowcraft_redis import scripts
from flowcraft_redis._client import (
    DEFAULT_GROUPS,
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    RedisClient,
    dumps,
    loads,
    text,
)
from flowcraft_redis._store import RedisStateStore


class RedisContext(RedisStateStore, ContextStore):
    """``P ctx:<run_id>``: one hash per run, field = context key, value = the JSON of the value (``None`` is
    stored as ``null``, so a key set to ``None`` exists). Each write refreshes the hash's TTL."""

    name = "redis"

    def __init__(self, redis: RedisClient, *, key_prefix: str = DEFAULT_PREFIX,
                 state_ttl_seconds: float = DEFAULT_TTL, cluster_queue_groups: int = DEFAULT_GROUPS) -> None:
        super().__init__(redis, key_prefix=key_prefix, state_ttl_seconds=state_ttl_seconds,
                         cluster_queue_groups=cluster_queue_groups)
        self._apply = self.batcher.script(scripts.CONTEXT_APPLY)
        self._delete = self.batcher.script(scripts.CONTEXT_DELETE)

    async def get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        if not keys:
            return {}
        keys = list(dict.fromkeys(keys))
        values = await self.batcher.call("HMGET", self.keys.ctx(run_id), *keys)
        return {key: loads(raw) for key, raw in zip(keys, values, strict=True) if raw is not None}

    async def get_all(self, run_id: str) -> dict[str, Any]:
        raw = await self.batcher.call("HGETALL", self.keys.ctx(run_id))
        return {text(k): loads(v) for k, v in raw.items()}

    async def apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        if not updates and not deletes:
            return
        args: list[Any] = [self.state_ttl_seconds, len(updates)]
        for key, value in updates.items():
            args += (key, dumps(value))
        args += list(deletes)  # deletes win over updates of the same key, as in the memory store
        await self.batcher.call_script(self._apply, (self.keys.ctx(run_id), self.keys.run(run_id)), *args)

    async def delete_run(self, run_id: str) -> None:
        await self.batcher.call_script(self._delete, (self.keys.ctx(run_id), self.keys.run(run_id)))

    async def close(self) -> None:
        await self.redis.aclose()

    async def setup(self) -> None:
        await self.redis.ping()
