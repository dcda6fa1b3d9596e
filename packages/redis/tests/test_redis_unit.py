"""flowcraft-redis without a server: command packing, key layout, the auto-pipeline, colocation, plugins."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from redis.asyncio.connection import Connection

from flowcraft.plugins import registry
from flowcraft_redis import (
    RedisContext,
    RedisCoordinationStore,
    RedisStatusStore,
    batcher_for,
    colocate,
    make_client,
)
from flowcraft_redis._client import Keys, Packed, _FastConnection, dumps, fast_packing, loads


class _Name(enum.StrEnum):
    A = "name-a"


def _reference(*args: object) -> bytes:
    return b"".join(Connection().pack_command(*args))  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [
    ("EVALSHA", "abc", 0, "ü:/ x", b"\x00\xff", 12, 1.5, -3, ""),
    ("HSET", "k", "f", "x" * 10_000),
    ("HSET", "k", "y" * 1023, "z" * 1024, "é" * 512, 2**70, -0.0, 1e300),
    ("GET", _Name.A),
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


def test_key_layout_puts_run_ids_last_as_a_hash_tag() -> None:
    keys = Keys("p:")
    assert keys.ctx("a:b") == "p:ctx:{a:b}" and keys.status("r") == "p:status:{r}" and keys.run("r") == "p:run:{r}"
    assert keys.changes("r") == "p:changed:{r}"
    assert keys.idx_status("running") == "p:idx:status:running" and keys.idx_created == "p:idx:created"


def test_json_round_trip_keeps_types() -> None:
    value = {"none": None, "list": [], "dict": {}, "float": 0.1 + 0.2, "big": 2**70, "text": "ü"}
    assert loads(dumps(value).encode()) == value


def test_one_auto_pipeline_per_client() -> None:
    client = make_client("redis://127.0.0.1:1/0")
    assert batcher_for(client) is batcher_for(client)
    assert batcher_for(make_client("redis://127.0.0.1:1/0")) is not batcher_for(client)
    context, status = RedisContext(client, key_prefix="a:"), RedisStatusStore(client, key_prefix="b:")
    assert context.batcher is status.batcher is RedisCoordinationStore(client).batcher


def test_applies_context_only_when_colocated_explicitly() -> None:
    client = make_client("redis://127.0.0.1:1/0")
    coordination = RedisCoordinationStore(client, key_prefix="u:")
    RedisContext(client, key_prefix="u:")  # merely existing on the same client and prefix changes nothing
    assert not coordination.applies_context and coordination.dispatcher is None
    colocate(RedisStatusStore(client, key_prefix="u:"), coordination)
    assert not coordination.applies_context  # no context store among the colocated ones
    fresh = RedisCoordinationStore(client, key_prefix="u:")
    colocate(RedisContext(client, key_prefix="u:"), fresh)
    assert fresh.applies_context
    forced = RedisCoordinationStore(client, key_prefix="u:", applies_context=False)
    colocate(RedisContext(client, key_prefix="u:"), forced)
    assert not forced.applies_context


def test_colocation_needs_one_client_and_prefix_and_one_component_per_kind() -> None:
    client = make_client("redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="client and key prefix"):
        colocate(RedisContext(client, key_prefix="a:"), RedisCoordinationStore(client, key_prefix="b:"))
    with pytest.raises(ValueError, match="client and key prefix"):
        colocate(RedisContext(client), RedisCoordinationStore(make_client("redis://127.0.0.1:1/0")))
    colocation = colocate(RedisContext(client))
    with pytest.raises(ValueError, match="already has a context"):
        colocation.add(RedisContext(client))


def test_from_config_shares_the_client_but_never_colocates() -> None:
    options: dict[str, Any] = {"redis_url": "redis://127.0.0.1:1/0", "key_prefix": "c:"}
    shared: dict[str, Any] = {}
    context = RedisContext.from_config(options, shared)
    coordination = RedisCoordinationStore.from_config(options, shared)
    assert coordination.redis is context.redis  # one client per URL among the components of one build
    assert not coordination.applies_context and not coordination.dispatches  # only a preset factory wires them


def test_plugin_registers_lazily() -> None:
    reg = registry(refresh=True)
    assert "redis" in reg.names("context") and "redis" in reg.names("status") and "redis" in reg.names("coordination")
    assert reg.component("coordination", "redis") is RedisCoordinationStore
    assert reg.component("status", "redis") is RedisStatusStore
    store = RedisStatusStore.from_config({"redis_url": "redis://127.0.0.1:1/0", "state_ttl_seconds": "60"}, {})
    assert store.state_ttl_seconds == 60 and store.key_prefix == "flowcraft:"


def test_cluster_clients_from_url_or_option() -> None:
    from redis.asyncio import RedisCluster

    from flowcraft.errors import ConfigError
    from flowcraft_redis import make_any_client, shared_any_client, shared_client
    from flowcraft_redis._client import is_cluster

    assert is_cluster(make_any_client("redis+cluster://127.0.0.1:1"))
    assert is_cluster(make_any_client("rediss+cluster://127.0.0.1:1/0"))
    assert is_cluster(make_any_client("redis://127.0.0.1:1", cluster=True))
    assert not is_cluster(make_any_client("redis://127.0.0.1:1/0"))
    assert fast_packing(make_any_client("redis+cluster://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="only database 0"):
        make_any_client("redis+cluster://127.0.0.1:1/3")
    with pytest.raises(ConfigError, match="redis_cluster needs"):
        make_any_client("unix:///tmp/redis.sock", cluster=True)
    with pytest.raises(ConfigError, match="does not support"):  # components that need one server say so
        make_client("redis+cluster://127.0.0.1:1")
    shared: dict[str, Any] = {}
    client = shared_any_client({"redis_url": "redis://127.0.0.1:1/0", "redis_cluster": "true"}, shared)
    assert isinstance(client, RedisCluster)
    assert shared_any_client({"redis_url": "redis+cluster://127.0.0.1:1/0"}, shared) is client
    with pytest.raises(ConfigError, match="does not support"):
        shared_client({"redis_url": "redis+cluster://127.0.0.1:1/0"}, shared)
    single = shared_client({"redis_url": "redis://127.0.0.1:1/0"}, shared)
    assert shared_any_client({"redis_url": "redis://127.0.0.1:1/0"}, shared) is single
