"""flowcraft-redis change notifications against a real redis-server: ``watch`` before a read misses no change
and needs no second read; the channels first waited on together are subscribed in one SUBSCRIBE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest_asyncio
from redis.asyncio import Redis

from flowcraft.spi import RunRecord
from flowcraft_redis import RedisContext, RedisCoordinationStore, RedisStatusStore, colocate, make_client


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = make_client(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest_asyncio.fixture
async def status(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStatusStore]:
    redis = make_client(redis_url)
    built = (RedisContext(redis, key_prefix=redis_prefix), RedisStatusStore(redis, key_prefix=redis_prefix),
             RedisCoordinationStore(redis, key_prefix=redis_prefix))
    colocate(*built)
    try:
        yield built[1]
    finally:
        await built[1].close()


async def subscribes(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_subscribe", {}).get("calls", 0))


async def test_a_watched_run_wakes_the_first_wait_and_misses_no_change(status: RedisStatusStore) -> None:
    """After ``watch`` the first wait waits for a change (it does not return at the subscription), and a change
    made between the caller's read and its wait ends that wait at once."""
    await status.create(RunRecord("w1", "bp"))
    await status.watch("w1")
    began = time.monotonic()
    await status.wait_for_change("w1", 0.3)  # nothing changed: the whole timeout
    assert time.monotonic() - began >= 0.25
    record = await status.get("w1")
    assert record is not None and record.status == "running"
    await status.transition("w1", ["running"], "completed", {})  # after the read, before the wait
    await asyncio.sleep(0.1)  # the message has arrived while nobody waits
    began = time.monotonic()
    await status.wait_for_change("w1", 5.0)
    assert time.monotonic() - began < 1.0


async def test_a_change_during_a_wait_after_watch_ends_it(status: RedisStatusStore) -> None:
    await status.create(RunRecord("w2", "bp"))
    await status.watch("w2")

    async def change_soon() -> None:
        await asyncio.sleep(0.2)
        await status.transition("w2", ["running"], "failed", {})

    changer = asyncio.create_task(change_soon())
    began = time.monotonic()
    await status.wait_for_change("w2", 5.0)
    assert 0.15 <= time.monotonic() - began < 2.0
    await changer


async def test_first_waits_of_one_iteration_subscribe_in_one_command(status: RedisStatusStore, client: Redis) -> None:
    """Many runs waited on at once: one SUBSCRIBE for all, each wait returns at its confirmation, and each run's
    change then wakes its own waiter."""
    runs = [f"many-{i}" for i in range(40)]
    for run in runs:
        await status.create(RunRecord(run, "bp"))
    before = await subscribes(client)
    began = time.monotonic()
    await asyncio.gather(*(status.wait_for_change(run, 5.0) for run in runs))
    assert time.monotonic() - began < 2.0  # each returned at its subscription, not at its timeout
    assert await subscribes(client) - before == 1
    waits = [asyncio.create_task(status.wait_for_change(run, 5.0)) for run in runs]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waits)
    for run in runs:
        await status.transition(run, ["running"], "completed", {})
    await asyncio.wait_for(asyncio.gather(*waits), 2.0)
    before = await subscribes(client)
    await asyncio.gather(*(status.watch(run) for run in ("more-1", "more-2", "more-3")))
    assert await subscribes(client) - before == 1


async def test_a_failed_subscription_fails_every_joined_wait_into_a_sleep(status: RedisStatusStore,
                                                                          redis_url: str) -> None:
    """A SUBSCRIBE that fails (the server is unreachable) fails each joined wait, which then sleeps its timeout
    (callers poll), and a later wait subscribes again."""
    feed = status._changes
    good = feed._new_pubsub
    feed._new_pubsub = lambda: Redis.from_url("redis://127.0.0.1:1/0").pubsub()  # type: ignore[method-assign]
    began = time.monotonic()
    await asyncio.gather(*(status.wait_for_change(f"down-{i}", 0.2) for i in range(3)))
    assert 0.15 <= time.monotonic() - began < 2.0
    assert not feed._watches
    feed._new_pubsub = good  # type: ignore[method-assign]
    feed._pubsub = None
    await status.create(RunRecord("down-0", "bp"))
    began = time.monotonic()
    await status.wait_for_change("down-0", 5.0)  # subscribed now: returns at the confirmation
    assert time.monotonic() - began < 1.0
