"""What every Redis state store (context, status, coordination) shares: client, key prefix, TTL, batcher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from flowcraft.spi import parse_options
from flowcraft_redis._client import (
    DEFAULT_GROUPS,
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    Keys,
    RedisClient,
    batcher_for,
    is_cluster,
    shared_any_client,
)
from flowcraft_redis.colocation import Colocated
from flowcraft_redis.options import RedisOptions


class RedisStateStore(Colocated):
    """Base of the Redis stores: keys under ``key_prefix``, each write refreshing ``state_ttl_seconds``; on a
    Redis Cluster a run's keys carry the tag of its queue group, one of ``cluster_queue_groups`` (``Keys``)."""

    def __init__(self, redis: RedisClient, *, key_prefix: str = DEFAULT_PREFIX,
                 state_ttl_seconds: float = DEFAULT_TTL, cluster_queue_groups: int = DEFAULT_GROUPS) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self.state_ttl_seconds = int(state_ttl_seconds)
        self.keys = Keys(key_prefix, int(cluster_queue_groups) if is_cluster(redis) else 0)
        self.batcher = batcher_for(redis)

    # declared as on Component: the stores also derive from a Component, and mypy wants both bases to agree
    Options: ClassVar[type[Any] | None] = RedisOptions

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = parse_options(RedisOptions, options)
        # built alone: it takes no fast path with other components (a preset's factory wires those: colocate)
        return cls(shared_any_client(options, shared), key_prefix=parsed.key_prefix,
                   state_ttl_seconds=parsed.state_ttl_seconds, cluster_queue_groups=parsed.cluster_queue_groups)
