"""Lua for the rq queue's hot path (sources in ``lua/*.lua``, composed once at import). Keys follow rq's
layout (``<R>:queue:<name>``, ``<R>:job:<id>``, ``<R>:wip:<name>`` entries ``<job id>:<execution id>`` scored
by deadline, ``<R>:scheduled:<name>``, ``<R>:failed:<name>``, ``<R>:queues``), so ``rq info`` and rq's
registries see our jobs. What they read and write of Flowcraft's own keys (run records, job states, leases)
goes through ``flowcraft_redis.layout``."""

from __future__ import annotations

from flowcraft_redis.layout import DROP_LEASE_LUA, read_lua, with_leases
from flowcraft_rq.jobs import DATA_HEAD, DATA_TAIL

#: the fields rq would write for a fresh job that we do not set per job and whose absence rq does not read as
#: the same thing (``rq.job.Job.restore`` reads a missing callback, timestamp, worker or group as the empty
#: value rq writes for a fresh job, so those are left out: each costs every job hash a field)
RQ_STATIC_FIELDS: tuple[str, ...] = ("timeout", "-1", "retries_left", "10")


def _lua(name: str) -> str:
    return read_lua("flowcraft_rq", name)


def lua_string(value: str) -> str:
    """``value`` as a Lua string literal (its UTF-8 bytes; any but printable ASCII, a quote or a backslash as
    ``\\ddd``: a line break or a carriage return cannot stand in a Lua 5.1 literal)."""
    return "'" + "".join(chr(b) if 32 <= b < 127 and b not in (39, 92) else f"\\{b:03d}"
                         for b in value.encode()) + "'"


#: constants of our rq job hashes, in the Lua text rather than in every call's ARGV (the static fields spliced
#: into the table write_rq_job makes: a table of them would be made on every call of every script that has it)
_RQ_CONSTANTS = f"local RQ_DATA_HEAD, RQ_DATA_TAIL = {lua_string(DATA_HEAD)}, {lua_string(DATA_TAIL)}\n"


#: the fields every rq job hash gets, whatever its status: write_rq_job's HSET calls (one per status, each with all
#: its arguments: a table of them would be made and grown on every call) begin with them
_RQ_FIELDS = ("'data', data, 'created_at', now_iso, 'origin', origin, 'description', description, 'flowcraft_run', "
              "run, 'flowcraft_key', key, " + ", ".join(map(lua_string, RQ_STATIC_FIELDS)))
_RQ_JOB = _RQ_CONSTANTS + _lua("rq_job").replace(  # writes our rq job hashes: ENQUEUE, RELEASE, DEQUEUE, dispatch
    "--[[RQ_FIELDS]]", _RQ_FIELDS)
_PREFETCH = _lua("prefetch_fn")  # what receive prefetches per job, in the dequeue
DEQUEUE = with_leases(_RQ_JOB + _PREFETCH + _lua("dequeue"))
DROP_LEASE = DROP_LEASE_LUA
RELEASE = with_leases(_RQ_JOB + _lua("release"))
EXTEND = _lua("extend")
ENQUEUE = with_leases(_RQ_JOB + _lua("enqueue"))
_DISPATCH = _RQ_JOB + _lua("dispatch")


def dispatch(job_prefix: str, lean: bool) -> str:
    """``Dispatcher.lua`` of an rq queue, prepended to flowcraft_redis's commit and start scripts: the queue's
    constants (rq's job key prefix, the layout) are in the text, not in every commit's ARGV
    (each argument costs a script call ~800 instructions). The same for every queue group of a Redis Cluster (the
    store builds one commit script from the queue's first dispatcher): the group's queue name (rq's ``origin``)
    stays an argument, and so does the worker's name (one script per worker process would stay in the server's
    script cache after the process is gone)."""
    constants = f"{lua_string(job_prefix)}, {'true' if lean else 'false'}"
    return _DISPATCH.replace("--[[DISPATCH_CONSTANTS]]", constants)
