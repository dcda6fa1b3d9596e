"""The batcher's own connections (``flowcraft_redis._client._Wire``) against a real Redis: replies reach their
callers in order with redis-py's response callbacks, an error reply fails only its call, scripts come back after
a flush, and a dropped connection or a restarted server is reconnected; on a Redis Cluster one per primary, and a
stale slot map's redirection followed."""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot
from redis.exceptions import DataError, ResponseError

from flowcraft_redis import batcher_for, make_any_client, make_client
from servers import RedisClusterServer, RedisServer


async def test_concurrent_calls_get_their_own_replies_in_few_round_trips(redis_url: str) -> None:
    client = make_client(redis_url)
    batcher = batcher_for(client)
    try:
        await batcher.call("DEL", "wire:h", *(f"wire:k{i}" for i in range(200)))
        await asyncio.gather(*(batcher.call("SET", f"wire:k{i}", f"v{i}") for i in range(200)),
                             batcher.call("HSET", "wire:h", "a", "1", "b", "2"))
        trips = batcher.round_trips
        values, fields = await asyncio.gather(
            asyncio.gather(*(batcher.call("GET", f"wire:k{i}") for i in range(200))),
            batcher.call("HGETALL", "wire:h"))
        assert values == [f"v{i}".encode() for i in range(200)]
        assert fields == {b"a": b"1", b"b": b"2"}  # redis-py's HGETALL callback, as execute_command gives it
        assert batcher.round_trips - trips <= 3
        assert batcher._wire is not None  # the lean path, not redis-py's pipeline
    finally:
        await client.aclose()


async def test_an_error_reply_fails_only_its_own_call(redis_url: str) -> None:
    client = make_client(redis_url)
    batcher = batcher_for(client)
    try:
        await batcher.call("SET", "wire:s", "x")
        replies: list[object] = await asyncio.gather(batcher.call("HGET", "wire:s", "f"),
                                                     batcher.call("GET", "wire:s"), return_exceptions=True)
        wrong, right = replies
        assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
        assert right == b"x"
    finally:
        await client.aclose()


async def test_scripts_are_loaded_again_after_a_flush(redis_url: str) -> None:
    client = make_client(redis_url)
    batcher = batcher_for(client)
    sha = batcher.script("return ARGV[1] .. KEYS[1]")
    try:
        assert await batcher.call_script(sha, ("k1",), "a") == b"ak1"
        await client.script_flush()
        first, second = await asyncio.gather(batcher.call_script(sha, ("k2",), "b"),
                                             batcher.call_script(sha, ("k3",), "c"))
        assert (first, second) == (b"bk2", b"ck3")
    finally:
        await client.aclose()


async def test_a_connection_the_server_drops_is_opened_again(redis_url: str) -> None:
    client = make_client(redis_url)
    other = make_client(redis_url)
    batcher = batcher_for(client)
    try:
        own_id = await batcher.call("CLIENT", "ID")
        assert await other.execute_command("CLIENT", "KILL", "ID", own_id) == 1  # type: ignore[no-untyped-call]
        assert await batcher.call("PING") is True  # redis-py's PING callback
        assert await batcher.call("CLIENT", "ID") != own_id
    finally:
        await client.aclose()
        await other.aclose()


async def test_a_restarted_server_is_reconnected(start_server: object) -> None:
    server: RedisServer = start_server(RedisServer)  # type: ignore[operator]
    client = make_client(server.url)
    batcher = batcher_for(client)
    try:
        await batcher.call("SET", "wire:r", "1")
        await asyncio.to_thread(server.restart)
        assert await batcher.call("SET", "wire:r", "2") is True
        assert await batcher.call("GET", "wire:r") == b"2"
    finally:
        await client.aclose()


@pytest.mark.parametrize("calls", [1, 3])
async def test_a_closed_client_reconnects_on_its_next_call(redis_url: str, calls: int) -> None:
    client = make_client(redis_url)
    batcher = batcher_for(client)
    try:
        await batcher.call("PING")
        await client.aclose()  # closes every connection of the pool, the batcher's too
        assert await asyncio.gather(*(batcher.call("PING") for _ in range(calls))) == [True] * calls
    finally:
        await client.aclose()


async def test_an_argument_that_cannot_be_sent_fails_its_batch_and_leaves_the_next_in_step(redis_url: str) -> None:
    client = make_client(redis_url)
    batcher = batcher_for(client)
    try:
        await batcher.call("SET", "wire:p", "ok")
        with pytest.raises(DataError):
            await batcher.call("SET", "wire:q", {"not": "encodable"})
        assert await asyncio.gather(batcher.call("GET", "wire:p"), batcher.call("EXISTS", "wire:q")) == [b"ok", 0]
    finally:
        await client.aclose()


async def test_on_a_cluster_each_primary_gets_its_part_and_a_redirection_is_followed(
        redis_cluster_server: RedisClusterServer) -> None:
    client = make_any_client(redis_cluster_server.url)
    batcher = batcher_for(client)
    keys = [f"wire:c{i}" for i in range(60)]
    try:
        await asyncio.gather(*(batcher.call("HSET", key, "f", key) for key in keys))  # commands the batcher routes
        assert await asyncio.gather(*(batcher.call("HGET", key, "f") for key in keys)) == [key.encode() for key in keys]
        assert len(batcher._node_wires) == 3  # every primary's part on its own wire
        manager = client.nodes_manager  # a stale slot map: the key's slot said to be on another primary
        slot = key_slot(b"wire:c0")
        right = manager.slots_cache[slot][0]
        wrong = next(node for node in client.get_primaries() if node.name != right.name)
        manager.slots_cache[slot] = [wrong]
        assert await asyncio.gather(batcher.call("HGET", "wire:c0", "f"), batcher.call("HGET", "wire:c1", "f")) == [
            b"wire:c0", b"wire:c1"]  # MOVED: sent again through redis-py's cluster pipeline
    finally:
        await client.aclose()
