"""The rq queue against a real redis-server: jobs are real rq jobs that rq's own tools see."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
import rq
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from flowcraft.plugins import registry
from flowcraft.spi import Arrival, Backend, Completion, Delivery, Job, RunRecord, Transition
from flowcraft_rq import FUNC_NAME, RqQueue


@pytest.fixture
def options(redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return {"redis_url": redis_url, "key_prefix": redis_prefix, "queue_name": f"q-{uuid.uuid4().hex[:10]}",
            "visibility_timeout": 1.0}


@pytest_asyncio.fixture
async def backend(options: dict[str, Any]) -> AsyncIterator[Backend]:
    built = registry().build("rq", options)
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def _job(run_id: str = "r1", node: str = "n", **kwargs: Any) -> Job:
    return Job(run_id, "bp", node, input={"x": [1.5, [], {}]}, has_input=True, **kwargs)


def rq_queue(backend: Backend) -> RqQueue:
    assert isinstance(backend.queue, RqQueue)
    return backend.queue


async def test_enqueued_jobs_are_rq_jobs(backend: Backend, sync_redis: redis.Redis) -> None:
    queue = rq_queue(backend)
    await queue.enqueue([_job("run:1/ü"), _job("run 2")])
    rq_q = rq.Queue(queue.queue_name, connection=sync_redis, serializer=JSONSerializer)
    assert rq_q.count == 2
    assert queue.queue_key.encode() in sync_redis.smembers("rq:queues")
    job = rq_q.jobs[0]
    assert job.func_name == FUNC_NAME
    assert job.get_status() == "queued" and job.origin == queue.queue_name
    assert job.args[0]["run_id"] == "run:1/ü" and job.args[0]["input"] == {"x": [1.5, [], {}]}


async def test_rq_info_shows_the_queue(backend: Backend, redis_url: str) -> None:
    queue = rq_queue(backend)
    await queue.enqueue([_job()])
    rq_cli = Path(sys.executable).with_name("rq")
    command = [str(rq_cli), "info", "--url", redis_url, "--only-queues", "--raw", queue.queue_name]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, check=True)
    out = done.stdout
    assert f"queue {queue.queue_name} 1" in out


async def test_in_flight_jobs_are_in_the_started_registry(backend: Backend, sync_redis: redis.Redis) -> None:
    queue = rq_queue(backend)
    await queue.enqueue([_job()])
    (delivery,) = await queue.dequeue(1, 1.0)
    started = StartedJobRegistry(queue.queue_name, connection=sync_redis)
    assert started.get_job_ids(cleanup=False) == [delivery.receipt.job_id]
    assert rq.job.Job.fetch(delivery.receipt.job_id, connection=sync_redis).get_status() == "started"
    before = sync_redis.zscore(queue.wip_key, delivery.receipt.entry)
    await queue.extend(delivery, 60)
    assert sync_redis.zscore(queue.wip_key, delivery.receipt.entry) > before + 30
    await queue.ack(delivery)
    assert started.get_job_ids(cleanup=False) == []
    assert not sync_redis.exists(queue.job_prefix + delivery.receipt.job_id)  # ack deletes the rq job


async def test_rq_cleanup_of_an_abandoned_delivery_requeues_it(backend: Backend, sync_redis: redis.Redis) -> None:
    """`rq info` runs StartedJobRegistry.cleanup: an expired delivery must come back, not be failed."""
    queue = rq_queue(backend)
    await queue.enqueue([_job()])
    (first,) = await queue.dequeue(1, 1.0)
    await asyncio.sleep(1.2)  # past the visibility deadline, as if the worker died
    StartedJobRegistry(queue.queue_name, connection=sync_redis, serializer=JSONSerializer).cleanup()
    assert FailedJobRegistry(queue.queue_name, connection=sync_redis).get_job_ids() == []
    (again,) = await queue.dequeue(1, 2.0)
    assert again.job == first.job and again.deliveries == 2
    await queue.ack(again)


async def test_delayed_jobs_use_rq_scheduled_registry(backend: Backend, sync_redis: redis.Redis) -> None:
    queue = rq_queue(backend)
    await queue.enqueue([_job()], delay=1.0)
    scheduled = ScheduledJobRegistry(queue.queue_name, connection=sync_redis)
    (job_id,) = scheduled.get_job_ids()
    assert rq.job.Job.fetch(job_id, connection=sync_redis).get_status() == "scheduled"
    assert await queue.dequeue(1, 0.3) == []
    started = time.monotonic()
    (delivery,) = await queue.dequeue(1, 3.0)
    assert 0.5 < time.monotonic() - started + 0.3 < 2.5
    assert delivery.receipt.job_id == job_id and scheduled.get_job_ids() == []
    await queue.release(delivery, delay=0.5)  # retry backoff goes through the scheduled registry too
    assert scheduled.get_job_ids() == [job_id]
    (again,) = await queue.dequeue(1, 3.0)
    assert again.deliveries == 2
    await queue.ack(again)


async def test_dead_letters_land_in_failed_job_registry(backend: Backend, sync_redis: redis.Redis) -> None:
    queue = rq_queue(backend)
    await queue.enqueue([_job("run-dl")])
    (delivery,) = await queue.dequeue(1, 1.0)
    await queue.dead_letter(delivery, "blueprint 'bp' version '9' is not loaded")
    failed = FailedJobRegistry(queue.queue_name, connection=sync_redis)
    assert failed.get_job_ids() == [delivery.receipt.job_id]
    job = rq.job.Job.fetch(delivery.receipt.job_id, connection=sync_redis, serializer=JSONSerializer)
    assert job.get_status() == "failed"
    assert job.latest_result().exc_string == "blueprint 'bp' version '9' is not loaded"
    (letter,) = await queue.dead_letters()
    assert letter.reason == "blueprint 'bp' version '9' is not loaded" and letter.job == delivery.job
    assert StartedJobRegistry(queue.queue_name, connection=sync_redis).get_job_ids(cleanup=False) == []


async def test_redelivery_after_the_worker_died(backend: Backend) -> None:
    queue = rq_queue(backend)
    await queue.enqueue([_job()])
    (first,) = await queue.dequeue(1, 1.0)
    assert await queue.dequeue(1, 0.2) == []
    (again,) = await queue.dequeue(1, 3.0)  # the deadline passes while waiting
    assert again.job == first.job and again.deliveries == 2
    await queue.release(first)  # a stale receipt does not re-queue the job a second time
    assert await queue.dequeue(1, 0.3) == []
    await queue.ack(again)


async def _scheduled_run(backend: Backend, run_id: str, node: str = "n") -> Job:
    await backend.status.create(RunRecord(run_id, "bp"))
    job = _job(run_id, node)
    await backend.coordination.schedule(run_id, [job])
    return job


async def _received_start(backend: Backend, run_id: str) -> Delivery:
    """A run whose start job "a" is scheduled, enqueued and received by "w1" (lease taken, record read)."""
    job = await _scheduled_run(backend, run_id, "a")
    queue = rq_queue(backend)
    await queue.enqueue([job])
    (delivery,) = await queue.receive(1, 1.0, "w1", 30)
    return delivery


async def test_one_push_wakes_one_waiting_worker(options: dict[str, Any], backend: Backend) -> None:
    """Idle workers block on the queue; a pushed job wakes one of them, which takes it (the others sleep on)."""
    others = [registry().build("rq", options) for _ in range(2)]
    try:
        waiting = {asyncio.create_task(rq_queue(b).receive(1, 2.0, f"w{n}", 30)): b for n, b in enumerate(others)}
        await asyncio.sleep(0.3)  # both are blocked
        scripts_run = {task: rq_queue(b).batcher.commands for task, b in waiting.items()}
        await rq_queue(backend).enqueue([_job("woken")])
        done, pending = await asyncio.wait(waiting, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        woken = done.pop()
        (delivery,) = woken.result()
        assert delivery.job.run_id == "woken"
        await rq_queue(waiting[woken]).ack(delivery)
        await asyncio.sleep(0.3)
        (asleep,) = pending  # the other one was not woken: it ran no dequeue script since
        assert not asleep.done() and rq_queue(waiting[asleep]).batcher.commands == scripts_run[asleep]
        assert await asleep == []
    finally:
        for other in others:
            await other.close()


async def test_a_job_claimed_by_a_worker_that_died_before_taking_it_comes_back(
        backend: Backend, sync_redis: redis.Redis) -> None:
    """A worker that moved a pushed id into its claim list and died before its dequeue script: the id goes back
    to the queue once the claim's registration lapses."""
    queue = rq_queue(backend)
    assert await queue.receive(1, 0.0, "w1", 30) == []  # registers the claim list (until now + visibility 1 s)
    await queue.enqueue([_job("claimed")])
    assert sync_redis.lmove(queue.queue_key, queue.claim_key, "LEFT", "RIGHT") is not None  # its BLMOVE, then death
    await asyncio.sleep(1.2)
    other = RqQueue(queue.redis, queue_name=queue.queue_name, key_prefix=queue.key_prefix)
    assert [d.job.run_id for d in await other.dequeue(5, 1.0)] == ["claimed"]


