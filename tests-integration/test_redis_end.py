"""The run's end in its last commit on Redis (Capabilities.ends) against a real redis-server: one commit script
leaves a run exactly as the three steps it replaces (the commit, StatusStore.transition_with_context, Queue.ack)
leave it, for both rq queue layouts; a replay, a cancelled run and a commit leaving work pending end nothing."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
import test_rq_queue

from flowcraft.spi import ACTIVE_STATUSES, Arrival, Backend, Completion, Delivery, Job, RunEnd, RunRecord, Transition
from flowcraft_redis import RedisCoordinationStore, RedisStatusStore
from flowcraft_rq import RqQueue

pytestmark = pytest.mark.asyncio
backend, sync_redis = test_rq_queue.backend, test_rq_queue.sync_redis  # its fixtures, with the options below


@pytest.fixture(params=["rq", "lean"])
def options(redis_url: str, redis_prefix: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """test_rq_queue's backend, in both queue layouts."""
    return {"redis_url": redis_url, "key_prefix": redis_prefix, "queue_name": f"q-{uuid.uuid4().hex[:10]}",
            "queue_layout": request.param, "visibility_timeout": 30.0}


def _parts(backend: Backend) -> tuple[RedisCoordinationStore, RedisStatusStore, RqQueue]:
    coordination, status, queue = backend.coordination, backend.status, backend.queue
    assert isinstance(coordination, RedisCoordinationStore) and isinstance(status, RedisStatusStore)
    assert isinstance(queue, RqQueue)
    return coordination, status, queue


async def _received(backend: Backend, run_id: str) -> Delivery:
    """A started run whose only job "a" is received by "w1" (lease taken, record read)."""
    coordination, _, queue = _parts(backend)
    record = RunRecord(run_id, "bp", version="1", status="running", input={"x": [1.5, [], {}]})
    assert await coordination.start(record, [Job(run_id, "bp", "a", input=1, has_input=True)])
    for _ in range(50):
        for delivery in await queue.receive(10, 0.2, "w1", 30):
            if delivery.job.run_id == run_id:
                return delivery
    raise AssertionError("the start job was not received")


def _commit(delivery: Delivery, end: RunEnd | None, token: str = "t") -> Transition:
    run_id = delivery.job.run_id
    completion = Completion("a", output={"r": [1, 2.5]}, token=token,
                            context_updates={"_outputs.a": {"r": [1, 2.5]}, "k": None}, context_deletes=("gone",))
    return Transition(run_id, delivery.job.key, completion=completion, finish=True, owner="w1",
                      receipt=delivery.receipt, end=end)


def _state(sync_redis: redis.Redis, backend: Backend, run_id: str) -> dict[str, Any]:
    """A run's keys, without its id and the times that differ between two runs."""
    coordination, status, queue = _parts(backend)
    raw_id = run_id.encode()
    record = {k: v for k, v in sync_redis.hgetall(status.keys.status(run_id)).items()
              if k not in (b"run_id", b"created_at", b"updated_at")}
    stored: dict[bytes, bytes] = sync_redis.hgetall(coordination.keys.run(run_id))  # type: ignore[assignment]
    run = {k: v.replace(raw_id, b"<run>") for k, v in stored.items() if k not in (b"#activity", b"#ttl", b"#ctxttl")}
    indexed = {name: sync_redis.zscore(status.keys.status_index(name, run_id), run_id) is not None
               for name in (*ACTIVE_STATUSES, "completed")}
    in_flight = [entry for entry in (*sync_redis.zrange(queue.inflight_key, 0, -1),
                                     *sync_redis.hkeys(queue.held_key),
                                     *sync_redis.zrange(f"{queue.rq_prefix}:wip:{queue.queue_name}", 0, -1))
                 if raw_id in entry or sync_redis.exists(queue.job_prefix + entry.decode().split(":")[0])]
    ttls = [sync_redis.ttl(key) > 0 for key in (status.keys.status(run_id), coordination.keys.ctx(run_id))]
    return {"record": record, "run": run, "context": sync_redis.hgetall(coordination.keys.ctx(run_id)),
            "indexed": indexed, "in_flight": in_flight, "ttls": ttls}


