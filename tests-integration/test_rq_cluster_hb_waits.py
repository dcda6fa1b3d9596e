"""On a 3-shard Redis Cluster, a receive sends no ``LLEN`` to a queue group on which this worker's blocking wait is
still outstanding (``RqQueue._dequeue_groups``): a job pushed there ends the wait, which marks the group ready, so
the next receive runs that group's script and delivers it. (Before, every receive probed each group learned empty,
one request per primary: ~4 more requests per diamond8 run one at a time than on one Redis.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_rq_cluster_receive import queue  # noqa: F401  # the fixture: an rq queue on the 3-shard cluster

import flowcraft_rq.queue as rq_queue
from flowcraft.spi import Job
from flowcraft_rq import RqQueue


async def test_no_llen_where_a_wait_is_outstanding_and_the_job_it_moved_is_delivered(
        queue: RqQueue, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(rq_queue, "RECOVERY_INTERVAL", 60.0)  # no group's recoveries fall due during the test
    assert await queue.dequeue(16, 0.0) == []  # every group's script ran (all learned empty)
    await queue._wait_groups(0.05)  # then a blocking wait per group, each lasting BLOCK_SECONDS (kept after this)
    assert queue._ready == [0] * len(queue.groups)
    assert sorted(queue._waits) == list(range(len(queue.groups)))  # a wait per group, still outstanding
    sent: list[tuple[Any, ...]] = []
    call_many = queue.batcher.call_many

    async def recorded(*commands: tuple[Any, ...]) -> list[Any]:
        sent.extend(commands)
        return await call_many(*commands)

    monkeypatch.setattr(queue.batcher, "call_many", recorded)
    run_id = "run-0"
    group = queue.group_of(run_id)
    await queue.enqueue([Job(run_id, "bp", "a")])
    await asyncio.wait_for(asyncio.shield(queue._waits[group]), 5.0)  # the group's wait moved the job
    scripted = list(queue._scripted)
    got = await queue.dequeue(16, 0.0)
    assert [d.job.run_id for d in got] == [run_id]
    assert [c for c in sent if c[0] == "LLEN"] == []  # every other group has this worker's wait outstanding
    assert [g for g, (a, b) in enumerate(zip(scripted, queue._scripted, strict=True)) if a != b] == [group]
    for delivery in got:
        await queue.ack(delivery)
    assert await queue.size() == 0


async def test_a_receive_asks_a_group_for_as_many_jobs_as_it_is_known_to_have(
        queue: RqQueue, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(rq_queue, "RECOVERY_INTERVAL", 60.0)  # no group's recoveries fall due during the test
    assert await queue.dequeue(16, 0.0) == []  # every group's script ran: all learned empty (no wait: none kept)
    first, second = sorted(queue._home_groups())[:2]
    runs = {group: [r for r in (f"run-{n}" for n in range(2000)) if queue.group_of(r) == group][:20]
            for group in (first, second)}
    await queue.enqueue([Job(run_id, "bp", "a") for group in (first, second) for run_id in runs[group]])
    scripted = list(queue._scripted)
    got = await queue.dequeue(16, 0.0)  # LLENs learn 20 ready in each; one group's script takes all 16
    assert len(got) == 16
    assert len({d.job.run_id for d in got} & set(runs[first] + runs[second])) == 16
    assert len([g for g, (a, b) in enumerate(zip(scripted, queue._scripted, strict=True)) if a != b]) == 1
    for delivery in got:
        await queue.ack(delivery)


async def test_an_idle_workers_recoveries_wait_for_the_idle_interval_where_its_wait_is_outstanding(
        queue: RqQueue, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(rq_queue, "RECOVERY_INTERVAL", 0.0)  # a busy worker's recoveries: due at every receive
    monkeypatch.setattr(rq_queue, "IDLE_RECOVERY_INTERVAL", 60.0)
    assert await queue.dequeue(16, 0.0) == []  # every group's script ran
    await queue._wait_groups(0.05)  # then a blocking wait per group, each lasting BLOCK_SECONDS (kept after this)
    assert sorted(queue._waits) == list(range(len(queue.groups)))
    scripted = list(queue._scripted)
    assert await queue.dequeue(16, 0.0) == []
    assert queue._scripted == scripted  # no group's script: this worker's wait is outstanding on each
    run_id = "run-0"
    group = queue.group_of(run_id)
    queue._waits.pop(group).cancel()  # that group's wait over (as when it ends empty): its recoveries are due again
    assert await queue.dequeue(16, 0.0) == []
    assert [g for g, (a, b) in enumerate(zip(scripted, queue._scripted, strict=True)) if a != b] == [group]