async def test_receive_prefetches_the_record_and_lease_dequeue_does_not(backend: Backend) -> None:
    queue = rq_queue(backend)
    assert queue.prefetching
    job = await _scheduled_run(backend, "pre-1")
    await queue.enqueue([job, job])
    (plain,) = await queue.dequeue(1, 1.0)
    assert not plain.prefetched and plain.record is None and plain.begin is None
    assert (await backend.coordination.begin(job, "other", 30)).lease  # dequeue took no lease
    await backend.coordination.release(job.run_id, job.key, "other")
    (delivery,) = await queue.receive(1, 1.0, "w1", 30)
    assert delivery.prefetched and delivery.record is not None and delivery.record.status == "running"
    assert delivery.begin is not None and delivery.begin.lease and delivery.begin.state == "pending"
    assert delivery.begin.completion is None
    assert not (await backend.coordination.begin(job, "w2", 30)).lease  # w1 holds it now
    await queue.ack(plain)
    await queue.ack(delivery)
    await backend.coordination.release(job.run_id, job.key, "w1")


async def test_receive_of_a_leased_missing_or_final_run(backend: Backend) -> None:
    queue = rq_queue(backend)
    held = await _scheduled_run(backend, "pre-held")
    assert (await backend.coordination.begin(held, "w2", 30)).lease
    await _scheduled_run(backend, "pre-final")
    await backend.status.transition("pre-final", ["running"], "cancelled", {})
    await queue.enqueue([held, _job("pre-final"), _job("pre-missing")])
    deliveries = {d.job.run_id: d for d in await queue.receive(3, 1.0, "w1", 30)}
    assert deliveries["pre-held"].begin is not None and not deliveries["pre-held"].begin.lease
    final = deliveries["pre-final"]
    assert final.record is not None and final.record.status == "cancelled"
    assert final.begin is None and not final.prefetched  # no lease is taken for a run that ended
    missing = deliveries["pre-missing"]
    assert missing.record is None and missing.begin is None and not missing.prefetched
    for delivery in deliveries.values():
        await queue.ack(delivery)


