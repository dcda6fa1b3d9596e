"""The Redis coordination scripts take a commit, a start and a join of any size against a real redis-server, in both
rq queue layouts: Lua's ``unpack`` fails past ~8000 values (its C stack), so lua/commit.lua and lua/start.lua read
and write the run hash in slices once a call's fields run into the thousands (a blueprint's 9000-way fan-out, a run
started with 9000 jobs, a join of 9000 members), as the memory and sqlite stores take them, and the rq queue's
scripts push ids in slices."""

from __future__ import annotations

import uuid
from typing import Any, cast

import pytest
import redis
import test_rq_queue

from flowcraft.spi import Arrival, Backend, Completion, Job, RunRecord, Transition
from flowcraft_redis import RedisCoordinationStore, make_client
from flowcraft_redis.layout import dumps
from flowcraft_rq import RqQueue

pytestmark = pytest.mark.asyncio
backend, sync_redis = test_rq_queue.backend, test_rq_queue.sync_redis  # its fixtures, with the options below

#: more values than one ``unpack`` takes
WIDE = 9000


@pytest.fixture(params=["rq", "lean"])
def options(redis_url: str, redis_prefix: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """test_rq_queue's backend, in both queue layouts."""
    return {"redis_url": redis_url, "key_prefix": redis_prefix, "queue_name": f"q-{uuid.uuid4().hex[:10]}",
            "queue_layout": request.param}


def _parts(backend: Backend) -> tuple[RedisCoordinationStore, RqQueue]:
    coordination, queue = backend.coordination, backend.queue
    assert isinstance(coordination, RedisCoordinationStore) and isinstance(queue, RqQueue)
    return coordination, queue


def _record(run_id: str) -> RunRecord:
    return RunRecord(run_id=run_id, blueprint_id="bp", version="1", status="running", input=0)


def _jobs(run_id: str, prefix: str = "n") -> list[Job]:
    return [Job(run_id, "bp", f"{prefix}{i}", version="1", input=i, has_input=True) for i in range(WIDE)]


async def _started(backend: Backend) -> tuple[str, Job, str]:
    """A run started with one job 'a', received by worker 'w': its id, the job and the delivery's receipt."""
    coordination, queue = _parts(backend)
    run_id = f"big-{uuid.uuid4().hex}"
    first = Job(run_id, "bp", "a", version="1", input=0, has_input=True)
    assert await coordination.start(_record(run_id), [first])
    (delivery,) = await queue.receive(1, 1.0, "w", 30)
    assert delivery.job.key == first.key
    return run_id, first, delivery.receipt


async def _drain(queue: RqQueue, run_id: str) -> list[Job]:
    """Every job of the run the queue delivers now."""
    got: list[Job] = []
    while batch := await queue.dequeue(1000, 0.1):
        got.extend(delivery.job for delivery in batch if delivery.job.run_id == run_id)
    return got


@pytest.mark.parametrize("handing", [0, 1])
async def test_a_commit_fires_more_jobs_than_lua_unpacks(backend: Backend, handing: int) -> None:
    """A 9000-way fan-out in one commit (the general path; handing: one fired job is handed to the committing
    worker, which reads every target's lease and completion too): all pending, queued and deliverable."""
    coordination, queue = _parts(backend)
    run_id, first, receipt = await _started(backend)
    targets = _jobs(run_id)
    arrivals = tuple(Arrival(job, "a", arrived=True, contribution=job.input, expected=("a",)) for job in targets)
    committed = await coordination.commit(Transition(
        run_id, first.key, completion=Completion("a", output=1, token="t"), arrivals=arrivals, finish=True,
        owner="w", receipt=receipt, continue_up_to=handing, lease_seconds=30))
    assert committed.conflict is None and committed.pending == WIDE
    assert [job.key for job in committed.fired] == [job.key for job in targets]
    assert len(committed.continued) == handing
    pending = await coordination.jobs(run_id)
    assert sorted(p.job.key for p in pending) == sorted(job.key for job in targets)
    assert await queue.depth() == WIDE - handing
    delivered = await _drain(queue, run_id) + [d.job for d in committed.continued]
    assert sorted((job.key, job.input) for job in delivered) == sorted((job.key, job.input) for job in targets)
    # a replay of the commit fires nothing again
    again = await coordination.commit(Transition(
        run_id, first.key, completion=Completion("a", output=1, token="t"), arrivals=arrivals, finish=True))
    assert again.conflict is None and again.fired == () and again.pending == WIDE


async def test_a_start_of_more_jobs_than_lua_unpacks(backend: Backend, sync_redis: redis.Redis) -> None:
    """CoordinationStore.start with 9000 jobs leaves the run hash and the queue as the three steps it replaces
    (status.create, schedule, queue.enqueue)."""
    coordination, queue = _parts(backend)
    started, stepped = f"s-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    assert await coordination.start(_record(started), _jobs(started))
    assert await backend.status.create(_record(stepped))
    await queue.enqueue(await coordination.schedule(stepped, _jobs(stepped)))

    def run_hash(run_id: str) -> dict[str, str]:
        stored = cast("dict[bytes, bytes]", sync_redis.hgetall(coordination.keys.run(run_id)))
        return {k.decode().replace(run_id, "<run>"): v.decode().replace(run_id, "<run>")
                for k, v in stored.items() if k not in (b"#activity", b"#ttl")}

    assert run_hash(started) == run_hash(stepped)
    assert run_hash(started)["#pending"] == str(WIDE)
    assert sync_redis.ttl(coordination.keys.run(started)) > 0
    assert await queue.depth() == 2 * WIDE
    delivered = await _drain(queue, started)  # (the stepped run's jobs are drained with them)
    assert sorted(job.key for job in delivered) == sorted(job.key for job in _jobs(started))
    # a second start changes nothing
    assert not await coordination.start(_record(started), _jobs(started))
    assert await queue.depth() == 0 and run_hash(started)["#pending"] == str(WIDE)


@pytest.mark.parametrize("where", ["alone", "beside another"])
async def test_a_join_of_more_members_than_lua_unpacks(backend: Backend, sync_redis: redis.Redis, where: str) -> None:
    """A join expecting 9000 members, fired by its last member's arrival with the full input map, the commit's
    only arrival (which the one-arrival path leaves to the general path past 999 members) or beside another one.
    The first 8999 members' arrivals are written into the run hash as a commit records them (lua/commit.lua: field
    'a<length of the target's key> <target's key><member>', value '1' and the contribution's JSON): 8999 commits,
    each sending the 9000 expected members, would take minutes."""
    coordination, queue = _parts(backend)
    run_id, first, receipt = await _started(backend)
    members = tuple(f"m{i}" for i in range(WIDE))
    join = Job(run_id, "bp", "join", version="1")
    base = f"a{len(join.key)} {join.key}"
    sync_redis.hset(coordination.keys.run(run_id),
                    mapping={base + member: "1" + dumps({"v": i}) for i, member in enumerate(members[:-1])})
    last = Arrival(join, members[-1], arrived=True, contribution={"v": WIDE - 1}, expected=members)
    arrivals: tuple[Arrival, ...] = (last,)
    beside = Job(run_id, "bp", "beside", version="1", input=0, has_input=True)
    if where == "beside another":
        arrivals = (last, Arrival(beside, "a", arrived=True, contribution=0, expected=("a",)))
    fired = await coordination.commit(Transition(
        run_id, first.key, completion=Completion("a", output=1, token="t"), arrivals=arrivals, finish=True,
        owner="w", receipt=receipt))
    assert fired.conflict is None
    (joined, *rest) = fired.fired
    assert joined.key == join.key and [job.key for job in rest] == [beside.key for _ in rest]
    assert joined.input == {member: {"v": i} for i, member in enumerate(members)}
    delivered = {job.key: job for job in await _drain(queue, run_id)}
    assert delivered[join.key].input == joined.input
    # the join was recorded whole: a replay of the last arrival fires nothing again
    again = await coordination.commit(Transition(
        run_id, first.key, completion=Completion("a", output=1, token="t"), arrivals=arrivals, finish=True))
    assert again.conflict is None and again.fired == ()


async def test_a_commit_without_a_queue_on_redis_fires_more_jobs_than_lua_unpacks(redis_url: str,
                                                                                  redis_prefix: str) -> None:
    """The store alone, as the rabbitmq, azure and kafka presets use it (the engine enqueues what it fires): the same
    script, without the queue's Lua."""
    client = make_client(redis_url)
    try:
        coordination = RedisCoordinationStore(client, key_prefix=redis_prefix)
        run_id = f"big-{uuid.uuid4().hex}"
        first = Job(run_id, "bp", "a", version="1", input=0, has_input=True)
        await coordination.schedule(run_id, [first])
        targets = _jobs(run_id)
        arrivals = tuple(Arrival(job, "a", arrived=True, contribution=job.input, expected=("a",)) for job in targets)
        committed = await coordination.commit(Transition(
            run_id, first.key, completion=Completion("a", output=1, token="t"), arrivals=arrivals, finish=True))
        assert committed.conflict is None and committed.pending == WIDE
        assert [job.key for job in committed.fired] == [job.key for job in targets]
        assert sorted(p.job.key for p in await coordination.jobs(run_id)) == sorted(job.key for job in targets)
    finally:
        await client.aclose()


async def test_one_enqueue_of_more_jobs_than_lua_can_unpack(backend: Backend) -> None:
    """The queue list gets them in pushes of at most 1000 (lua/enqueue.lua, and the commit's dispatch)."""
    _, queue = _parts(backend)
    jobs = _jobs("big-run")
    await queue.enqueue(jobs)
    assert await queue.depth() == WIDE
    got = await queue.dequeue(WIDE, 1.0)
    assert sorted(delivery.job.node_id for delivery in got) == sorted(job.node_id for job in jobs)