async def test_a_commit_that_ends_the_run_leaves_what_the_three_steps_leave(
        backend: Backend, sync_redis: redis.Redis) -> None:
    coordination, status, queue = _parts(backend)
    assert coordination.ends and backend.capabilities.ends
    ended_id, stepped_id = f"e-{uuid.uuid4().hex}", f"s-{uuid.uuid4().hex}"
    pubsub = sync_redis.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(status.keys.changes(ended_id))
    assert pubsub.get_message(timeout=1.0)["type"] == "subscribe"
    try:
        delivery = await _received(backend, ended_id)
        before = time.time()
        committed = await coordination.commit(_commit(delivery, RunEnd(result={"r": [1, 2.5]},
                                                                       fields={"awaiting": []})))
        assert committed.pending == 0 and committed.parked == 0 and committed.ended is not None
        assert committed.ended.status == "completed" and committed.ended.run_id == ended_id
        assert committed.ended.updated_at >= before and committed.ended.input == {"x": [1.5, [], {}]}
        message = pubsub.get_message(timeout=2.0)
        assert message is not None and message["data"] == b"completed"
    finally:
        pubsub.close()
    assert await status.get(ended_id) == committed.ended

    stepped = await _received(backend, stepped_id)
    plain = await coordination.commit(_commit(stepped, None))
    assert plain.pending == 0 and plain.ended is None
    won = await status.transition_with_context(stepped_id, list(ACTIVE_STATUSES), "completed", {"awaiting": []},
                                               context={"_result": {"r": [1, 2.5]}})
    assert won is not None
    await queue.ack(stepped)
    assert _state(sync_redis, backend, ended_id) == _state(sync_redis, backend, stepped_id)
    state = _state(sync_redis, backend, ended_id)
    assert state["context"][b"_result"] == b'{"r":[1,2.5]}' and state["in_flight"] == []
    assert state["indexed"] == {"running": False, "awaiting": False, "completed": True}

    # a replay of the commit (its delivery again, same completion) ends nothing a second time and changes nothing
    replayed = await coordination.commit(_commit(delivery, RunEnd(result={"r": [1, 2.5]}, fields={"awaiting": []})))
    assert replayed.ended is None and replayed.pending == 0
    assert _state(sync_redis, backend, ended_id) == state
    # a conflicting completion: not ended
    conflict = await coordination.commit(_commit(delivery, RunEnd(result=0, fields={}), token="other"))
    assert conflict.conflict is not None and conflict.ended is None
    assert _state(sync_redis, backend, ended_id) == state


async def test_a_cancelled_run_or_work_left_ends_nothing(backend: Backend, sync_redis: redis.Redis) -> None:
    coordination, status, _ = _parts(backend)
    cancelled_id = f"c-{uuid.uuid4().hex}"
    delivery = await _received(backend, cancelled_id)
    assert await status.transition(cancelled_id, list(ACTIVE_STATUSES), "cancelled", {}) is not None
    committed = await coordination.commit(_commit(delivery, RunEnd(result=1, fields={"awaiting": []})))
    assert committed.pending == 0 and committed.ended is None
    state = _state(sync_redis, backend, cancelled_id)
    record = await status.get(cancelled_id)
    assert record is not None and record.status == "cancelled"
    assert b"_result" not in state["context"] and b"_outputs.a" in state["context"]
    assert state["in_flight"] != []  # not acked: the engine publishes (here: nothing) and acks

    pending_id = f"p-{uuid.uuid4().hex}"
    delivery = await _received(backend, pending_id)
    nxt = Job(pending_id, "bp", "b", input=2, has_input=True)
    transition = _commit(delivery, RunEnd(result=1, fields={"awaiting": []}))
    left = await coordination.commit(Transition(
        pending_id, transition.job_key, completion=transition.completion, finish=True, owner="w1",
        receipt=delivery.receipt, end=transition.end,
        arrivals=(Arrival(nxt, "a", arrived=True, contribution=2, expected=("a",)),)))
    assert left.pending == 1 and left.ended is None
    record = await status.get(pending_id)
    assert record is not None and record.status == "running"
    assert b"_result" not in sync_redis.hgetall(coordination.keys.ctx(pending_id))


async def test_a_recovery_commit_ends_a_run_its_first_commit_left_running(
        backend: Backend, sync_redis: redis.Redis) -> None:
    """A worker that died between its commit and the run's end: the redelivered job's recovery commit (its
    completion record already there, nothing written again) ends the run, once."""
    coordination, _, _ = _parts(backend)
    run_id = f"r-{uuid.uuid4().hex}"
    delivery = await _received(backend, run_id)
    first = await coordination.commit(_commit(delivery, None))
    assert first.pending == 0 and first.ended is None
    transition = _commit(delivery, RunEnd(result={"r": [1, 2.5]}, fields={"awaiting": []}))
    recovery = Transition(run_id, transition.job_key, completion=transition.completion, finish=True,
                          recovery=True, owner="w1", receipt=delivery.receipt, end=transition.end)
    ended = await coordination.commit(recovery)
    assert ended.ended is not None and ended.ended.status == "completed"
    context = sync_redis.hgetall(coordination.keys.ctx(run_id))
    assert context[b"_result"] == b'{"r":[1,2.5]}' and b"gone" not in context
    state = _state(sync_redis, backend, run_id)
    assert state["in_flight"] == []
    again = await coordination.commit(recovery)
    assert again.ended is None and _state(sync_redis, backend, run_id) == state
