"""The ``sqs`` preset's run record mirror and its end-of-run read, against real servers (SQS on moto, DynamoDB
on dynalite): a job's record comes back with its lease while the run item can tell it is unchanged; every status
transition — made by another process too, or half made by one that died — is seen by the next receive; a
record created elsewhere or too large is read from the status table; the run's end reads the outputs the
settling commit returned, and a context write of this process in between is not hidden."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from flowcraft.plugins import registry
from flowcraft.spi import Backend, Completion, Delivery, Job, RunRecord, Transition

pytestmark = pytest.mark.asyncio


async def built(options: dict[str, Any]) -> Backend:
    backend = registry().build("sqs", options)
    await backend.setup()
    return backend


@pytest_asyncio.fixture
async def backend(sqs_options: dict[str, Any]) -> AsyncIterator[Backend]:
    one = await built(sqs_options)
    try:
        yield one
    finally:
        await one.close()


@pytest_asyncio.fixture
async def other(sqs_options: dict[str, Any], backend: Backend) -> AsyncIterator[Backend]:
    """The same tables from another process's point of view: its own clients and caches."""
    two = await built(sqs_options)
    try:
        yield two
    finally:
        await two.close()


async def dynamodb_requests(backend: Backend) -> Counter[str]:
    """A counter of the DynamoDB operations ``backend`` sends from now on."""
    seen: Counter[str] = Counter()

    def count(event_name: str, **kwargs: Any) -> None:
        seen[event_name.rsplit(".", 1)[-1]] += 1

    clients = {id(c): c for c in [await backend.coordination._source.get(),  # type: ignore[attr-defined]
                                  await backend.status._source.get()]}  # type: ignore[attr-defined]
    for client in clients.values():
        client.meta.events.register("before-call.dynamodb.*", count)
    return seen


async def start(backend: Backend, run_id: str, nodes: tuple[str, ...] = ("a",), record_input: Any = None) -> None:
    """What a run's start does: the record, the first jobs in the run item, then on the queue."""
    assert await backend.status.create(RunRecord(run_id, "bp", version="1", input=record_input))
    jobs = [Job(run_id, "bp", node) for node in nodes]
    await backend.coordination.schedule(run_id, jobs)
    await backend.queue.enqueue(jobs)


async def receive_one(backend: Backend) -> Delivery:
    for _ in range(20):
        got = await backend.queue.receive(1, 1.0, "w1", 30)
        if got:
            return got[0]
    raise AssertionError("nothing was delivered")


async def run_item(aws_options: dict[str, Any], run_id: str) -> dict[str, Any]:
    from aiobotocore.session import get_session

    async with get_session().create_client("dynamodb", endpoint_url=aws_options["dynamodb_endpoint_url"],
                                           region_name=aws_options["region"]) as ddb:
        response = await ddb.get_item(TableName=aws_options["table_prefix"] + "coordination",
                                      Key={"runId": {"S": run_id}, "sk": {"S": "run"}}, ConsistentRead=True)
    return dict(response.get("Item") or {})


async def test_a_jobs_record_comes_back_with_its_lease(backend: Backend) -> None:
    await start(backend, "fresh", record_input={"x": [1, 2]})
    sent = await dynamodb_requests(backend)
    delivery = await receive_one(backend)
    assert delivery.prefetched and delivery.begin is not None and delivery.begin.lease
    assert delivery.begin.state == "pending"
    assert sent == Counter({"UpdateItem": 1})  # the lease, and nothing read
    stored = await backend.status.get("fresh")
    assert stored is not None and delivery.record is not None
    assert delivery.record.to_dict() == stored.to_dict()
    await backend.queue.ack(delivery)


