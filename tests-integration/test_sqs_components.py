"""SQS queue and DynamoDB stores of flowcraft-sqs against real servers (no mocks) — SQS on moto, DynamoDB on
dynalite (atomic conditional writes; TTL is checked on moto's DynamoDB): visibility and redelivery, delays,
dead letters with their reason, redrive, FIFO, setup; context without lost updates and its size limit;
status CAS and the status index; coordination conditional writes, including items whose TTL has passed
(treated as absent)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from flowcraft.plugins import registry
from flowcraft.spi import Arrival, Backend, Completion, Job, RunRecord, Transition
from flowcraft_sqs import (
    DynamoDbCoordinationStore,
    ItemTooLargeError,
    KeyTooLongError,
    MessageTooLargeError,
    SqsQueue,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
def sqs_options(sqs_options: dict[str, Any]) -> dict[str, Any]:
    return {**sqs_options, "visibility_timeout": 2, "max_receive_count": 3}


@pytest_asyncio.fixture
async def backend(sqs_options: dict[str, Any]) -> AsyncIterator[Backend]:
    built = registry().build("sqs", sqs_options)
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


@pytest_asyncio.fixture
async def aws(sqs_options: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Raw aiobotocore clients on the same server, to look behind the stores."""
    from aiobotocore.session import get_session

    session = get_session()
    region = sqs_options["region"]
    async with (session.create_client("sqs", endpoint_url=sqs_options["endpoint_url"], region_name=region) as sqs,
                session.create_client("dynamodb", endpoint_url=sqs_options["dynamodb_endpoint_url"],
                                      region_name=region) as ddb):
        yield {"sqs": sqs, "dynamodb": ddb, "prefix": sqs_options["table_prefix"]}