async def test_release_and_dead_letter_drop_a_prefetched_lease(backend: Backend) -> None:
    queue = rq_queue(backend)
    job = await _scheduled_run(backend, "pre-drop")
    await queue.enqueue([job])
    (first,) = await queue.receive(1, 1.0, "w1", 30)
    assert first.begin is not None and first.begin.lease
    await queue.release(first)  # e.g. a stopping worker hands it back before handling it
    (again,) = await queue.receive(1, 1.0, "w2", 30)
    assert again.begin is not None and again.begin.lease and again.deliveries == 2
    await queue.dead_letter(again, "unknown version")
    assert (await backend.coordination.begin(job, "w3", 30)).lease


async def test_commit_dispatches_fired_jobs_into_the_queue(backend: Backend, sync_redis: redis.Redis) -> None:
    queue = rq_queue(backend)
    run = "dispatch-run"
    await backend.status.create(RunRecord(run, "bp"))
    await backend.coordination.schedule(run, [_job(run, "a")])
    now_job = Job(run, "bp", "b", input=1, has_input=True)
    later_job = Job(run, "bp", "c", input=2, has_input=True, due_at=time.time() + 0.6)
    committed = await backend.coordination.commit(Transition(
        run, "0:a", completion=Completion("a", output=1, token="t"),
        arrivals=(Arrival(now_job, "a", arrived=True, contribution=1, expected=("a",)),
                  Arrival(later_job, "a", arrived=True, contribution=2, expected=("a",))), finish=True, owner="w1"))
    assert backend.capabilities.dispatches and backend.capabilities.releases_lease
    assert {job.node_id for job in committed.fired} == {"b", "c"}
    scheduled = ScheduledJobRegistry(queue.queue_name, connection=sync_redis)
    assert len(scheduled.get_job_ids()) == 1  # due_at in the future: rq's scheduled registry
    (now_delivery,) = await queue.receive(5, 1.0, "w1", 30)
    assert now_delivery.job.node_id == "b" and now_delivery.job.input == 1
    await queue.ack(now_delivery)
    (later_delivery,) = await queue.receive(5, 2.0, "w1", 30)
    assert later_delivery.job.node_id == "c" and later_delivery.job.due_at == later_job.due_at
    await queue.ack(later_delivery)