@pytest.mark.parametrize("to_status", ["cancelled", "failed", "awaiting", "completed", "running"])
async def test_a_transition_made_in_another_process_is_seen_by_the_next_receive(
        backend: Backend, other: Backend, to_status: str) -> None:
    await start(backend, "moved", nodes=("a", "b"))
    changes = {"errors": [{"message": "boom"}]} if to_status == "failed" else {}
    won = await other.status.transition("moved", ["running"], to_status, changes)
    assert won is not None and won.status == to_status
    sent = await dynamodb_requests(backend)
    delivery = await receive_one(backend)
    assert delivery.record is not None
    assert delivery.record.to_dict() == won.to_dict()  # the status table's record, not the run item's copy
    # an active run's job comes with its lease; a settled run's with its record only, the lease handed back
    assert delivery.prefetched == (to_status in ("running", "awaiting"))
    pending = await backend.coordination.jobs("moved", "pending")
    assert [held.leased for held in pending if held.job.key == delivery.job.key] == [delivery.prefetched]
    assert sent["BatchGetItem"] == 1
    await backend.queue.ack(delivery)


async def test_a_transition_half_made_is_never_hidden(backend: Backend, other: Backend) -> None:
    """The mark goes first: a process that died between it and the status write leaves the run item telling
    readers to read the status table; the one that finishes the transition then needs no mark of its own."""
    await start(backend, "half")
    await other.coordination.mark("half")  # type: ignore[attr-defined]
    delivery = await receive_one(backend)
    assert delivery.record is not None and delivery.record.status == "running"
    await backend.queue.release(delivery)
    sent = await dynamodb_requests(other)
    assert await other.status.transition("half", ["running"], "cancelled", {}) is not None
    assert sent == Counter({"UpdateItem": 2})  # its own mark (it had not seen the other's), then the status
    delivery = await receive_one(backend)
    assert delivery.record is not None and delivery.record.status == "cancelled"
    await backend.queue.ack(delivery)


async def test_a_write_that_leaves_no_job_pending_marks_the_run(backend: Backend, sqs_options: dict[str, Any]
                                                                ) -> None:
    """The run's end needs no mark write of its own: the commit that finished the last job wrote it."""
    await start(backend, "ending")
    delivery = await receive_one(backend)
    assert "chk" not in await run_item(sqs_options, "ending")
    committed = await backend.coordination.commit(Transition(
        "ending", delivery.job.key, completion=Completion("a", output=1, token="t"), finish=True, owner="w1"))
    assert committed.pending == committed.parked == 0
    assert (await run_item(sqs_options, "ending"))["chk"] == {"BOOL": True}
    sent = await dynamodb_requests(backend)
    assert await backend.status.transition("ending", ["running"], "completed", {}) is not None
    assert sent == Counter({"UpdateItem": 1})
    begin, record = await backend.coordination.begin_prefetch(delivery.job, "w2", 30)  # type: ignore[attr-defined]
    assert begin.state == "done" and record is None
    await backend.queue.ack(delivery)


async def test_a_record_created_elsewhere_or_too_large_is_read_from_the_status_table(
        backend: Backend, other: Backend, sqs_options: dict[str, Any]) -> None:
    big = {"blob": "x" * 4096}
    await start(backend, "large", record_input=big)
    assert "rec" not in await run_item(sqs_options, "large")
    assert await other.status.create(RunRecord("elsewhere", "bp", version="1", input=1))
    first = Job("elsewhere", "bp", "a")
    await backend.coordination.schedule("elsewhere", [first])  # a start that died after the record: finished here
    await backend.queue.enqueue([first])
    assert "rec" not in await run_item(sqs_options, "elsewhere")
    records = {}
    for _ in range(2):
        delivery = await receive_one(backend)
        assert delivery.prefetched and delivery.record is not None
        records[delivery.job.run_id] = delivery.record
        await backend.queue.ack(delivery)
    assert records["large"].input == big and records["elsewhere"].input == 1


