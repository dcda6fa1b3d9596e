"""flowcraft-redis stores against a real redis-server: key layout, TTLs, indexes, atomic commit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from flowcraft.spi import Arrival, Completion, Job, RunRecord, Transition
from flowcraft_redis import (
    RedisContext,
    RedisCoordinationStore,
    RedisStatusStore,
    colocate,
    make_client,
)
from flowcraft_redis.layout import Keys, lease_field

TTL = 3600


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = make_client(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
def stores(client: Redis, redis_prefix: str) -> tuple[RedisContext, RedisStatusStore, RedisCoordinationStore]:
    built = (RedisContext(client, key_prefix=redis_prefix, state_ttl_seconds=TTL),
             RedisStatusStore(client, key_prefix=redis_prefix, state_ttl_seconds=TTL),
             RedisCoordinationStore(client, key_prefix=redis_prefix, state_ttl_seconds=TTL))
    colocate(*built)
    return built


def _arrival(run: str, target: str, member: str, expected: tuple[str, ...], arrived: bool = True,
             contribution: Any = None, strategy: str = "all") -> Arrival:
    single = len(expected) <= 1
    job = Job(run, "bp", target, input=contribution if single else None, has_input=single)
    return Arrival(job, member, arrived=arrived, contribution=contribution, expected=expected, strategy=strategy)  # type: ignore[arg-type]


async def test_context_one_hash_per_run_with_json_and_none(stores: Any, client: Redis, redis_prefix: str) -> None:
    context = stores[0]
    run = "run:1/ü x"
    await context.apply(run, {"a": None, "b": {"n": 1.1, "l": [], "d": {}}, "big": 2**70})
    assert await context.get_many(run, ["a", "b", "missing", "big"]) == {
        "a": None, "b": {"n": 1.1, "l": [], "d": {}}, "big": 2**70}
    assert await client.hget(Keys(redis_prefix).ctx(run), "a") == b"null"
    assert 0 < await client.ttl(Keys(redis_prefix).ctx(run)) <= TTL
    await context.apply(run, {"c": 1}, ["a", "c"])
    assert await context.get_all(run) == {"b": {"n": 1.1, "l": [], "d": {}}, "big": 2**70}
    await context.delete_run(run)
    assert await context.get_all(run) == {}


async def test_status_record_hash_indexes_and_cas(stores: Any, client: Redis, redis_prefix: str) -> None:
    status = stores[1]
    run = "r:1 ü"
    assert await status.create(RunRecord(run, "bp", input={"x": [1, 2]}))
    assert not await status.create(RunRecord(run, "bp"))
    key = Keys(redis_prefix).status(run)
    assert await client.hget(key, "status") == b"running"
    assert 0 < await client.ttl(key) <= TTL
    assert await client.zscore(f"{redis_prefix}idx:created", run) is not None
    assert await client.zscore(f"{redis_prefix}idx:status:running", run) is not None
    results = await asyncio.gather(*(status.transition(run, ["running"], "completed", {"awaiting": []})
                                     for _ in range(10)))
    assert sum(r is not None for r in results) == 1
    assert await client.zscore(f"{redis_prefix}idx:status:running", run) is None
    assert await client.zscore(f"{redis_prefix}idx:status:completed", run) is not None
    record = await status.get(run)
    assert record is not None and record.status == "completed" and record.input == {"x": [1, 2]}
    with pytest.raises(ValueError, match="cannot change"):
        await status.transition(run, ["completed"], "failed", {"run_id": "other"})


async def test_status_list_pages_newest_first_across_equal_timestamps(stores: Any) -> None:
    status = stores[1]
    base = time.time() - 100  # records older than state_ttl_seconds fall out of the index
    for i in range(7):
        await status.create(RunRecord(f"run-{i}", "bp" if i % 2 else "other", created_at=base + i // 3))
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await status.list(limit=2, cursor=cursor)
        seen += [r.run_id for r in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(f"run-{i}" for i in range(7)) and len(seen) == 7
    created = [int(r.split("-")[1]) // 3 for r in seen]
    assert created == sorted(created, reverse=True)
    page, _ = await status.list(blueprint_id="bp", limit=10)
    assert {r.run_id for r in page} == {"run-1", "run-3", "run-5"}


async def test_stalled_uses_the_active_indexes(stores: Any) -> None:
    status = stores[1]
    await status.create(RunRecord("old", "bp"))
    await status.create(RunRecord("done", "bp"))
    await status.transition("done", ["running"], "completed", {})
    stalled = await status.stalled(time.time() + 1)
    assert [r.run_id for r in stalled] == ["old"]
    assert await status.stalled(time.time() - 60) == []


async def test_applies_context_only_when_colocated(client: Redis, redis_url: str) -> None:
    prefix = f"fctest:{uuid.uuid4().hex}:"
    alone = RedisCoordinationStore(client, key_prefix=prefix)
    RedisContext(client, key_prefix=prefix)
    assert alone.applies_context is False  # wired explicitly, never by what else exists in the process
    paired = RedisCoordinationStore(client, key_prefix=prefix)
    colocate(RedisContext(client, key_prefix=prefix), paired)
    assert paired.applies_context is True
    run = "ctx-apply"
    await paired.schedule(run, [Job(run, "bp", "a")])
    await paired.commit(Transition(run, "0:a",
                                   completion=Completion("a", output=1, token="t", context_updates={"k": 1}),
                                   finish=True))
    assert await RedisContext(client, key_prefix=prefix).get_all(run) == {"k": 1}
    await alone.schedule("ctx-skip", [Job("ctx-skip", "bp", "a")])
    await alone.commit(Transition("ctx-skip", "0:a",
                                  completion=Completion("a", output=1, token="t", context_updates={"k": 1}),
                                  finish=True))
    assert await RedisContext(client, key_prefix=prefix).get_all("ctx-skip") == {}
    other_client = make_client(redis_url)
    with pytest.raises(ValueError, match="client and key prefix"):
        colocate(RedisContext(client, key_prefix=prefix), RedisCoordinationStore(other_client, key_prefix=prefix))
    await other_client.aclose()


async def lease_holder(client: Redis, prefix: str, run: str, job_key: str) -> str | None:
    """Who holds the job's lease in the run's coordination hash (None: nobody; a dropped lease is empty)."""
    raw = await client.hget(Keys(prefix).run(run), lease_field(job_key))
    return raw.decode().split(" ", 1)[1] if raw else None


async def test_finishing_commit_releases_the_owners_lease(stores: Any, client: Redis, redis_prefix: str) -> None:
    coordination = stores[2]
    run = "lease-run"
    await coordination.schedule(run, [Job(run, "bp", "a"), Job(run, "bp", "b")])
    assert (await coordination.begin(Job(run, "bp", "a"), "w1", 30)).lease
    await coordination.commit(Transition(run, "0:a", completion=Completion("a", output=1, token="t"), owner="w1"))
    assert coordination.releases_lease and await lease_holder(client, redis_prefix, run, "0:a") == "w1"
    finished = await coordination.commit(Transition(run, "0:a", completion=None, finish=True, owner="w1"))
    assert finished.conflict is None and not coordination.dispatches  # no queue colocated: the engine enqueues
    assert await lease_holder(client, redis_prefix, run, "0:a") is None
    # another owner's lease is left alone; without an owner nothing is released
    assert (await coordination.begin(Job(run, "bp", "b"), "w2", 30)).lease
    other = await coordination.commit(Transition(run, "0:b", completion=Completion("b", output=1, token="u"),
                                                 finish=True, owner="w1"))
    assert await lease_holder(client, redis_prefix, run, "0:b") == "w2" and other.pending == 0
    anonymous = await coordination.commit(Transition(run, "0:b", completion=None, finish=True))
    assert anonymous.conflict is None and await lease_holder(client, redis_prefix, run, "0:b") == "w2"


async def test_begin_and_get_always_read_redis(stores: Any, client: Redis, redis_prefix: str) -> None:
    _, status, coordination = stores
    run = "fresh-run"
    await status.create(RunRecord(run, "bp"))
    await client.hset(Keys(redis_prefix).status(run), "status", "cancelled")  # another process's write
    record = await status.get(run)
    assert record is not None and record.status == "cancelled"
    await coordination.schedule(run, [Job(run, "bp", "a")])
    job = Job(run, "bp", "a")
    assert (await coordination.begin(job, "w1", 30)).lease
    assert not (await coordination.begin(job, "w2", 30)).lease
    await coordination.release(run, "0:a", "w1")
    assert (await coordination.begin(job, "w2", 30)).lease


async def test_commit_writes_context_and_ttls_in_one_call(stores: Any, client: Redis, redis_prefix: str) -> None:
    context, _, coordination = stores
    run = "run/ctx:1"
    assert coordination.applies_context
    await coordination.schedule(run, [Job(run, "bp", "a")])
    completion = Completion("a", output={"v": 1}, token="t1", context_updates={"_outputs.a": {"v": 1}, "k": None})
    before = coordination.batcher.commands
    committed = await coordination.commit(Transition(run, "0:a", completion=completion,
                                                     arrivals=(_arrival(run, "b", "a", ("a",), contribution={"v": 1}),),
                                                     finish=True))
    assert coordination.batcher.commands - before == 1  # one round trip
    assert [job.node_id for job in committed.fired] == ["b"] and committed.pending == 1
    assert await context.get_all(run) == {"_outputs.a": {"v": 1}, "k": None}
    keys = Keys(redis_prefix)
    for key in (keys.run(run), keys.ctx(run)):
        assert 0 < await client.ttl(key) <= TTL


async def test_join_input_is_spliced_without_losing_json_types(stores: Any) -> None:
    coordination = stores[2]
    run = "join-run"
    expected = ("p:1", "p/2", "p 3")
    values: dict[str, Any] = {"p:1": [], "p/2": {"f": 0.1 + 0.2, "big": 2**64 + 1}, "p 3": None}
    results = await asyncio.gather(*(
        coordination.commit(Transition(run, f"0:{m}", completion=Completion(m, output=values[m], token=m),
                                       arrivals=(_arrival(run, "j", m, expected, contribution=values[m]),)))
        for m in expected))
    fired = [job for result in results for job in result.fired]
    assert len(fired) == 1 and fired[0].input == values and fired[0].has_input


async def test_keys_of_runs_with_separators_never_collide(stores: Any) -> None:
    coordination = stores[2]
    # run "x" target "T:jobs" vs run "x:arr:T" - the arrival key carries the run id's byte length
    a = await coordination.commit(Transition("x", "0:s", completion=None,
                                             arrivals=(_arrival("x", "T:jobs", "m1", ("m1", "m2")),)))
    b = await coordination.commit(Transition("x:arr:1:x:T", "0:s", completion=None,
                                             arrivals=(_arrival("x:arr:1:x:T", "jobs", "m2", ("m1", "m2")),)))
    assert a.fired == () and b.fired == ()


async def test_no_keys_or_scan_commands(stores: Any, client: Redis) -> None:
    _, status, coordination = stores
    before = await client.info("commandstats")
    await status.create(RunRecord("a", "bp"))
    await status.list()
    await status.stalled(time.time() + 1)
    await coordination.jobs("a")
    await coordination.delete_run("a")
    after = await client.info("commandstats")
    for command in ("cmdstat_keys", "cmdstat_scan"):
        assert after.get(command, {}).get("calls", 0) == before.get(command, {}).get("calls", 0)
