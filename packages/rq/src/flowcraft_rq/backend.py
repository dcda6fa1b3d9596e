"""The ``rq`` preset's factory: the rq queue and the Redis stores on one client and key prefix, wired together.

Wired here, explicitly (``flowcraft_redis.colocate``), they take every fast path (``Backend.capabilities``):
commits write contexts and push the jobs they fire into the queue, and ``receive`` prefetches each job's run
record and lease. A backend that overrides a component (config ``[components]``) is built component by
component instead, and takes none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.spi import Backend, parse_options
from flowcraft_redis import RedisContext, RedisCoordinationStore, RedisStatusStore, colocate, make_any_client
from flowcraft_rq.options import RqQueueOptions
from flowcraft_rq.queue import RqQueue


def build_backend(options: Mapping[str, Any]) -> Backend:
    """The ``rq`` backend from its validated options (``RqQueueOptions``)."""
    parsed = parse_options(RqQueueOptions, options)
    client = make_any_client(parsed.redis_url, parsed.redis_cluster)
    prefix, ttl, groups = parsed.key_prefix, parsed.state_ttl_seconds, parsed.cluster_queue_groups
    queue = RqQueue.build(client, parsed)
    context = RedisContext(client, key_prefix=prefix, state_ttl_seconds=ttl, cluster_queue_groups=groups)
    status = RedisStatusStore(client, key_prefix=prefix, state_ttl_seconds=ttl, cluster_queue_groups=groups)
    coordination = RedisCoordinationStore(client, key_prefix=prefix, state_ttl_seconds=ttl,
                                          cluster_queue_groups=groups)
    colocate(queue, context, status, coordination)
    return Backend(queue, context, status, coordination)
