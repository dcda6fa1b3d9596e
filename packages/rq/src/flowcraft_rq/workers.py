"""Flowcraft workers in rq's own worker registry, so ``rq info`` and rq-dashboard list them.

rq keeps a hash per worker, ``<rq prefix>:worker:<name>`` (the fields ``rq.worker.BaseWorker.refresh`` reads:
birth, last_heartbeat, queues, pid, hostname, state, job counts), and two sets of those keys: every worker's
(``<rq prefix>:workers``) and each queue's (``<rq prefix>:workers:<queue>``). A Flowcraft worker writes its hash
with a TTL of its presence expiry on every presence heartbeat (``Queue.register_worker``), so a killed worker
drops out of ``rq info`` by itself (rq removes set members whose hash expired); a stopping worker deletes it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flowcraft.spi import WorkerInfo

if TYPE_CHECKING:
    from flowcraft_rq.queue import RqQueue


def _iso(timestamp: float) -> str:
    """rq's timestamp format (``rq.utils.utcformat``)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def worker_key(queue: RqQueue, worker_id: str) -> str:
    return f"{queue.rq_prefix}:worker:{worker_id}"


async def register(queue: RqQueue, info: WorkerInfo) -> None:
    """Write (or refresh) the worker's rq hash and its membership of rq's worker sets."""
    key = worker_key(queue, info.worker_id)
    queues = ",".join(group.queue_name for group in queue.groups)
    fields = {"birth": _iso(info.started_at), "last_heartbeat": _iso(info.heartbeat_at), "queues": queues,
              "pid": info.pid, "hostname": info.host, "ip_address": "", "state": "busy" if info.in_flight else "idle",
              "successful_job_count": info.handled, "failed_job_count": info.failed,
              "version": f"flowcraft ({info.backend})",
              "python_version": sys.version.split()[0]}
    ttl = max(1, int(info.expires_at - info.heartbeat_at) + 1)
    async with queue.redis.pipeline(transaction=not queue.clustered) as pipe:  # cluster: keys in several slots
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # redis-py's mapping type is invariant
        pipe.expire(key, ttl)
        pipe.sadd(f"{queue.rq_prefix}:workers", key)
        for group in queue.groups:
            pipe.sadd(f"{queue.rq_prefix}:workers:{group.queue_name}", key)
        await pipe.execute()


async def unregister(queue: RqQueue, info: WorkerInfo) -> None:
    """Remove the worker's hash and set memberships (it stopped)."""
    key = worker_key(queue, info.worker_id)
    async with queue.redis.pipeline(transaction=not queue.clustered) as pipe:  # cluster: keys in several slots
        pipe.srem(f"{queue.rq_prefix}:workers", key)
        for group in queue.groups:
            pipe.srem(f"{queue.rq_prefix}:workers:{group.queue_name}", key)
        pipe.delete(key)
        await pipe.execute()