async def test_a_handed_job_is_an_rq_job_started_by_the_worker_and_the_commit_acks_in_rq(
        backend: Backend, sync_redis: redis.Redis) -> None:
    """continues: the handed job is an rq job started by this queue's worker, in rq's started registry (a
    delayed one goes to rq's scheduled registry, not to the worker); acks: the commit that leaves jobs pending
    removes the committed delivery from the started registry and deletes its rq job, as ack does."""
    queue = rq_queue(backend)
    run = "handed-run"
    first = await _received_start(backend, run)
    now_job = Job(run, "bp", "b", input=1, has_input=True)
    later_job = Job(run, "bp", "c", input=2, has_input=True, due_at=time.time() + 60)
    committed = await backend.coordination.commit(Transition(
        run, "0:a", completion=Completion("a", output=1, token="t"),
        arrivals=(Arrival(now_job, "a", arrived=True, contribution=1, expected=("a",)),
                  Arrival(later_job, "a", arrived=True, contribution=2, expected=("a",))), finish=True, owner="w1",
        receipt=first.receipt, continue_up_to=2, lease_seconds=30))
    assert committed.pending == 2
    (handed,) = committed.continued  # the delayed job is not handed over
    assert handed.job.node_id == "b" and handed.receipt.lease_owner == "w1"
    started = StartedJobRegistry(queue.queue_name, connection=sync_redis)
    assert started.get_job_ids(cleanup=False) == [handed.receipt.job_id]  # the committed delivery is gone
    assert not sync_redis.exists(queue.job_prefix + first.receipt.job_id)
    job = rq.job.Job.fetch(handed.receipt.job_id, connection=sync_redis, serializer=JSONSerializer)
    assert job.get_status() == "started" and job.worker_name == queue.worker_name
    assert len(ScheduledJobRegistry(queue.queue_name, connection=sync_redis).get_job_ids()) == 1
    assert sync_redis.llen(queue.queue_key) == 0
    await queue.ack(handed)
    assert started.get_job_ids(cleanup=False) == []


async def test_enqueue_never_filters(backend: Backend, sync_redis: redis.Redis) -> None:
    queue = rq_queue(backend)
    job = _job("twice")
    await queue.enqueue([job])
    await queue.enqueue([job])
    assert sync_redis.llen(queue.queue_key) == 2


async def test_queue_name_defaults(redis_url: str) -> None:
    built = registry().build("rq", {"redis_url": redis_url})
    assert rq_queue(built).queue_name == "flowcraft-queue" and rq_queue(built).queue_key == "rq:queue:flowcraft-queue"
    other = registry().build("rq", {"redis_url": redis_url, "key_prefix": "app1:"})
    assert rq_queue(other).queue_name == "app1:queue"
    await built.close()
    await other.close()


