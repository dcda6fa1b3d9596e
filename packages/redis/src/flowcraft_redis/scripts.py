"""The Lua scripts of the Redis stores, composed once at import: each store operation is one script, so one
round trip and atomic on the server. The sources are ``lua/*.lua``; the key layout and stored formats they
share with ``flowcraft_rq`` are described in ``flowcraft_redis.layout``."""

from __future__ import annotations

from flowcraft.spi import RunEnd
from flowcraft_redis.layout import DEFAULT_TTL, DROP_LEASE_LUA, read_lua, with_leases


def _lua(name: str) -> str:
    return read_lua("flowcraft_redis", name)


def _published(source: str, cluster: bool) -> str:
    """``source`` publishing a run's change with ``SPUBLISH`` on a Redis Cluster (the channel is in the run's slot,
    so the message stays in its shard instead of going to every node over the cluster bus; the change feed,
    ``flowcraft_redis._changes``, subscribes with ``SSUBSCRIBE`` there), else ``PUBLISH``."""
    published = source.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',") if cluster else source
    assert not cluster or published != source
    return published


def _lua_string(value: str) -> str:
    assert value.isidentifier(), value  # a constant of the layout, quoted as is
    return f"'{value}'"


def commit(dispatch_lua: str = "", ttl: int = DEFAULT_TTL, cluster: bool = False) -> str:
    """The commit script for a store whose keys live ``ttl`` seconds (a constant of its text, not an argument of
    every call); ``dispatch_lua`` is a queue's ``Dispatcher.lua`` when commits push fired jobs; ``cluster``: on a
    Redis Cluster (the run's end publishes with ``SPUBLISH``). The run's end (``ends``) uses ``change_status``
    (``lua/status_change.lua``, shared with the status transition) and the active statuses, put where it uses them
    (a function or table is made on each call that reaches its definition)."""
    active = sorted(RunEnd.FROM_STATUSES)
    constants = (f"local TTL, TTL_TEXT, ACTIVE_COUNT, RESULT_KEY = {int(ttl)}, '{int(ttl)}', {len(active)}, "
                 f"{_lua_string(RunEnd.RESULT_KEY)}\n")
    change = (_published(_CHANGE, cluster)
              + f"local ACTIVE = {{{', '.join(_lua_string(status) for status in active)}}}\n")
    assert _COMMIT.count(_INCLUDE_CHANGE) == 1
    return with_leases(constants + dispatch_lua + _COMMIT.replace(_INCLUDE_CHANGE, change))


def status_transition(cluster: bool = False) -> str:
    """The status transition script (``StatusStore.transition``); ``cluster``: on a Redis Cluster (``SPUBLISH``)."""
    return _published(_CHANGE, cluster) + _TRANSITION


def start(dispatch_lua: str) -> str:
    """The start script (``CoordinationStore.start``) for a queue's ``Dispatcher.lua``."""
    return with_leases(dispatch_lua + _RECORD + _START)


_COMMIT = _lua("commit")
_CHANGE = _lua("status_change")  # change_status: StatusStore.transition and a run's end in a commit
_INCLUDE_CHANGE = "--[[status_change.lua]]"  # where commit.lua's run's end takes change_status
_TRANSITION = _lua("status_transition")
_RECORD = _lua("status_record")  # create_record: StatusStore.create and a run's start
_START = _lua("start")
BEGIN = with_leases(_lua("begin"))
RENEW = with_leases(_lua("renew"))
RELEASE = DROP_LEASE_LUA
SCHEDULE = _lua("schedule")
PARK = _lua("park")
UNPARK = _lua("unpark")
CONTEXT_APPLY = _lua("context_apply")
CONTEXT_DELETE = _lua("context_delete")
STATUS_CREATE = _RECORD + _lua("status_create")
