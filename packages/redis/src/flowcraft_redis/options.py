"""The options of the Redis components, declared once: the stores here and the rq queue (``flowcraft_rq``)
read the same ``redis_url``, ``key_prefix`` and ``state_ttl_seconds`` (see ``flowcraft.options``)."""

from __future__ import annotations

from dataclasses import dataclass

from flowcraft.spi import option
from flowcraft_redis._client import DEFAULT_GROUPS, DEFAULT_PREFIX, DEFAULT_TTL, DEFAULT_URL


@dataclass(frozen=True)
class RedisOptions:
    """What every Redis component takes: the server, the key prefix of the data, how long run data lives."""

    redis_url: str = option(DEFAULT_URL, "the Redis server, e.g. redis://:password@host:6379/0 (the password "
                                         "is masked wherever it is shown)")
    key_prefix: str = option(DEFAULT_PREFIX, "prefix of every key this backend writes; several apps can share "
                                             "one server with different prefixes")
    state_ttl_seconds: float = option(float(DEFAULT_TTL), "seconds a run's data is kept after its last write")
    redis_cluster: bool = option(False, "redis_url names a node of a Redis Cluster (as a redis+cluster:// URL "
                                        "does); the client follows the cluster's slots")
    cluster_queue_groups: int = option(DEFAULT_GROUPS, "on a Redis Cluster: the queue groups runs and queues are "
                                                       "spread over (each a hash tag); part of the keyspace's "
                                                       "layout, so the same for every component and process")