def test_a_plain_rq_worker_can_run_the_jobs(options: dict[str, Any], redis_url: str, tmp_path: Path) -> None:
    """run_job is an importable rq job function: `rq worker --serializer json --burst` completes a run."""

    async def start() -> str:
        from flowcraft.client import Client
        from flowcraft.testing.apps import app

        built = registry().build("rq", options)
        try:
            return await Client(built, app).start("contract-diamond", {"value": 1})
        finally:
            await built.close()

    run_id = asyncio.run(start())
    env = {**os.environ, "FLOWCRAFT_APP": "flowcraft.testing.apps:app", "FLOWCRAFT_REDIS_URL": redis_url,
           "FLOWCRAFT_KEY_PREFIX": options["key_prefix"], "FLOWCRAFT_QUEUE_NAME": options["queue_name"]}
    rq_cli = Path(sys.executable).with_name("rq")
    subprocess.run([str(rq_cli), "worker", "--burst", "--serializer", "json", "--url", redis_url,
                    options["queue_name"]], env=env, cwd=tmp_path, capture_output=True, timeout=120, check=True)

    async def status() -> str:
        built = registry().build("rq", options)
        try:
            record = await built.status.get(run_id)
            assert record is not None
            return record.status
        finally:
            await built.close()

    assert asyncio.run(status()) == "completed"


async def _handed_lean(redis_url: str, redis_prefix: str, run: str) -> tuple[Backend, Any]:
    """A backend with ``queue_layout = "lean"`` and one job ("b") a commit of "a" handed to "w1" (visibility 1 s)."""
    built = registry().build("rq", {"redis_url": redis_url, "key_prefix": redis_prefix, "visibility_timeout": 1.0,
                                    "queue_name": f"q-{uuid.uuid4().hex[:10]}", "queue_layout": "lean"})
    first = await _received_start(built, run)
    committed = await built.coordination.commit(Transition(
        run, "0:a", completion=Completion("a", output=1, token="t"),
        arrivals=(Arrival(Job(run, "bp", "b", input=1, has_input=True), "a", arrived=True, contribution=1,
                          expected=("a",)),), finish=True, owner="w1", receipt=first.receipt, continue_up_to=1,
        lease_seconds=30))
    (handed,) = committed.continued
    return built, handed


async def test_a_lean_handed_job_has_no_rq_job_and_the_commit_acks_it(
        redis_url: str, redis_prefix: str, sync_redis: redis.Redis) -> None:
    """The lean layout: the handed job is only an entry of the lean in-flight set (no rq job hash, not in rq's
    started registry); the commit that acks it removes that entry; extend pushes its deadline. A job the commit
    pushes is an entry on the queue list naming the run's pending job, delivered from it into the in-flight set,
    and a delayed one an rq job in rq's scheduled registry."""
    built, handed = await _handed_lean(redis_url, redis_prefix, "lean-run")
    queue = rq_queue(built)
    try:
        assert handed.receipt.lean and handed.job.node_id == "b" and handed.receipt.lease_owner == "w1"
        assert not sync_redis.exists(queue.job_prefix + handed.receipt.job_id)
        assert StartedJobRegistry(queue.queue_name, connection=sync_redis).get_job_ids(cleanup=False) == []
        before = sync_redis.zscore(queue.inflight_key, handed.receipt.entry)
        await queue.extend(handed, 60)
        assert sync_redis.zscore(queue.inflight_key, handed.receipt.entry) > before + 30
        nxt = Job("lean-run", "bp", "c", input=2, has_input=True)
        later = Job("lean-run", "bp", "d", input=3, has_input=True, due_at=time.time() + 60)
        committed = await built.coordination.commit(Transition(
            "lean-run", "0:b", completion=Completion("b", output=2, token="t2"),
            arrivals=(Arrival(nxt, "b", arrived=True, contribution=2, expected=("b",)),
                      Arrival(later, "b", arrived=True, contribution=3, expected=("b",))), finish=True, owner="w1",
            receipt=handed.receipt, continue_up_to=0, lease_seconds=30))
        assert committed.pending == 2 and not committed.continued
        assert sync_redis.zcard(queue.inflight_key) == 0  # acked in the commit
        (pushed,) = sync_redis.lrange(queue.queue_key, 0, -1)
        assert pushed.endswith(b":8:lean-run0:c")
        assert not sync_redis.exists(queue.job_prefix + pushed.split(b":")[0].decode())
        assert len(ScheduledJobRegistry(queue.queue_name, connection=sync_redis).get_job_ids()) == 1
        (delivery,) = await queue.receive(1, 1.0, "w2", 30)
        assert delivery.job == nxt and delivery.receipt.lean and delivery.deliveries == 1
        assert delivery.record is not None and delivery.begin is not None and delivery.begin.lease
        assert sync_redis.zscore(queue.inflight_key, delivery.receipt.entry) is not None
        await queue.ack(delivery)
        assert sync_redis.zcard(queue.inflight_key) == 0
    finally:
        await built.close()


