"""flowcraft-redis without a server: command packing, key layout, the session's hand-over slots, plugins."""

from __future__ import annotations

import time

import pytest
from redis.asyncio.connection import Connection

from flowcraft.plugins import registry
from flowcraft.spi import Begin, Job
from flowcraft_redis import RedisContext, RedisCoordinationStore, RedisStatusStore, make_client, session_for
from flowcraft_redis._session import Keys, Packed, _FastConnection, dumps, fast_packing, loads


def _reference(*args: object) -> bytes:
    return b"".join(Connection().pack_command(*args))  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [
    ("EVALSHA", "abc", 0, "ü:/ x", b"\x00\xff", 12, 1.5, -3, ""),
    ("HSET", "k", "f", "x" * 10_000),
    ("SCRIPT LOAD", "return 1"),
])
def test_fast_packing_matches_redis_py(args: tuple[object, ...]) -> None:
    assert b"".join(_FastConnection().pack_command(*args)) == _reference(*args)


def test_packed_arguments_count_as_several() -> None:
    packed = Packed.of("a", 2, b"c")
    assert packed.nargs == 3
    assert b"".join(_FastConnection().pack_command("X", packed, "d")) == _reference("X", "a", 2, b"c", "d")


def test_make_client_uses_fast_packing() -> None:
    assert fast_packing(make_client("redis://127.0.0.1:1/0"))


def test_key_layout_puts_run_ids_last() -> None:
    keys = Keys("p:")
    assert keys.ctx("a:b") == "p:ctx:a:b" and keys.status("r") == "p:status:r" and keys.jobs("r") == "p:jobs:r"
    assert keys.idx_status("running") == "p:idx:status:running" and keys.idx_created == "p:idx:created"


def test_json_round_trip_keeps_types() -> None:
    value = {"none": None, "list": [], "dict": {}, "float": 0.1 + 0.2, "big": 2**70, "text": "ü"}
    assert loads(dumps(value).encode()) == value


def test_session_is_per_client_and_prefix() -> None:
    client = make_client("redis://127.0.0.1:1/0")
    assert session_for(client, "a:") is session_for(client, "a:")
    assert session_for(client, "a:") is not session_for(client, "b:")
    assert session_for(make_client("redis://127.0.0.1:1/0"), "a:") is not session_for(client, "a:")


def test_prefetched_status_is_served_once_per_offer() -> None:
    session = session_for(make_client("redis://127.0.0.1:1/0"), "x:")
    session.offer_status("r", {b"status": b"running"})
    session.offer_status("r", {b"status": b"running"})
    assert session.take_status("r") is not None and session.take_status("r") is not None
    assert session.take_status("r") is None
    session.offer_status("r", {b"status": b"running"})
    session.forget_status("r")  # a local write makes it stale
    assert session.take_status("r") is None


def test_prefetched_begin_is_tied_to_the_job_object_and_owner() -> None:
    session = session_for(make_client("redis://127.0.0.1:1/0"), "x:")
    job, twin = Job("r", "bp", "n"), Job("r", "bp", "n")
    begin = Begin(True, "pending", None)
    session.offer_begin(job, "w1", begin, time.time() + 30)
    assert session.take_begin(twin, "w1") == (None, None)
    assert session.take_begin(job, "w2") == (None, "w1")  # another owner's lease: dropped, then taken afresh
    session.offer_begin(job, "w1", begin, time.time() + 30)
    assert session.take_begin(job, "w1") == (begin, None)
    session.offer_begin(job, "w1", begin, time.time() + 30)
    assert session.unclaimed_lease(job) == "w1" and session.unclaimed_lease(job) is None


def test_dispatched_and_released_marks_are_consumed_once() -> None:
    session = session_for(make_client("redis://127.0.0.1:1/0"), "x:")
    job = Job("r", "bp", "n")
    session.mark_dispatched([job])
    assert not session.was_dispatched(Job("r", "bp", "n"))
    assert session.was_dispatched(job) and not session.was_dispatched(job)
    session.mark_released("r", "0:n", "w")
    assert session.was_released("r", "0:n", "w") and not session.was_released("r", "0:n", "w")


def test_applies_context_follows_the_session() -> None:
    client = make_client("redis://127.0.0.1:1/0")
    coordination = RedisCoordinationStore(client, key_prefix="u:")
    assert not coordination.applies_context
    RedisContext(client, key_prefix="u:")
    assert coordination.applies_context


def test_plugin_registers_lazily() -> None:
    reg = registry(refresh=True)
    assert "redis" in reg.names("context") and "redis" in reg.names("status") and "redis" in reg.names("coordination")
    assert reg.component("coordination", "redis") is RedisCoordinationStore
    assert reg.component("status", "redis") is RedisStatusStore
    store = RedisStatusStore.from_config({"redis_url": "redis://127.0.0.1:1/0", "state_ttl_seconds": "60"}, {})
    assert store.state_ttl_seconds == 60 and store.key_prefix == "flowcraft:"
