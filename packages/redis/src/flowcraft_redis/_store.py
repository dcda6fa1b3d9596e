"""What every Redis state store (context, status, coordination) shares: client, key prefix, TTL, batcher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from redis.asyncio import Redis

from flowcraft_redis._client import (
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    Keys,
    batcher_for,
    option_float,
    option_str,
    shared_client,
)
from flowcraft_redis.colocation import Colocated, Colocation


class RedisStateStore(Colocated):
    """Base of the Redis stores: keys under ``key_prefix``, each write refreshing ``state_ttl_seconds``."""

    def __init__(self, redis: Redis, *, key_prefix: str = DEFAULT_PREFIX,
                 state_ttl_seconds: float = DEFAULT_TTL) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self.state_ttl_seconds = int(state_ttl_seconds)
        self.keys = Keys(key_prefix)
        self.batcher = batcher_for(redis)

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        store = cls(shared_client(options, shared), key_prefix=option_str(options, "key_prefix", DEFAULT_PREFIX),
                    state_ttl_seconds=option_float(options, "state_ttl_seconds", DEFAULT_TTL))
        Colocation.join(store, options, shared)
        return store