async def test_a_lean_entry_whose_job_is_no_longer_pending_is_dropped(
        redis_url: str, redis_prefix: str, sync_redis: redis.Redis) -> None:
    """A lean entry on the queue list whose job is done (or whose run is gone) delivers nothing."""
    built, _ = await _handed_lean(redis_url, redis_prefix, "gone-run")
    queue = rq_queue(built)
    try:
        sync_redis.rpush(queue.queue_key, f"{uuid.uuid4().hex}:8:gone-run0:a", f"{uuid.uuid4().hex}:3:nop0:x")
        assert await queue.receive(5, 0.2, "w2", 30) == []
        assert sync_redis.llen(queue.queue_key) == 0 and sync_redis.zcard(queue.inflight_key) == 1  # the handed b
    finally:
        await built.close()


async def test_a_lapsed_lean_handed_job_comes_back_as_an_rq_job(
        redis_url: str, redis_prefix: str, sync_redis: redis.Redis) -> None:
    """A lean handed job whose worker died (its entry's deadline passed) is re-queued by the next dequeue as an rq
    job, from the run's pending job, delivered for the second time; a done job's lapsed entry is dropped."""
    built, handed = await _handed_lean(redis_url, redis_prefix, "lapsed-run")
    queue = rq_queue(built)
    try:
        sync_redis.zadd(queue.inflight_key, {handed.receipt.entry: time.time() - 1})
        sync_redis.zadd(queue.inflight_key, {f"{uuid.uuid4().hex}:10:lapsed-run0:a": time.time() - 1})  # done
        (again,) = await queue.receive(5, 1.0, "w2", 30)
        assert again.job == handed.job and again.deliveries == 2 and not again.receipt.lean
        assert again.receipt.job_id == handed.receipt.job_id
        job = rq.job.Job.fetch(again.receipt.job_id, connection=sync_redis, serializer=JSONSerializer)
        assert job.get_status() == "started" and job.origin == queue.queue_name
        assert sync_redis.zcard(queue.inflight_key) == 0 and sync_redis.llen(queue.queue_key) == 0
    finally:
        await built.close()


async def test_release_and_dead_letter_of_a_lean_handed_job_write_its_rq_job(
        redis_url: str, redis_prefix: str, sync_redis: redis.Redis) -> None:
    """Giving a lean handed delivery back re-queues it as an rq job (its lease dropped); failing one puts a whole
    rq job into rq's FailedJobRegistry."""
    built, handed = await _handed_lean(redis_url, redis_prefix, "given-back")
    queue = rq_queue(built)
    try:
        await queue.release(handed)
        assert sync_redis.zcard(queue.inflight_key) == 0
        assert sync_redis.hget(built.coordination.keys.run("given-back"), "l0:b") in (None, b"")
        (again,) = await queue.receive(1, 1.0, "w2", 30)
        assert again.job == handed.job and again.deliveries == 2 and again.begin is not None and again.begin.lease
        await queue.release(handed)  # a second release of the same delivery changes nothing
        assert sync_redis.llen(queue.queue_key) == 0
    finally:
        await built.close()
    built, handed = await _handed_lean(redis_url, redis_prefix, "failed-lean")
    queue = rq_queue(built)
    try:
        await queue.dead_letter(handed, "boom")
        assert sync_redis.zcard(queue.inflight_key) == 0
        (letter,) = await queue.dead_letters()
        assert letter.job == handed.job and letter.reason == "boom"
        assert FailedJobRegistry(queue.queue_name, connection=sync_redis).get_job_ids() == [handed.receipt.job_id]
    finally:
        await built.close()