async def test_the_runs_end_reads_the_settling_commits_item(backend: Backend, other: Backend) -> None:
    coordination = backend.coordination
    await start(backend, "settled", nodes=("a", "b"))
    a, b = Job("settled", "bp", "a"), Job("settled", "bp", "b")
    big = "y" * 3000  # a value in a blob item: read from there
    await coordination.commit(Transition("settled", a.key, finish=True, completion=Completion(
        "a", output=1, token="ta", context_updates={"_outputs.a": 1})))
    await coordination.commit(Transition("settled", b.key, finish=True, completion=Completion(
        "b", output=big, token="tb", context_updates={"_outputs.b": big})))
    await other.context.apply("settled", {"_outputs.a": "later"})  # another process after the settling commit
    sent = await dynamodb_requests(backend)
    assert await backend.context.get_many("settled", ["_outputs.a", "_outputs.b", "missing"]) == {
        "_outputs.a": 1, "_outputs.b": big}  # as the settling commit left them
    assert sent == Counter({"BatchGetItem": 1})  # the blob only
    assert await backend.context.get_many("settled", ["_outputs.a"]) == {"_outputs.a": "later"}  # read: one shot
    assert sent["GetItem"] == 1


async def test_a_context_write_after_the_settling_commit_is_not_hidden(backend: Backend) -> None:
    coordination = backend.coordination
    await start(backend, "rewritten")
    a = Job("rewritten", "bp", "a")
    await coordination.commit(Transition("rewritten", a.key, finish=True, completion=Completion(
        "a", output=1, token="ta", context_updates={"_outputs.a": 1})))
    await backend.context.apply("rewritten", {"_outputs.a": 2})
    assert await backend.context.get_all("rewritten") == {"_outputs.a": 2}


async def test_the_mirror_holds_the_status_items_attributes(backend: Backend, sqs_options: dict[str, Any]) -> None:
    await start(backend, "same", record_input={"k": "v"})
    item = await run_item(sqs_options, "same")
    from aiobotocore.session import get_session

    async with get_session().create_client("dynamodb", endpoint_url=sqs_options["dynamodb_endpoint_url"],
                                           region_name=sqs_options["region"]) as ddb:
        status_item = (await ddb.get_item(TableName=sqs_options["table_prefix"] + "statuses",
                                          Key={"runId": {"S": "same"}}, ConsistentRead=True))["Item"]
    assert item["rec"]["M"] == status_item and json.loads(status_item["input"]["S"]) == {"k": "v"}


async def test_a_run_id_used_again_after_a_purge_elsewhere_is_marked_anew(backend: Backend, other: Backend,
                                                                         sqs_options: dict[str, Any]) -> None:
    """What this process saw of an earlier run with the same id (its mark) does not spare the new run's mark."""
    await start(backend, "again")
    delivery = await receive_one(backend)
    await backend.coordination.commit(Transition("again", delivery.job.key, finish=True, owner="w1",
                                                 completion=Completion("a", output=1, token="t")))
    await backend.queue.ack(delivery)
    assert backend.coordination.marked("again")  # type: ignore[attr-defined]
    await other.coordination.delete_run("again")  # purged by another process (run items first)
    assert await other.status.delete("again")
    assert await run_item(sqs_options, "again") == {}  # the delete's mark created no item
    assert await backend.status.create(RunRecord("again", "bp", version="1"))
    sent = await dynamodb_requests(backend)
    assert await backend.status.transition("again", ["running"], "cancelled", {}) is not None
    assert sent == Counter({"UpdateItem": 2})  # the new run's mark, then the status
    first = Job("again", "bp", "a")
    await backend.coordination.schedule("again", [first])
    await backend.queue.enqueue([first])
    delivery = await receive_one(backend)
    assert delivery.record is not None and delivery.record.status == "cancelled"
    await backend.queue.ack(delivery)


async def test_a_deleted_record_is_not_told_by_the_run_item(backend: Backend, other: Backend,
                                                           sqs_options: dict[str, Any]) -> None:
    await start(backend, "gone")
    assert await other.status.delete("gone")
    assert (await run_item(sqs_options, "gone"))["chk"] == {"BOOL": True}
    delivery = await receive_one(backend)
    assert not delivery.prefetched and delivery.record is None  # no record: the engine reads both itself
    assert (await backend.coordination.begin(delivery.job, "w2", 30)).lease  # the prefetched lease was handed back
    await backend.queue.ack(delivery)
