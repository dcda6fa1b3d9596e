"""flowcraft-redis: Redis context, status and coordination stores for Flowcraft (redis.asyncio + Lua).

Used by the ``rq`` backend (``flowcraft-rq``) and as the coordination store of backends whose queue and state
live elsewhere. Public: the names below and the modules without a leading underscore (``flowcraft_redis.layout``:
key names, stored formats and shared Lua; ``colocation``, ``options``); ``_``-modules are private.
"""

from flowcraft_redis._client import (
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    DEFAULT_URL,
    Batcher,
    Packed,
    RedisClient,
    batcher_for,
    fast_packing,
    is_cluster,
    make_any_client,
    make_client,
    shared_any_client,
    shared_client,
)
from flowcraft_redis.colocation import Colocated, Colocation, Dispatcher, colocate
from flowcraft_redis.context import RedisContext
from flowcraft_redis.coordination import RedisCoordinationStore
from flowcraft_redis.reconciler import RedisReconciler, RedisReconcileStats, create_redis_reconciler
from flowcraft_redis.status import RedisStatusStore

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TTL",
    "DEFAULT_URL",
    "Batcher",
    "Colocated",
    "Colocation",
    "Dispatcher",
    "Packed",
    "RedisClient",
    "RedisContext",
    "RedisCoordinationStore",
    "RedisReconcileStats",
    "RedisReconciler",
    "RedisStatusStore",
    "batcher_for",
    "colocate",
    "create_redis_reconciler",
    "fast_packing",
    "is_cluster",
    "make_any_client",
    "make_client",
    "shared_any_client",
    "shared_client",
]
