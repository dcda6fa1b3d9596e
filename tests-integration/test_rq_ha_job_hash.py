"""The rq layout's job hashes show rq's tools what rq shows for its own jobs, without a TTL (rq gives a queued job
none): a handed-over job and a dequeued one read back through rq as started by the worker, with their
description, timestamps, timeout and retries, and a redelivery counts its deliveries on (the count is written as a
string, not a Lua number)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis
import rq
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from test_rq_queue import backend, options, rq_queue, sync_redis  # noqa: F401  # fixtures (visibility timeout 1 s)

from flowcraft.spi import Arrival, Backend, Completion, Job, RunRecord, Transition
from flowcraft_rq import FUNC_NAME


def _rq_job(client: redis.Redis, job_id: str) -> Any:
    return rq.job.Job.fetch(job_id, connection=client, serializer=JSONSerializer)


async def test_a_handed_job_hash_is_read_by_rq_and_has_no_ttl(
        backend: Backend, sync_redis: redis.Redis) -> None:  # noqa: F811
    queue = rq_queue(backend)
    run = f"run-{uuid.uuid4().hex[:8]}"
    await backend.status.create(RunRecord(run, "bp"))
    first = Job(run, "bp", "a", input=0, has_input=True)
    await backend.coordination.schedule(run, [first])
    await queue.enqueue([first])
    (delivery,) = await queue.receive(1, 1.0, "w1", 30)
    dequeued = _rq_job(sync_redis, delivery.receipt.job_id)
    assert dequeued.get_status() == "started" and dequeued.worker_name == queue.worker_name
    assert dequeued.started_at and dequeued.last_heartbeat and dequeued.enqueued_at and dequeued.description
    assert sync_redis.hget(queue.job_prefix + delivery.receipt.job_id, "flowcraft_deliveries") == b"1"
    assert sync_redis.ttl(queue.job_prefix + delivery.receipt.job_id) == -1  # as rq leaves a queued job
    nxt = Job(run, "bp", "b", input=1, has_input=True)
    committed = await backend.coordination.commit(Transition(
        run, "0:a", completion=Completion("a", output=1, token="t"),
        arrivals=(Arrival(nxt, "a", arrived=True, contribution=1, expected=("a",)),), finish=True, owner="w1",
        receipt=delivery.receipt, continue_up_to=1, lease_seconds=30))
    (handed,) = committed.continued
    key = queue.job_prefix + handed.receipt.job_id
    job = _rq_job(sync_redis, handed.receipt.job_id)
    assert job.get_status() == "started" and job.worker_name == queue.worker_name
    assert job.origin == queue.queue_name and job.func_name == FUNC_NAME and job.args[0]["node_id"] == "b"
    assert job.timeout == -1 and job.retries_left == 10 and sync_redis.hexists(key, "created_at")
    assert job.description == f"flowcraft {run} 0:b" and job.enqueued_at and job.started_at and job.last_heartbeat
    assert sync_redis.ttl(key) == -1
    assert StartedJobRegistry(queue.queue_name, connection=sync_redis).get_job_ids(cleanup=False) == [
        handed.receipt.job_id]
    # its worker dies: the entry lapses, a dequeue puts the job back and delivers it a second time
    await asyncio.sleep(1.1)
    again: list[Any] = []
    for _ in range(20):
        again = await queue.dequeue(1, 0.5)
        if again:
            break
    (redelivered,) = again
    assert redelivered.receipt.job_id == handed.receipt.job_id and redelivered.deliveries == 2
    assert sync_redis.hget(key, "flowcraft_deliveries") == b"2"
    assert _rq_job(sync_redis, handed.receipt.job_id).get_status() == "started"
    await queue.ack(redelivered)
    assert not sync_redis.exists(key)
