"""flowcraft-redis change notifications on a 3-shard Redis Cluster (the session's ``redis_cluster_server``): the
transition script publishes with ``SPUBLISH`` (the message stays in the run's shard), the feed subscribes with
``SSUBSCRIBE`` on the primary of each channel's slot (one command per slot), follows a channel whose slot moves to
another primary, and subscribes again after its connection to a primary is lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.cluster import key_slot

from flowcraft.spi import RunRecord
from flowcraft_redis import RedisStatusStore, make_any_client
from flowcraft_redis._changes import ChangeFeed
from flowcraft_redis._client import DEFAULT_GROUPS, group_tags


@pytest_asyncio.fixture
async def client(redis_cluster_server: Any) -> AsyncIterator[RedisCluster]:
    redis = make_any_client(redis_cluster_server.url)
    assert isinstance(redis, RedisCluster)
    await redis.initialize()
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest_asyncio.fixture
async def feed(redis_cluster_server: Any) -> AsyncIterator[ChangeFeed]:
    """A change feed on a cluster client of its own (closed after the feed)."""
    redis = make_any_client(redis_cluster_server.url)
    assert isinstance(redis, RedisCluster)
    await redis.initialize()
    changes = ChangeFeed(redis)
    try:
        yield changes
    finally:
        await changes.close()
        await redis.aclose()


async def calls(client: RedisCluster, command: str) -> int:
    """``command``'s calls over every primary (``INFO commandstats``)."""
    total = 0
    for node in client.get_primaries():
        stats = await client.info("commandstats", target_nodes=node)
        total += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    return total


async def test_transitions_publish_in_their_shard_and_waits_subscribe_once_per_slot(
        client: RedisCluster, redis_cluster_server: Any, redis_prefix: str) -> None:
    status = RedisStatusStore(make_any_client(redis_cluster_server.url), key_prefix=redis_prefix)
    try:
        runs = [f"many-{i}" for i in range(36)]
        for run in runs:
            assert await status.create(RunRecord(run, "bp"))
        slots = {key_slot(status.keys.changes(run).encode()) for run in runs}
        assert len(slots) > 3  # the runs' channels are in several groups, on every primary
        before = {name: await calls(client, name) for name in ("ssubscribe", "subscribe", "spublish", "publish")}
        began = time.monotonic()
        await asyncio.gather(*(status.wait_for_change(run, 5.0) for run in runs))
        assert time.monotonic() - began < 2.0  # each returned at its subscription, not at its timeout
        assert await calls(client, "ssubscribe") - before["ssubscribe"] == len(slots)
        assert len(status._changes._shards) == 3
        waits = [asyncio.create_task(status.wait_for_change(run, 5.0)) for run in runs]
        await asyncio.sleep(0.05)
        assert not any(wait.done() for wait in waits)
        for run in runs:
            await status.transition(run, ["running"], "completed", {})
        await asyncio.wait_for(asyncio.gather(*waits), 2.0)
        assert await calls(client, "spublish") - before["spublish"] == len(runs)
        assert await calls(client, "publish") == before["publish"]  # nothing broadcast over the cluster bus
        assert await calls(client, "subscribe") == before["subscribe"]
    finally:
        await status.close()


def _free_channel(prefix: str) -> tuple[str, int]:
    """A channel whose slot holds no queue group (so no test's keys: the slot can be moved and back)."""
    groups = {key_slot(tag.encode()) for tag in group_tags(DEFAULT_GROUPS)}
    while True:
        channel = f"{prefix}changed:{{move-{uuid.uuid4().hex[:8]}}}r"
        slot = key_slot(channel.encode())
        if slot not in groups:
            return channel, slot


async def _assign(client: RedisCluster, slot: int, owner: ClusterNode) -> None:
    """``slot`` (empty) given to ``owner``: ``CLUSTER SETSLOT NODE`` on the new owner first, then the others."""
    owner_id = await client.execute_command("CLUSTER", "MYID", target_nodes=owner)
    owner_id = owner_id.decode() if isinstance(owner_id, bytes) else owner_id
    others = [node for node in client.get_primaries() if node.name != owner.name]
    for node in (owner, *others):
        await client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner_id, target_nodes=node)
    await client.nodes_manager.initialize()


