"""Lua for the rq queue's hot path (sources in ``lua/*.lua``, composed once at import). Keys follow rq's
layout (``<R>:queue:<name>``, ``<R>:job:<id>``, ``<R>:wip:<name>`` entries ``<job id>:<execution id>`` scored
by deadline, ``<R>:scheduled:<name>``, ``<R>:failed:<name>``, ``<R>:queues``), so ``rq info`` and rq's
registries see our jobs. What they read and write of Flowcraft's own keys (run records, job states, leases)
goes through ``flowcraft_redis.layout``."""

from __future__ import annotations

from flowcraft_redis.layout import DROP_LEASE_LUA, read_lua, with_leases


def _lua(name: str) -> str:
    return read_lua("flowcraft_rq", name)


_PREFETCH = _lua("prefetch_fn")  # what receive prefetches per job: in the dequeue, or (cluster) after it
DEQUEUE = with_leases(_PREFETCH + _lua("dequeue"))
PREFETCH = with_leases(_PREFETCH + _lua("prefetch"))
DROP_LEASE = DROP_LEASE_LUA
RELEASE = with_leases(_lua("release"))
EXTEND = _lua("extend")
_RQ_JOB = _lua("rq_job")  # writes our rq job hashes: shared by ENQUEUE and the commit's dispatch
ENQUEUE = _RQ_JOB + _lua("enqueue")
#: ``Dispatcher.lua`` of the rq queue: prepended to flowcraft_redis's commit script
DISPATCH = _RQ_JOB + _lua("dispatch")
