"""The Lua scripts of the Redis stores, composed once at import: each store operation is one script, so one
round trip and atomic on the server. The sources are ``lua/*.lua``; the key layout and stored formats they
share with ``flowcraft_rq`` are described in ``flowcraft_redis.layout``."""

from __future__ import annotations

from flowcraft_redis.layout import DEFAULT_TTL, DROP_LEASE_LUA, read_lua, with_leases


def _lua(name: str) -> str:
    return read_lua("flowcraft_redis", name)


def commit(dispatch_lua: str = "", ttl: int = DEFAULT_TTL) -> str:
    """The commit script for a store whose keys live ``ttl`` seconds (a constant of its text, not an argument of
    every call); ``dispatch_lua`` is a queue's ``Dispatcher.lua`` when commits push fired jobs."""
    return with_leases(f"local TTL, TTL_TEXT = {int(ttl)}, '{int(ttl)}'\n" + dispatch_lua + _COMMIT)


def start(dispatch_lua: str) -> str:
    """The start script (``CoordinationStore.start``) for a queue's ``Dispatcher.lua``."""
    return with_leases(dispatch_lua + _RECORD + _START)


_COMMIT = _lua("commit")
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
STATUS_TRANSITION = _lua("status_transition")