async def test_a_hand_over_sends_the_run_record_only_when_it_changed(backend: Backend) -> None:
    """continues: the commit's reply carries the run record only when it changed since the record the store last
    handed over for the run (same status and updated_at): deliveries then share that record; after a
    transition the new record comes back."""
    run = "record-run"
    delivery = await _received_start(backend, run)
    records = []
    for node, nxt in (("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")):
        if node == "c":
            await backend.status.transition(run, ["running"], "awaiting", {"awaiting": [{"node_id": "x"}]})
        committed = await backend.coordination.commit(Transition(
            run, f"0:{node}", completion=Completion(node, output=1, token=node),
            arrivals=(Arrival(Job(run, "bp", nxt, input=1, has_input=True), node, arrived=True, contribution=1,
                              expected=(node,)),), finish=True, owner="w1", receipt=delivery.receipt,
            continue_up_to=1, lease_seconds=30))
        (delivery,) = committed.continued
        assert delivery.record is not None and delivery.job.node_id == nxt
        records.append(delivery.record)
    assert records[1] is records[0] and records[0].status == "running"
    assert records[2] is not records[0] and records[2].status == "awaiting"
    assert records[2].awaiting == [{"node_id": "x"}] and records[3] is records[2]
    assert records[3] == await backend.status.get(run)


async def test_a_dequeue_sends_each_run_record_once(backend: Backend) -> None:
    """The jobs of one run taken by one receive share one run record, sent and parsed once."""
    queue = rq_queue(backend)
    await backend.status.create(RunRecord("shared-run", "bp", input={"x": 1}))
    await backend.status.create(RunRecord("other-run", "bp"))
    jobs = [_job("shared-run", "a"), _job("other-run", "a"), _job("shared-run", "b")]
    await backend.coordination.schedule("shared-run", [jobs[0], jobs[2]])
    await backend.coordination.schedule("other-run", [jobs[1]])
    await queue.enqueue(jobs)
    first, other, second = await queue.receive(3, 1.0, "w1", 30)
    assert first.record is not None and first.record.input == {"x": 1} and second.record is first.record
    assert other.record is not None and other.record.run_id == "other-run"
    assert second.begin is not None and second.begin.lease


async def test_lean_enqueue_pushes_a_runs_pending_job_as_a_lean_entry(
        redis_url: str, redis_prefix: str, sync_redis: redis.Redis) -> None:
    """The lean layout's enqueue: a job due now that is its run's pending job as it stands becomes a lean entry; a
    job that differs from it (a retry), a job of no run, and a delayed one become rq jobs."""
    built = registry().build("rq", {"redis_url": redis_url, "key_prefix": redis_prefix, "queue_layout": "lean",
                                    "queue_name": f"q-{uuid.uuid4().hex[:10]}"})
    queue = rq_queue(built)
    try:
        start = _job("lean-start", "a")
        await built.status.create(RunRecord("lean-start", "bp"))
        await built.coordination.schedule("lean-start", [start])
        retry = Job("lean-start", "bp", "a", attempt=2, input={"x": [1.5, [], {}]}, has_input=True)
        await queue.enqueue([start, retry, _job("no-run", "a")])
        await queue.enqueue([start], delay=60)
        first, *rest = sync_redis.lrange(queue.queue_key, 0, -1)
        assert first.endswith(b":10:lean-start0:a") and len(rest) == 2 and all(b":" not in i for i in rest)
        assert len(ScheduledJobRegistry(queue.queue_name, connection=sync_redis).get_job_ids()) == 1
        got = await queue.receive(3, 1.0, "w1", 30)
        assert [d.job for d in got] == [start, retry, _job("no-run", "a")]
        assert [d.receipt.lean for d in got] == [True, False, False]
    finally:
        await built.close()