async def test_a_channel_whose_slot_moves_is_followed_to_its_new_primary(client: RedisCluster, feed: ChangeFeed,
                                                                         redis_prefix: str) -> None:
    """The primary that loses the slot drops the subscription (an unrequested ``sunsubscribe``): the waiter is woken
    (a change may be missed) and the channel subscribed on the slot's new primary, where the next message wakes it."""
    channel, slot = _free_channel(redis_prefix)
    assert await client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot,
                                        target_nodes=client.get_node_from_key(channel)) == 0
    source = client.get_node_from_key(channel)
    target = next(node for node in client.get_primaries() if node.name != source.name)
    try:
        await feed.watch(channel, 2.0)
        waiting = asyncio.create_task(feed.wait(channel, 5.0))
        await asyncio.sleep(0.05)
        await _assign(client, slot, target)
        began = time.monotonic()
        await asyncio.wait_for(waiting, 2.0)  # woken by the move
        assert time.monotonic() - began < 1.0
        for _ in range(50):  # subscribed on the new primary
            numsub = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel, target_nodes=target)
            if numsub[1]:
                break
            await asyncio.sleep(0.05)
        assert numsub[1] == 1
        await feed.wait(channel, 0.5)  # the confirmation's wake, if it came after the move's
        await _woken_by_the_next_publish(client, feed, channel)
    finally:
        await _assign(client, slot, source)


async def _woken_by_the_next_publish(client: RedisCluster, feed: ChangeFeed, channel: str) -> None:
    """A wait on ``channel`` sleeps until the next ``SPUBLISH`` there, and that wakes it."""
    waiting = asyncio.create_task(feed.wait(channel, 5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await client.spublish(channel, "completed")
    await asyncio.wait_for(waiting, 2.0)


async def test_a_refused_ssubscribe_is_sent_again_where_the_refreshed_slot_map_puts_the_channel(
        client: RedisCluster, feed: ChangeFeed, redis_prefix: str) -> None:
    """The feed's slot map is stale (the slot moved after the feed's client read it): its ``SSUBSCRIBE`` goes to the
    old primary, which refuses it (``MOVED``); the feed refreshes the map and subscribes on the new primary."""
    channel, slot = _free_channel(redis_prefix)
    feed_client = feed._redis
    assert isinstance(feed_client, RedisCluster)
    source = client.get_node_from_key(channel)
    target = next(node for node in client.get_primaries() if node.name != source.name)
    await _assign(client, slot, target)
    try:
        assert feed_client.nodes_manager.slots_cache[slot][0].name == source.name  # stale
        began = time.monotonic()
        await feed.watch(channel, 3.0)
        assert time.monotonic() - began < 2.0 and feed._watches[channel.encode()].covered
        numsub = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel, target_nodes=target)
        assert numsub[1] == 1
        await feed.wait(channel, 0.3)  # the refusal's wake, if it came after the confirmation
        await _woken_by_the_next_publish(client, feed, channel)
    finally:
        await _assign(client, slot, source)


async def test_a_lost_connection_to_a_primary_wakes_its_waiters_and_subscribes_again(
        client: RedisCluster, feed: ChangeFeed, redis_prefix: str) -> None:
    channels = [f"{redis_prefix}changed:{{lost-{i}}}r" for i in range(12)]
    await asyncio.gather(*(feed.watch(channel, 2.0) for channel in channels))
    waits = [asyncio.create_task(feed.wait(channel, 5.0)) for channel in channels]
    await asyncio.sleep(0.05)
    for node in client.get_primaries():
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub", target_nodes=node)
    await asyncio.wait_for(asyncio.gather(*waits), 2.0)  # woken: what changed meanwhile is unknown
    for _ in range(50):
        subscribed = [(await client.execute_command("PUBSUB", "SHARDNUMSUB", channel,
                                                    target_nodes=client.get_node_from_key(channel)))[1]
                      for channel in channels]
        if all(subscribed):
            break
        await asyncio.sleep(0.05)
    assert all(count == 1 for count in subscribed)
    for channel in channels:
        await feed.wait(channel, 0.3)  # the confirmations' wakes
    waits = [asyncio.create_task(feed.wait(channel, 5.0)) for channel in channels]
    await asyncio.sleep(0.05)
    assert not any(wait.done() for wait in waits)
    for channel in channels:
        await client.spublish(channel, "completed")
    await asyncio.wait_for(asyncio.gather(*waits), 2.0)