async def receive(backend: Backend, count: int, timeout: float = 10.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += await backend.queue.dequeue(count - len(got), 1.0)
    return got


def job(run: str, node: str = "n", **kwargs: Any) -> Job:
    return Job(run, "bp", node, **kwargs)


# ============================================================================================== queue
async def test_setup_is_idempotent_and_creates_what_the_readme_says(backend: Backend, aws: dict[str, Any],
                                                                     sqs_options: dict[str, Any]) -> None:
    await backend.setup()  # a second time: nothing fails, nothing changes
    ddb, prefix = aws["dynamodb"], aws["prefix"]
    statuses = (await ddb.describe_table(TableName=prefix + "statuses"))["Table"]
    (index,) = statuses["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "status-lastUpdated"
    assert [k["AttributeName"] for k in index["KeySchema"]] == ["status", "lastUpdated"]
    contexts = (await ddb.describe_table(TableName=prefix + "contexts"))["Table"]
    assert [k["AttributeName"] for k in contexts["KeySchema"]] == ["runId", "key"]
    coordination = (await ddb.describe_table(TableName=prefix + "coordination"))["Table"]
    assert [k["AttributeName"] for k in coordination["KeySchema"]] == ["runId", "sk"]
    sqs = aws["sqs"]
    url = (await sqs.get_queue_url(QueueName=sqs_options["queue_name"]))["QueueUrl"]
    attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
    policy = json.loads(attributes["RedrivePolicy"])
    assert policy["deadLetterTargetArn"].endswith(":" + sqs_options["queue_name"] + "-dlq")
    assert int(policy["maxReceiveCount"]) == 3
    assert attributes["VisibilityTimeout"] == "2"


async def test_setup_enables_ttl(sqs_options: dict[str, Any], moto_endpoint: str) -> None:
    """On moto's DynamoDB, which has TTL (dynalite, where the other tests keep their tables, has not)."""
    from aiobotocore.session import get_session

    options = {**sqs_options, "dynamodb_endpoint_url": moto_endpoint}
    built = registry().build("sqs", options)
    try:
        await built.setup()
        await built.setup()  # enabling TTL again is no error
    finally:
        await built.close()
    async with get_session().create_client("dynamodb", endpoint_url=moto_endpoint,
                                           region_name=options["region"]) as ddb:
        for table in ("contexts", "statuses", "coordination"):
            ttl = await ddb.describe_time_to_live(TableName=options["table_prefix"] + table)
            assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
            assert ttl["TimeToLiveDescription"]["AttributeName"] == "ttl"


async def test_long_poll_returns_when_a_message_arrives(backend: Backend) -> None:
    async def later() -> None:
        await asyncio.sleep(0.5)
        await backend.queue.enqueue([job("late")])

    started = time.monotonic()
    sender = asyncio.create_task(later())
    got = await backend.queue.dequeue(1, 5.0)
    await sender
    assert [d.job.run_id for d in got] == ["late"]
    assert time.monotonic() - started < 4.0
    await backend.queue.ack(got[0])


async def test_batches_of_more_than_ten(backend: Backend) -> None:
    jobs = [job(f"r{i}", input={"i": i}, has_input=True) for i in range(25)]
    await backend.queue.enqueue(jobs)
    got = await receive(backend, 25)
    assert sorted(d.job.run_id for d in got) == sorted(j.run_id for j in jobs)
    await asyncio.gather(*(backend.queue.ack(d) for d in got))
    assert await backend.queue.dequeue(10, 0.5) == []


async def test_visibility_timeout_redelivery_counts_receives(backend: Backend) -> None:
    await backend.queue.enqueue([job("vis")])
    (first,) = await receive(backend, 1)
    assert first.deliveries == 1
    assert await backend.queue.dequeue(1, 0.5) == []
    (second,) = await receive(backend, 1, timeout=10)
    assert second.deliveries == 2 and second.job == first.job
    await backend.queue.ack(second)


async def test_heartbeat_extends_visibility(backend: Backend) -> None:
    await backend.queue.enqueue([job("beat")])
    (delivery,) = await receive(backend, 1)
    for _ in range(3):
        await asyncio.sleep(1.2)
        await backend.queue.extend(delivery, 2)
    assert await backend.queue.dequeue(1, 0.2) == []
    await backend.queue.ack(delivery)
    await backend.queue.extend(delivery, 2)  # after the ack: ignored, no error


async def test_delay_seconds_and_the_900_second_cap(backend: Backend, aws: dict[str, Any]) -> None:
    started = time.monotonic()
    await backend.queue.enqueue([job("soon")], delay=1.5)
    await backend.queue.enqueue([job("much-later")], delay=3600)  # capped at 900 s per hop
    assert await backend.queue.dequeue(2, 0.5) == []
    (delivery,) = await receive(backend, 1)
    assert delivery.job.run_id == "soon" and time.monotonic() - started >= 1.4
    await backend.queue.ack(delivery)
    queue = backend.queue
    assert isinstance(queue, SqsQueue)
    entry, _ = queue._entry("{}", job("x"), 3600)
    assert entry["DelaySeconds"] == 900


async def test_release_keeps_counting_deliveries_but_resets_the_sqs_receive_count(backend: Backend) -> None:
    """A released job is a fresh SQS message (so redrive never catches long re-delay chains), yet the engine
    still sees how often the job was delivered (its version-bounce limit depends on it)."""
    await backend.queue.enqueue([job("bounce")])
    delivery = (await receive(backend, 1))[0]
    for expected in range(2, 6):  # more releases than max_receive_count (3): never redriven
        await backend.queue.release(delivery, 0.0)
        (delivery,) = await receive(backend, 1)
        assert delivery.deliveries == expected
    await backend.queue.ack(delivery)
    assert not [d for d in await backend.queue.dead_letters(10) if d.job and d.job.run_id == "bounce"]


async def test_release_with_delay(backend: Backend) -> None:
    await backend.queue.enqueue([job("later")])
    (delivery,) = await receive(backend, 1)
    await backend.queue.release(delivery, 1.0)
    assert await backend.queue.dequeue(1, 0.3) == []
    (again,) = await receive(backend, 1)
    assert again.job.run_id == "later"
    await backend.queue.ack(again)


async def test_dead_letter_keeps_the_reason_and_peeking_does_not_consume(backend: Backend) -> None:
    await backend.queue.enqueue([job("dead", payload={"p": 1})])
    (delivery,) = await receive(backend, 1)
    await backend.queue.dead_letter(delivery, "cannot be processed: version '9' is not loaded")
    assert await backend.queue.dequeue(1, 0.5) == []
    for _ in range(2):  # dead_letters() peeks: the letter is still there the second time
        letters = [d for d in await backend.queue.dead_letters(100) if d.job and d.job.run_id == "dead"]
        assert len(letters) == 1
        assert letters[0].reason == "cannot be processed: version '9' is not loaded"
        assert letters[0].job is not None and letters[0].job.payload == {"p": 1}


async def test_redrive_policy_moves_a_message_whose_consumers_keep_dying(backend: Backend) -> None:
    await backend.queue.enqueue([job("poison")])
    for _ in range(3):  # max_receive_count = 3, never acknowledged (the consumer "crashes")
        assert len(await receive(backend, 1, timeout=10)) == 1
    assert await backend.queue.dequeue(1, 3.0) == []  # the next receive moved it to the DLQ
    letters = [d for d in await backend.queue.dead_letters(100) if d.job and d.job.run_id == "poison"]
    assert len(letters) == 1 and "redrive policy" in letters[0].reason


async def test_unreadable_message_is_dead_lettered(backend: Backend, aws: dict[str, Any],
                                                   sqs_options: dict[str, Any]) -> None:
    sqs = aws["sqs"]
    url = (await sqs.get_queue_url(QueueName=sqs_options["queue_name"]))["QueueUrl"]
    await sqs.send_message(QueueUrl=url, MessageBody="not json")
    assert await backend.queue.dequeue(1, 1.0) == []
    letters = [d for d in await backend.queue.dead_letters(100) if d.job is None]
    assert len(letters) == 1 and "unreadable message" in letters[0].reason


async def test_oversized_job_is_a_clear_error(backend: Backend) -> None:
    with pytest.raises(MessageTooLargeError, match="at most 256 KB"):
        await backend.queue.enqueue([job("big", input="x" * 300_000, has_input=True)])


async def test_fifo_queue(sqs_options: dict[str, Any]) -> None:
    built = registry().build("sqs", {**sqs_options, "fifo": True})
    await built.setup()
    try:
        queue = built.queue
        await queue.enqueue([job("f1"), job("f2")])
        got = await receive(built, 2)
        assert sorted(d.job.run_id for d in got) == ["f1", "f2"]
        await queue.release(got[0], 1.0)
        await queue.dead_letter(got[1], "fifo reason")
        (again,) = await receive(built, 1)
        assert again.job == got[0].job and again.deliveries == 2
        await queue.ack(again)
        letters = await queue.dead_letters(10)
        assert [(d.job.run_id if d.job else None, d.reason) for d in letters] == [("f2", "fifo reason")]
    finally:
        await built.close()


# ============================================================================================== context
async def test_context_concurrent_writers_on_one_run_lose_nothing(backend: Backend) -> None:
    run = "ctx: ü/x"

    async def writer(index: int) -> None:
        for step in range(10):
            await backend.context.apply(run, {f"w{index}": step, f"w{index}.{step}": True})

    await asyncio.gather(*(writer(i) for i in range(20)))
    values = await backend.context.get_all(run)
    assert len(values) == 20 + 200
    assert all(values[f"w{i}"] == 9 for i in range(20))
    assert await backend.context.get_many(run, ["w3", "w3", "missing", ""]) == {"w3": 9}


async def test_context_many_keys_and_deletes(backend: Backend) -> None:
    run = "ctx-many"
    await backend.context.apply(run, {f"k{i}": {"i": i} for i in range(130)})
    assert len(await backend.context.get_many(run, [f"k{i}" for i in range(130)])) == 130
    await backend.context.apply(run, {"k0": "new", "gone": 1}, [f"k{i}" for i in range(1, 130)] + ["gone"])
    assert await backend.context.get_all(run) == {"k0": "new"}


async def test_context_oversized_value_is_a_one_line_error(backend: Backend) -> None:
    with pytest.raises(ItemTooLargeError) as caught:
        await backend.context.apply("ctx-big", {"blob": "x" * 500_000})
    message = str(caught.value)
    assert "\n" not in message and "'blob'" in message and "400 KB" in message
    with pytest.raises(KeyTooLongError):
        await backend.context.apply("ctx-big", {"": 1})
    await backend.context.apply("ctx-big", {"fits": "x" * 300_000})
    assert len((await backend.context.get_many("ctx-big", ["fits"]))["fits"]) == 300_000


# ============================================================================================== status
async def test_status_cas_has_one_winner_among_many(backend: Backend) -> None:
    await backend.status.create(RunRecord("cas", "bp"))
    outcomes = await asyncio.gather(*(
        backend.status.transition("cas", ["running", "awaiting"], ("completed", "failed", "cancelled")[i % 3],
                                  {"errors": [{"i": i}]})
        for i in range(30)))
    winners = [o for o in outcomes if o is not None]
    assert len(winners) == 1
    final = await backend.status.get("cas")
    assert final is not None and final.status == winners[0].status and final.errors == winners[0].errors
    assert await backend.status.transition("cas", ["running"], "completed", {}) is None


async def test_status_index_serves_stalled_and_listing(backend: Backend) -> None:
    for i in range(7):
        await backend.status.create(RunRecord(f"s{i}", "bp-a" if i % 2 else "bp-b"))
    await backend.status.transition("s0", ["running"], "completed", {})
    await backend.status.transition("s1", ["running"], "awaiting", {"awaiting": [{"node_id": "w"}]})
    await asyncio.sleep(0.05)
    stalled = {r.run_id for r in await backend.status.stalled(time.time(), 100)}
    assert stalled == {f"s{i}" for i in range(1, 7)}
    assert len(await backend.status.stalled(time.time(), 2)) == 2
    seen, cursor = [], None
    while True:
        page, cursor = await backend.status.list(limit=3, cursor=cursor)
        assert len(page) <= 3
        seen += [r.run_id for r in page]
        if cursor is None:
            break
    assert sorted(seen) == [f"s{i}" for i in range(7)]
    newest, _ = await backend.status.list(limit=1)
    assert newest[0].run_id == "s1"  # the most recently updated
    only_a, _ = await backend.status.list(blueprint_id="bp-a", status="running")
    assert {r.run_id for r in only_a} == {"s3", "s5"}


# ============================================================================================== coordination
async def put_raw(aws: dict[str, Any], item: dict[str, Any]) -> None:
    await aws["dynamodb"].put_item(TableName=aws["prefix"] + "coordination", Item=item)


async def test_expired_items_are_absent(backend: Backend, aws: dict[str, Any]) -> None:
    past = str(int(time.time()) - 10)
    stale = job("ttl", "a")
    old = json.dumps(Completion("a", output=0, token="old").to_dict())
    await put_raw(aws, {"runId": {"S": "ttl"}, "sk": {"S": "run"}, "v": {"N": "3"}, "ttl": {"N": past},
                        "jobs": {"M": {stale.key: {"S": "done"}}}, "docs": {"M": {}}, "arrivals": {"M": {}},
                        "done": {"M": {stale.key: {"S": old}}},
                        "leases": {"M": {stale.key: {"M": {"o": {"S": "ghost"}, "e": {"N": str(time.time() + 999)}}}}}})
    begin = await backend.coordination.begin(stale, "w1", 30)
    assert begin.lease and begin.state is None and begin.completion is None  # the expired item is not there
    assert await backend.coordination.schedule("ttl", [stale]) == [stale]
    assert [p.job for p in await backend.coordination.jobs("ttl")] == [stale]
    committed = await backend.coordination.commit(Transition("ttl", stale.key,
                                                             completion=Completion("a", output=1, token="t"),
                                                             finish=True))
    assert committed.pending == 0


async def test_run_items_expire_only_when_ttl_seconds_is_set(backend: Backend, aws: dict[str, Any],
                                                             sqs_options: dict[str, Any]) -> None:
    async def ttl_of(run_id: str) -> str | None:
        item = (await aws["dynamodb"].get_item(TableName=aws["prefix"] + "coordination",
                                               Key={"runId": {"S": run_id}, "sk": {"S": "run"}}))["Item"]
        return item.get("ttl", {}).get("N")

    expiring = registry().build("sqs", {**sqs_options, "ttl_seconds": 3600})
    try:
        await expiring.coordination.schedule("ttl-on", [job("ttl-on", "a")])
        assert int(await ttl_of("ttl-on") or 0) > time.time() + 3000
    finally:
        await expiring.close()
    # the default keeps items (finished runs go by `retention`): a ttl an earlier setting left is removed
    await backend.coordination.schedule("ttl-on", [job("ttl-on", "b")])
    assert await ttl_of("ttl-on") is None


async def test_a_live_completion_record_conflicts(backend: Backend) -> None:
    coordination = backend.coordination
    first = job("done-ttl", "a")
    await coordination.schedule("done-ttl", [first])
    mine = Completion("a", output={"v": 1}, token="mine")
    assert (await coordination.commit(Transition("done-ttl", first.key, completion=mine))).conflict is None
    theirs = Completion("a", output={"v": 2}, token="theirs")
    assert (await coordination.commit(Transition("done-ttl", first.key, completion=theirs))).conflict == mine


async def test_leases(backend: Backend) -> None:
    coordination = backend.coordination
    target = job("lease", "a")
    await coordination.schedule("lease", [target])
    assert (await coordination.begin(target, "w1", 30)).lease
    assert not (await coordination.begin(target, "w2", 30)).lease  # live lease of another owner
    assert (await coordination.begin(target, "w1", 30)).lease  # re-entrant for its owner
    assert await coordination.renew("lease", target.key, "w1", 30)
    assert not await coordination.renew("lease", target.key, "w2", 30)
    (pending,) = await coordination.jobs("lease")
    assert pending.leased
    await coordination.release("lease", target.key, "w2")  # not the owner: nothing happens
    assert not (await coordination.begin(target, "w2", 30)).lease
    await coordination.release("lease", target.key, "w1")
    assert (await coordination.begin(target, "w2", 0.3)).lease
    await asyncio.sleep(0.5)
    assert (await coordination.begin(target, "w3", 30)).lease  # w2's lease expired


async def test_finishing_a_job_drops_its_lease(backend: Backend, aws: dict[str, Any]) -> None:
    coordination = backend.coordination
    first = job("drop", "a")
    await coordination.schedule("drop", [first])
    assert (await coordination.begin(first, "w1", 30)).lease
    committed = await coordination.commit(Transition("drop", first.key,
                                                     completion=Completion("a", output=1, token="t"), finish=True,
                                                     owner="w1"))
    assert coordination.releases_lease and committed.conflict is None
    (item,) = (await aws["dynamodb"].query(
        TableName=aws["prefix"] + "coordination", KeyConditionExpression="runId = :r AND sk = :k",
        ExpressionAttributeValues={":r": {"S": "drop"}, ":k": {"S": "run"}}, ConsistentRead=True))["Items"]
    assert item["jobs"]["M"][first.key] == {"S": "done"} and first.key not in item["leases"]["M"]
    assert json.loads(item["done"]["M"][first.key]["S"])["token"] == "t"
    assert (await coordination.begin(first, "w2", 30)).lease  # no release needed
    second = job("drop", "b")
    await coordination.schedule("drop", [second])
    assert (await coordination.begin(second, "w1", 30)).lease
    assert (await coordination.begin(second, "w2", 0.01)).lease is False
    # a lease another worker holds is not dropped by this owner's commit
    stolen = await coordination.commit(Transition("drop", second.key, completion=Completion("b", output=1, token="u"),
                                                  finish=True,
                                                  owner="w9"))
    assert stolen.conflict is None and not (await coordination.begin(second, "w2", 30)).lease
    await coordination.release("drop", second.key, "w1")
    # a lease on a job that was never scheduled leaves nothing behind once released
    ghost = job("drop", "never")
    begin = await coordination.begin(ghost, "w1", 30)
    assert begin.lease and begin.state is None
    await coordination.release("drop", ghost.key, "w1")
    keys = {i["sk"]["S"] for i in (await aws["dynamodb"].query(
        TableName=aws["prefix"] + "coordination", KeyConditionExpression="runId = :r",
        ExpressionAttributeValues={":r": {"S": "drop"}}, ConsistentRead=True))["Items"]}
    assert keys == {"run"}


async def test_large_contributions_and_documents_live_in_their_own_items(backend: Backend,
                                                                       sqs_options: dict[str, Any]) -> None:
    """Values too big to inline in the run item go to blob items: the join still gets every contribution,
    the stored job document comes back whole, and the run item stays small."""
    coordination = backend.coordination
    run, members = "big-join", ("p1", "p2")
    target = job(run, "j")
    await coordination.schedule(run, [job(run, m) for m in members])
    big = {m: m * 5000 for m in members}
    first = await coordination.commit(Transition(run, job(run, "p1").key, completion=None,
                                                 arrivals=(Arrival(target, "p1", arrived=True, contribution=big["p1"],
                                                                   expected=members),), finish=True))
    assert first.fired == ()
    second = await coordination.commit(Transition(run, job(run, "p2").key, completion=None,
                                                  arrivals=(Arrival(target, "p2", arrived=True, contribution=big["p2"],
                                                                    expected=members),), finish=True))
    assert [j.input for j in second.fired] == [big] and second.pending == 1
    (pending,) = await coordination.jobs(run)
    assert pending.job.input == big
    # a replay elsewhere (no cached run item) re-fires the same document
    other = DynamoDbCoordinationStore.from_config(sqs_options, {})
    try:
        replay = await other.commit(Transition(run, job(run, "p2").key, completion=None,
                                               arrivals=(Arrival(target, "p2", arrived=True, contribution=big["p2"],
                                                                 expected=members),), finish=True,
                                               recovery=True))
        assert [j.input for j in replay.fired] == [big]
    finally:
        await other.close()


async def test_counts_stay_exact_under_replays_and_concurrency(backend: Backend) -> None:
    coordination = backend.coordination
    run = "counts"
    start = job(run, "s")
    await coordination.schedule(run, [start])
    completion = Completion("s", output="out", token="tok")
    fan = tuple(Arrival(job(run, f"b{i}", input="out", has_input=True), "s", arrived=True, contribution="out",
                        expected=("s",)) for i in range(5))
    results = await asyncio.gather(*(
        coordination.commit(Transition(run, start.key, completion=completion, arrivals=fan, finish=True,
                                       recovery=bool(i % 2)))
        for i in range(6)))
    everyone = {f"b{i}" for i in range(5)}
    assert all(r.conflict is None and {j.node_id for j in r.fired} in (set(), everyone) for r in results)
    assert all({j.node_id for j in r.fired} == everyone for r in results[1::2])  # recovery lists all pending
    assert sum(len(r.fired) for r in results[0::2]) in (0, 5)  # inserted once, by whoever came first
    final = await coordination.commit(Transition(run, start.key, completion=completion, arrivals=fan, finish=True,
                                                 recovery=True))
    assert (final.pending, final.parked) == (5, 0)
    assert len(await coordination.jobs(run)) == 5


async def test_big_fan_out_writes_whole_maps(backend: Backend) -> None:
    """150 jobs fired by one commit (too many entries for one 4 KB update expression, so the run item's maps
    are written whole): the counts stay exact and a replay converges."""
    coordination = backend.coordination
    run = "wide"
    start = job(run, "s")
    await coordination.schedule(run, [start, job(run, "lane149")])  # one lane is there already
    lanes = tuple(Arrival(job(run, f"lane{i}"), "s", arrived=True, contribution=i, expected=("s",)) for i in range(150))
    completion = Completion("s", output=None, token="wide")
    first = await coordination.commit(Transition(run, start.key, completion=completion, arrivals=lanes, finish=True))
    assert sorted(j.node_id for j in first.fired) == sorted(f"lane{i}" for i in range(149))
    assert first.pending == 150
    replay = await coordination.commit(Transition(run, start.key, completion=completion, arrivals=lanes, finish=True,
                                                  recovery=True))
    assert len(replay.fired) == 150 and replay.pending == 150
    begin = await coordination.begin(start, "w", 5)
    assert begin.state == "done" and begin.completion == completion


async def test_store_built_by_hand_with_explicit_client(backend: Backend, aws: dict[str, Any]) -> None:
    store = DynamoDbCoordinationStore(client=aws["dynamodb"], table_name=aws["prefix"] + "coordination")
    first = job("hand", "a")
    assert await store.schedule("hand", [first]) == [first]
    assert await backend.coordination.schedule("hand", [first]) == []
    parked = await store.park("hand", first.key)
    assert (parked.pending, parked.parked) == (0, 1)
    assert await store.activity("hand") is not None
    await store.delete_run("hand")
    assert await store.activity("hand") is None and await store.jobs("hand", "parked") == []
    await store.close()  # a user's client is not closed by the store
    assert await aws["dynamodb"].list_tables()


# ============================================================================================== context in the run item
async def run_item(aws: dict[str, Any], run: str) -> dict[str, Any]:
    (item,) = (await aws["dynamodb"].query(
        TableName=aws["prefix"] + "coordination", KeyConditionExpression="runId = :r AND sk = :k",
        ExpressionAttributeValues={":r": {"S": run}, ":k": {"S": "run"}}, ConsistentRead=True))["Items"]
    return item


async def test_a_commit_writes_its_context_in_the_run_item(backend: Backend, aws: dict[str, Any],
                                                           sqs_options: dict[str, Any]) -> None:
    """applies_context: the record, the context (a large value in a blob item, a delete) and the lease drop
    are one write; another process reads the context; a replay writes none of it again."""
    assert backend.capabilities.applies_context
    run, first = "ctx-commit", job("ctx-commit", "a")
    await backend.context.apply(run, {"input": 1, "old": 0})  # a run's start writes its context first
    assert await backend.coordination.activity(run) is None  # nothing scheduled yet: a start that died here
    assert await backend.coordination.jobs(run) == []
    await backend.coordination.schedule(run, [first])
    assert await backend.coordination.activity(run) is not None
    assert (await backend.coordination.begin(first, "w1", 30)).lease
    completion = Completion("a", output=1, token="t", context_updates={"_outputs.a": 1, "big": "x" * 5000},
                            context_deletes=("old",))
    committed = await backend.coordination.commit(Transition(run, first.key, completion=completion, finish=True,
                                                             owner="w1"))
    assert committed.conflict is None and committed.pending == 0
    item = await run_item(aws, run)
    assert set(item["ctx"]["M"]) == {"input", "_outputs.a", "big"} and item["ctx"]["M"]["big"]["S"].startswith("@")
    assert item["jobs"]["M"][first.key] == {"S": "done"} and first.key not in item["leases"]["M"]
    other = registry().build("sqs", sqs_options)
    try:
        assert await other.context.get_all(run) == {"input": 1, "_outputs.a": 1, "big": "x" * 5000}
    finally:
        await other.close()
    await backend.context.apply(run, {"big": "later"})
    await backend.coordination.commit(Transition(run, first.key, completion=completion, finish=True, recovery=True))
    assert await backend.context.get_many(run, ["big", "old"]) == {"big": "later"}
    await backend.context.delete_run(run)
    assert await backend.context.get_all(run) == {}
    assert (await backend.coordination.begin(first, "w2", 30)).state == "done"  # the coordination state stays


async def test_a_completion_with_more_context_writes_than_one_update_holds(backend: Backend,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Past CONTEXT_ENTRIES_PER_WRITE context writes the record goes first, marked, then the context, then the
    commit; a worker that dies between them leaves the job pending, and the replay writes the context (before
    the successors fire); once the job is done a replay writes nothing."""
    coordination = backend.coordination
    run, first = "ctx-wide", job("ctx-wide", "a")
    await coordination.schedule(run, [first])
    updates = {f"k{i}": i for i in range(150)}
    completion = Completion("a", output=None, token="t", context_updates=updates)
    successor = Arrival(job(run, "b"), "a", arrived=True, contribution=None, expected=("a",))

    async def dies(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the worker died here")

    monkeypatch.setattr(coordination, "context_apply", dies)
    with pytest.raises(RuntimeError):
        await coordination.commit(Transition(run, first.key, completion=completion, arrivals=(successor,),
                                             finish=True))
    monkeypatch.undo()
    begin = await coordination.begin(first, "w1", 30)
    assert begin.state == "pending" and begin.completion == completion
    assert await backend.context.get_all(run) == {}
    replay = await coordination.commit(Transition(run, first.key, completion=completion, arrivals=(successor,),
                                                  finish=True, recovery=True))
    assert [j.node_id for j in replay.fired] == ["b"]
    assert await backend.context.get_all(run) == updates
    await backend.context.apply(run, {"k0": "later"})
    await coordination.commit(Transition(run, first.key, completion=completion, arrivals=(successor,), finish=True,
                                         recovery=True))
    assert (await backend.context.get_many(run, ["k0"])) == {"k0": "later"}
    # and without a failure: all of it, in steps
    second = job("ctx-wide-2", "a")
    await coordination.schedule("ctx-wide-2", [second])
    done = await coordination.commit(Transition("ctx-wide-2", second.key, completion=completion, finish=True))
    assert done.pending == 0 and await backend.context.get_all("ctx-wide-2") == updates


async def test_context_past_the_run_items_size_goes_to_blob_items(backend: Backend) -> None:
    """Values small enough to inline, written outside commits until the run item would pass 400 KB: the
    write that would pass it puts its values in their own items instead."""
    run = "ctx-grows"
    for part in range(3):
        await backend.context.apply(run, {f"k{part}.{i}": "x" * 1900 for i in range(100)})
    values = await backend.context.get_all(run)
    assert len(values) == 300 and all(v == "x" * 1900 for v in values.values())


async def test_context_of_an_expired_run_item_is_absent(backend: Backend, aws: dict[str, Any]) -> None:
    past = str(int(time.time()) - 10)
    await put_raw(aws, {"runId": {"S": "ctx-ttl"}, "sk": {"S": "run"}, "v": {"N": "2"}, "ttl": {"N": past},
                        "ctx": {"M": {"stale": {"S": "1"}}}, "jobs": {"M": {"0:a": {"S": "pending"}}}})
    assert await backend.context.get_all("ctx-ttl") == {}
    await backend.context.apply("ctx-ttl", {"fresh": 2})
    assert await backend.context.get_all("ctx-ttl") == {"fresh": 2}
    assert (await backend.coordination.begin(job("ctx-ttl", "a"), "w", 30)).state is None  # started afresh
