"""How the rq queue's receive picks queue groups on a 3-shard Redis Cluster (``RqQueue._dequeue_groups``): a group
it learned is empty is asked with a plain ``LLEN``, not its dequeue script, and a job pushed there since is still
delivered at once; the jobs a receive shares out go to the groups of the worker's home primary first, and to the
other groups when those have none."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from flowcraft.plugins import registry
from flowcraft.spi import Job, RunRecord
from flowcraft_rq import RqQueue
from flowcraft_rq.queue import HOME_TURNS


def _backend(redis_url: str, prefix: str) -> Any:
    return registry().build("rq", {"redis_url": redis_url, "key_prefix": prefix,
                                   "queue_name": f"q-{uuid.uuid4().hex[:10]}"})


@pytest_asyncio.fixture
async def queue(redis_cluster_server: Any, redis_prefix: str) -> AsyncIterator[RqQueue]:
    """An rq backend's queue on the 3-shard cluster, set up (its groups registered), closed after the test."""
    backend = _backend(redis_cluster_server.url, redis_prefix)
    assert isinstance(backend.queue, RqQueue)
    await backend.setup()
    try:
        yield backend.queue
    finally:
        await backend.close()


def _runs_of(queue: RqQueue, groups: set[int], count: int) -> list[str]:
    """``count`` run ids whose queue group is in ``groups``."""
    out: list[str] = []
    n = 0
    while len(out) < count:
        run_id = f"run-{n}"
        if queue.group_of(run_id) in groups:
            out.append(run_id)
        n += 1
    return out


async def test_a_group_learned_empty_is_probed_and_its_new_job_delivered_at_once(queue: RqQueue) -> None:
    assert await queue.dequeue(16, 0.05) == []  # every group's script ran: all learned empty
    assert queue._ready == [0] * len(queue.groups)
    # the blocking waits it left end empty (their 0.05 s): none moves the job pushed next
    assert await asyncio.gather(*queue._waits.values()) == [None] * len(queue._waits)
    scripts_before = list(queue._scripted)
    run_id = _runs_of(queue, set(range(len(queue.groups))), 1)[0]
    await queue.enqueue([Job(run_id, "bp", "a")])
    got = await queue.dequeue(16, 0.0)  # no wait: found by the LLEN probe, then that group's script
    assert [d.job.run_id for d in got] == [run_id]
    group = queue.group_of(run_id)
    assert queue._scripted[group] > scripts_before[group]
    for delivery in got:
        await queue.ack(delivery)
    assert await queue.size() == 0


async def test_a_receive_takes_from_its_home_primary_first_then_the_others(queue: RqQueue) -> None:
    await queue.depth()  # the client learns the slot map
    home = queue._home_groups()
    assert len(home) == 4  # 12 groups, 4 on each of the 3 primaries
    others = set(range(len(queue.groups))) - home
    home_runs, other_runs = _runs_of(queue, set(home), 8), _runs_of(queue, others, 8)
    await queue.enqueue([Job(run_id, "bp", "a") for run_id in home_runs + other_runs])
    first = await queue.dequeue(8, 0.0)
    assert sorted(d.job.run_id for d in first) == sorted(home_runs)
    rest = await queue.dequeue(16, 0.0)  # the home groups are empty now: the others' jobs
    assert sorted(d.job.run_id for d in rest) == sorted(other_runs)
    for delivery in first + rest:
        await queue.ack(delivery)
    assert await queue.size() == 0


async def test_a_start_puts_the_queue_in_rqs_set_of_queues(redis_url: str, redis_prefix: str) -> None:
    """On one Redis the start script adds the queue to ``rq:queues`` (``Dispatcher.registry``), as ``enqueue``
    does: runs started in one step still show in ``rq info``."""
    backend = _backend(redis_url, redis_prefix)
    queue = backend.queue
    assert isinstance(queue, RqQueue)
    await backend.setup()
    try:
        await queue.redis.srem(queue.queues_key, queue.queue_key)
        assert await backend.coordination.start(RunRecord("run-1", "bp", status="running"), [Job("run-1", "bp", "a")])
        assert await queue.redis.sismember(queue.queues_key, queue.queue_key)
    finally:
        await backend.close()


async def test_setup_puts_every_group_in_rqs_set_of_queues(queue: RqQueue) -> None:
    """On a cluster ``rq:queues`` is in another slot than the groups: the queue registers them in ``setup``."""
    members = await queue.redis.smembers(queue.queues_key)
    assert {group.queue_key.encode() for group in queue.groups} <= members


async def test_a_group_no_one_calls_home_is_served_while_the_home_primary_has_jobs(queue: RqQueue) -> None:
    """Every ``HOME_TURNS``-th receive shares over every group (a rotation of its own): a job of another primary's
    group is delivered while the home groups still have jobs, within one pass of that rotation."""
    await queue.depth()
    home = queue._home_groups()
    others = set(range(len(queue.groups))) - home
    home_runs = _runs_of(queue, set(home), 4 * len(queue.groups) * HOME_TURNS)
    foreign = _runs_of(queue, others, 1)[0]
    await queue.enqueue([Job(run_id, "bp", "a") for run_id in [*home_runs, foreign]])
    taken: list[Any] = []
    while not any(d.job.run_id == foreign for d in taken):
        assert len(taken) < len(home_runs), "the foreign group's job waited for the home groups to run out"
        taken += await queue.dequeue(1, 0.0)
    assert len(taken) <= len(queue.groups) * HOME_TURNS
    for delivery in taken:
        await queue.ack(delivery)
