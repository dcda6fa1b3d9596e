"""The commit's TTL refresh (lua/commit.lua) against a real redis-server: the run hash and the context hash get their
TTL from the first commit that writes them and again once less than 7/8 of it may be left (the run hash's fields
``#ttl`` and ``#ctxttl``), not from every commit; a context hash emptied by deletes and written again gets one."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial

from redis.asyncio import Redis

from flowcraft.spi import Completion, Job, Transition
from flowcraft_redis import RedisContext, RedisCoordinationStore, colocate, make_client
from flowcraft_redis.layout import Keys

TTL = 800


async def _with_store(redis_url: str, prefix: str,
                      check: Callable[[Redis, RedisCoordinationStore], Awaitable[None]]) -> None:
    """``check`` with a client and a coordination store that applies the context (the commit writes it)."""
    async with make_client(redis_url) as client:
        coordination = RedisCoordinationStore(client, key_prefix=prefix, state_ttl_seconds=TTL)
        colocate(RedisContext(client, key_prefix=prefix, state_ttl_seconds=TTL), coordination)
        assert coordination.applies_context
        await check(client, coordination)


async def _commit(store: RedisCoordinationStore, run: str, node: str, updates: dict[str, int],
                  deletes: tuple[str, ...] = ()) -> None:
    completion = Completion(node, output=1, token=f"t-{node}", context_updates=updates, context_deletes=deletes)
    committed = await store.commit(Transition(run, f"0:{node}", completion=completion, finish=True))
    assert committed.conflict is None


async def test_commits_refresh_ttls_only_when_due(redis_url: str, redis_prefix: str) -> None:
    await _with_store(redis_url, redis_prefix, partial(_refresh_only_when_due, redis_prefix))


async def _refresh_only_when_due(redis_prefix: str, client: Redis, store: RedisCoordinationStore) -> None:
    keys = Keys(redis_prefix)
    run = "ttl-run"
    await store.schedule(run, [Job(run, "bp", n) for n in ("a", "b", "c", "d")])
    await client.persist(keys.run(run))  # as if the TTL had run down: only the commit's own refresh sets one
    await _commit(store, run, "a", {"x": 1})
    assert TTL - 5 < await client.ttl(keys.run(run)) <= TTL  # no '#ttl' yet: refreshed
    assert TTL - 5 < await client.ttl(keys.ctx(run)) <= TTL
    # a commit soon after leaves both TTLs alone
    await client.expire(keys.run(run), 700)
    await client.expire(keys.ctx(run), 700)
    await _commit(store, run, "b", {"y": 2})
    assert await client.ttl(keys.run(run)) <= 700 and await client.ttl(keys.ctx(run)) <= 700
    # an eighth of the TTL after the last refresh, the next commit refreshes both
    old = str(int(time.time()) - TTL // 8 - 1)
    await client.hset(keys.run(run), mapping={"#ttl": old, "#ctxttl": old})
    await _commit(store, run, "c", {"z": 3})
    assert await client.ttl(keys.run(run)) > 700 and await client.ttl(keys.ctx(run)) > 700


async def test_a_context_emptied_by_deletes_gets_a_ttl_when_written_again(redis_url: str, redis_prefix: str) -> None:
    await _with_store(redis_url, redis_prefix, partial(_emptied_context, redis_prefix))


async def _emptied_context(redis_prefix: str, client: Redis, store: RedisCoordinationStore) -> None:
    keys = Keys(redis_prefix)
    run = "ttl-deletes"
    await store.schedule(run, [Job(run, "bp", n) for n in ("a", "b", "c")])
    await _commit(store, run, "a", {"x": 1})
    await _commit(store, run, "b", {}, deletes=("x",))
    assert not await client.exists(keys.ctx(run))  # emptied: the key is gone
    await _commit(store, run, "c", {"y": 2})  # within an eighth of the TTL of the first write
    assert TTL - 5 < await client.ttl(keys.ctx(run)) <= TTL
    assert await RedisContext(client, key_prefix=redis_prefix).get_all(run) == {"y": 2}


async def test_a_context_emptied_outside_commits_gets_a_ttl_when_written_again(redis_url: str,
                                                                              redis_prefix: str) -> None:
    await _with_store(redis_url, redis_prefix, partial(_emptied_outside_commits, redis_prefix))


async def _emptied_outside_commits(redis_prefix: str, client: Redis, store: RedisCoordinationStore) -> None:
    keys = Keys(redis_prefix)
    context = RedisContext(client, key_prefix=redis_prefix, state_ttl_seconds=TTL)
    for run, empty in (("ttl-apply", partial(context.apply, updates={}, deletes=("x",))),
                       ("ttl-delete-run", context.delete_run)):
        await store.schedule(run, [Job(run, "bp", n) for n in ("a", "b")])
        await _commit(store, run, "a", {"x": 1})  # sets the context's TTL and '#ctxttl'
        await empty(run)
        assert not await client.exists(keys.ctx(run))
        await _commit(store, run, "b", {"y": 2})  # within an eighth of the TTL of the first write
        assert TTL - 5 < await client.ttl(keys.ctx(run)) <= TTL, run
