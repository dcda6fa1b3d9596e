"""RedisCoordinationStore.start (Capabilities.starts) against a real redis-server: one script leaves a run's
record, its pending jobs and its queue entries exactly as the three steps it replaces (status.create, schedule,
queue.enqueue) do, for both rq queue layouts."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
import test_rq_queue

from flowcraft.spi import Backend, Job, RunRecord
from flowcraft_redis import RedisCoordinationStore
from flowcraft_rq import RqQueue

pytestmark = pytest.mark.asyncio
backend, sync_redis = test_rq_queue.backend, test_rq_queue.sync_redis  # its fixtures, with the options below


@pytest.fixture(params=["rq", "lean"])
def options(redis_url: str, redis_prefix: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """test_rq_queue's backend, in both queue layouts."""
    return {"redis_url": redis_url, "key_prefix": redis_prefix, "queue_name": f"q-{uuid.uuid4().hex[:10]}",
            "queue_layout": request.param}


def _record(run_id: str) -> RunRecord:
    return RunRecord(run_id=run_id, blueprint_id="bp", version="1", status="running", input={"x": [1.5, [], {}]})


def _jobs(run_id: str) -> list[Job]:
    return [Job(run_id, "bp", "a", input={"x": [1.5, [], {}]}, has_input=True),
            Job(run_id, "bp", "b", input=2, has_input=True)]


def _parts(backend: Backend) -> tuple[RedisCoordinationStore, RqQueue]:
    coordination, queue = backend.coordination, backend.queue
    assert isinstance(coordination, RedisCoordinationStore) and isinstance(queue, RqQueue)
    return coordination, queue


def _state(sync_redis: redis.Redis, backend: Backend, run_id: str) -> dict[str, Any]:
    """What a run's start wrote, without the times and ids that differ between two runs."""
    coordination, queue = _parts(backend)
    status = {k: v for k, v in sync_redis.hgetall(coordination.keys.status(run_id)).items()
              if k not in (b"run_id", b"created_at", b"updated_at")}
    run = {k.replace(run_id.encode(), b"<run>"): v.replace(run_id.encode(), b"<run>")
           for k, v in sync_redis.hgetall(coordination.keys.run(run_id)).items()
           if k not in (b"#activity", b"#ttl")}
    queued = []
    for entry in sync_redis.lrange(queue.queue_key, 0, -1):
        entry_id, _, rest = entry.partition(b":")
        if rest:  # a lean entry naming the run's pending job: '<len(run id)>:<run id><job key>'
            if run_id.encode() in rest:
                queued.append(("lean", rest.replace(run_id.encode(), b"<run>")))
        else:
            job = sync_redis.hgetall(queue.job_prefix + entry_id.decode())
            if job[b"flowcraft_run"] == run_id.encode():
                queued.append(("rq", job[b"flowcraft_key"], job[b"status"]))
    scheduled = []
    for entry_id in sync_redis.zrange(f"{queue.rq_prefix}:scheduled:{queue.queue_name}", 0, -1):
        job = sync_redis.hgetall(queue.job_prefix + entry_id.decode())
        if job[b"flowcraft_run"] == run_id.encode():
            scheduled.append((job[b"flowcraft_key"], job[b"status"], job[b"data"].replace(run_id.encode(), b"<run>")))
    indexed = [sync_redis.zscore(coordination.keys.created_index(run_id), run_id) is not None,
               sync_redis.zscore(coordination.keys.status_index("running", run_id), run_id) is not None]
    ttls = [sync_redis.ttl(coordination.keys.status(run_id)) > 0, sync_redis.ttl(coordination.keys.run(run_id)) > 0]
    return {"status": status, "run": run, "queued": sorted(queued), "scheduled": scheduled, "indexed": indexed,
            "ttls": ttls}


async def test_start_writes_what_the_three_steps_write(backend: Backend, sync_redis: redis.Redis) -> None:
    coordination, queue = _parts(backend)
    assert coordination.starts and backend.capabilities.starts
    started, stepped = f"s-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    record = _record(started)
    assert await coordination.start(record, _jobs(started))
    assert record.created_at > 0 and record.updated_at >= record.created_at
    assert await backend.status.create(_record(stepped))
    await queue.enqueue(await coordination.schedule(stepped, _jobs(stepped)))
    assert _state(sync_redis, backend, started) == _state(sync_redis, backend, stepped)
    got = await backend.status.get(started)
    assert got is not None and got.status == "running" and got.input == {"x": [1.5, [], {}]}
    assert {p.job.key for p in await coordination.jobs(started)} == {j.key for j in _jobs(started)}
    assert queue.queue_key.encode() in sync_redis.smembers(queue.queues_key) or queue.dispatchers[0].registry is None


async def test_start_honours_a_jobs_due_time(backend: Backend, sync_redis: redis.Redis) -> None:
    """A job due later goes to the queue's scheduled registry, as a dispatching commit puts it."""
    coordination, _ = _parts(backend)
    run_id = f"s-{uuid.uuid4().hex}"
    later = Job(run_id, "bp", "later", input=None, due_at=time.time() + 3600)
    assert await coordination.start(_record(run_id), [*_jobs(run_id), later])
    state = _state(sync_redis, backend, run_id)
    assert [(key, status) for key, status, _ in state["scheduled"]] == [(later.key.encode(), b"scheduled")]
    assert len(state["queued"]) == 2 and state["run"][b"#pending"] == b"3"


async def test_a_second_start_changes_nothing(backend: Backend, sync_redis: redis.Redis) -> None:
    coordination, queue = _parts(backend)
    run_id = f"s-{uuid.uuid4().hex}"
    assert await coordination.start(_record(run_id), _jobs(run_id)[:1])
    before = _state(sync_redis, backend, run_id)
    length = sync_redis.llen(queue.queue_key)
    again = _record(run_id)
    assert not await coordination.start(again, _jobs(run_id))
    assert (again.created_at, again.updated_at) == (0.0, 0.0)  # as a refused status.create leaves them
    assert _state(sync_redis, backend, run_id) == before and sync_redis.llen(queue.queue_key) == length


async def test_start_keeps_jobs_a_run_hash_already_has(backend: Backend, sync_redis: redis.Redis) -> None:
    """A run hash that outlived its record: the jobs in it are not scheduled or queued again (as schedule's
    first-writer-wins leaves them)."""
    coordination, queue = _parts(backend)
    run_id = f"s-{uuid.uuid4().hex}"
    jobs = _jobs(run_id)
    await coordination.schedule(run_id, jobs[:1])
    length = sync_redis.llen(queue.queue_key)
    assert await coordination.start(_record(run_id), jobs[:2])
    assert sync_redis.llen(queue.queue_key) == length + 1
    assert sync_redis.hget(coordination.keys.run(run_id), "#pending") == b"2"
    delivered = await queue.dequeue(10, 0.1)
    assert [d.job.key for d in delivered if d.job.run_id == run_id] == [jobs[1].key]
