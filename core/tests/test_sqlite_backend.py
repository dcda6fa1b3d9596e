"""The embedded SQLite backend: what is particular to one file shared by processes (the contract suite
runs on it in ``test_contract_sqlite.py``).

Several ``SqliteDatabase`` objects on one file each own a connection and a thread, so they contend for
SQLite's locks exactly as worker processes do; the last tests run real worker processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from flowcraft import App, Engine, EngineOptions, Flow, NodeContext, NodeResult, Worker
from flowcraft.backends.sqlite import (
    SqliteContextStore,
    SqliteCoordinationStore,
    SqliteDatabase,
    SqliteQueue,
    SqliteStatusStore,
)
from flowcraft.client import Client
from flowcraft.plugins import registry
from flowcraft.spi import Arrival, Backend, Completion, Delivery, Job, RunRecord, Transition
from flowcraft.testing.apps import app as contract_app


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "flowcraft.db"


@pytest_asyncio.fixture
async def sqlite_backend(db_path: Path) -> AsyncIterator[Backend]:
    backend = registry().build("sqlite", {"path": str(db_path), "visibility_timeout": 0.5})
    await backend.setup()
    try:
        yield backend
    finally:
        await backend.close()


@asynccontextmanager
async def databases(path: Path, count: int) -> AsyncIterator[list[SqliteDatabase]]:
    """``count`` independent connections (each with its own thread) on one file."""
    opened = [SqliteDatabase(path) for _ in range(count)]
    try:
        yield opened
    finally:
        for database in opened:
            await database.close()


def _job(run_id: str, node: str = "n", **kwargs: Any) -> Job:
    return Job(run_id, "bp", node, **kwargs)


async def _drain(queue: SqliteQueue, wait: float = 0.2) -> list[Delivery]:
    got: list[Delivery] = []
    while batch := await queue.dequeue(7, wait):
        got += batch
    return got


# ---------------------------------------------------------------------------------------------- database
async def test_components_share_one_database_in_wal_mode(sqlite_backend: Backend, db_path: Path) -> None:
    components = (sqlite_backend.queue, sqlite_backend.context, sqlite_backend.status, sqlite_backend.coordination)
    assert all(isinstance(c, SqliteQueue | SqliteContextStore | SqliteStatusStore | SqliteCoordinationStore)
               for c in components)
    databases_used = {id(c.db) for c in components}  # type: ignore[attr-defined]
    assert len(databases_used) == 1
    assert sqlite_backend.coordination.applies_context and sqlite_backend.capabilities.applies_context
    assert sqlite_backend.queue.visibility_timeout == 0.5
    assert await asyncio.to_thread(db_path.exists)  # the parent directory was created
    db: SqliteDatabase = sqlite_backend.queue.db  # type: ignore[attr-defined]
    pragmas = await db.call(lambda conn: [conn.execute(f"PRAGMA {name}").fetchone()[0]
                                          for name in ("journal_mode", "synchronous", "busy_timeout")])
    assert pragmas == ["wal", 1, 10000]  # synchronous=NORMAL


async def test_the_database_thread_checkpoints_the_wal_after_its_calls(db_path: Path) -> None:
    """Automatic checkpoints are off (they ran inside a COMMIT); after its calls, at most every 50 ms, the database
    thread has its checkpointer (a thread and connection of its own) copy the WAL into the database file: a reader
    of the file alone then sees the writes. Closing the database ends that thread."""
    def file_alone() -> int:
        """Rows in the database file: immutable reads it, never the WAL (0 before the schema got there; -1 when
        a checkpoint was writing it meanwhile, which an immutable reader does not expect)."""
        with sqlite3.connect(f"{db_path.as_uri()}?immutable=1", uri=True) as reader:
            try:
                if reader.execute("SELECT 1 FROM sqlite_master WHERE name = 'fc_context'").fetchone() is None:
                    return 0
                return int(reader.execute("SELECT COUNT(*) FROM fc_context").fetchone()[0])
            except sqlite3.DatabaseError:
                return -1

    async with databases(db_path, 1) as (db,):
        assert await db.call(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
        await db.write(lambda conn: conn.executemany(
            "INSERT INTO fc_context (run_id, key, value) VALUES ('r', ?, '1')", [(str(i),) for i in range(50)]))
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(file_alone) != 50:  # the checkpoint runs beside the calls, not in their thread
            assert time.monotonic() < deadline, "no checkpoint copied the WAL into the database file"
            await asyncio.sleep(0.06)
            await db.call(lambda conn: None)  # a batch 50 ms after the last request asks for another checkpoint
        checkpointer = db._thread._checkpointer  # type: ignore[union-attr]
        assert checkpointer is not None and checkpointer._thread.is_alive()
    assert not checkpointer._thread.is_alive()
    assert await asyncio.to_thread(file_alone) == 50


async def test_write_transactions_take_turns_on_the_writer_file(db_path: Path) -> None:
    """A write transaction first takes an exclusive flock on ``<path>-writer`` (the kernel wakes the next writer as
    it is given back, where SQLite's busy handler sleeps 1, 2, 5 ... ms) and gives it back after its COMMIT; reads
    outside a transaction take no turn."""
    fcntl = pytest.importorskip("fcntl")
    async with databases(db_path, 1) as (db,):
        await db.setup()
        turn = os.open(f"{db_path}-writer", os.O_RDWR)
        try:
            fcntl.flock(turn, fcntl.LOCK_EX)  # another writer's turn
            write = asyncio.ensure_future(db.write(lambda conn: conn.execute(
                "INSERT INTO fc_context (run_id, key, value) VALUES ('r', 'k', '1')")))
            await asyncio.sleep(0.2)
            assert not write.done()  # waiting for the turn, not failing
            fcntl.flock(turn, fcntl.LOCK_UN)
            await asyncio.wait_for(write, 5)
            assert await db.call(lambda conn: conn.execute("SELECT COUNT(*) FROM fc_context").fetchone()[0]) == 1
            fcntl.flock(turn, fcntl.LOCK_EX | fcntl.LOCK_NB)  # given back after the COMMIT
            assert await db.call(lambda conn: conn.execute("SELECT COUNT(*) FROM fc_context").fetchone()[0]) == 1
        finally:
            os.close(turn)


async def test_default_path_and_reopen_after_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    backend = registry().build("sqlite")
    await backend.status.create(RunRecord("r1", "bp"))
    await backend.close()
    assert (tmp_path / ".flowcraft" / "flowcraft.db").exists()
    await backend.close()  # idempotent
    record = await backend.status.get("r1")  # a call after close opens the database again
    assert record is not None and record.blueprint_id == "bp"
    await backend.close()


async def test_foreign_context_store_turns_applies_context_off(db_path: Path) -> None:
    backend = registry().build("sqlite", {"path": str(db_path)}, overrides={"context": "memory"})
    try:
        assert not backend.coordination.applies_context and not backend.capabilities.applies_context
    finally:
        await backend.close()


async def test_state_is_durable_across_backends(db_path: Path) -> None:
    options = {"path": str(db_path)}
    first = registry().build("sqlite", options)
    await first.status.create(RunRecord("run", "bp", input={"x": 1}))
    await first.context.apply("run", {"k": [1, 2]})
    await first.coordination.schedule("run", [_job("run")])
    await first.queue.enqueue([_job("run")])
    await first.close()
    second = registry().build("sqlite", options)
    try:
        record = await second.status.get("run")
        assert record is not None and record.input == {"x": 1}
        assert await second.context.get_all("run") == {"k": [1, 2]}
        assert [p.job for p in await second.coordination.jobs("run")] == [_job("run")]
        (delivery,) = await second.queue.dequeue(5, 1.0)
        assert delivery.job == _job("run")
    finally:
        await second.close()


async def test_a_failing_call_does_not_fail_the_calls_committed_with_it(sqlite_backend: Backend) -> None:
    """Calls queued together share one transaction; one that fails is rolled back alone."""
    context, status = sqlite_backend.context, sqlite_backend.status
    await status.create(RunRecord("run", "bp"))
    outcomes = await asyncio.gather(
        *(context.apply("run", {f"k{i}": i}) for i in range(10)),
        context.apply("run", {"bad": object()}),  # not JSON
        status.transition("run", ["running"], "failed", {"no_such_field": 1}),
        *(context.apply("run", {f"k{i}": i}) for i in range(10, 20)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[10], TypeError) and isinstance(outcomes[11], AttributeError)
    assert [o for i, o in enumerate(outcomes) if i not in (10, 11)] == [None] * 20
    assert await context.get_all("run") == {f"k{i}": i for i in range(20)}
    record = await status.get("run")
    assert record is not None and record.status == "running"


# ---------------------------------------------------------------------------------------------- queue
async def test_queue_lease_lifecycle(sqlite_backend: Backend) -> None:
    queue = sqlite_backend.queue
    assert isinstance(queue, SqliteQueue)
    await queue.enqueue([_job(f"r{i}") for i in range(3)])
    assert await queue.size() == 3
    first = await queue.dequeue(2, 0)
    assert [d.job.run_id for d in first] == ["r0", "r1"] and all(d.deliveries == 1 for d in first)
    await queue.ack(first[0])
    await queue.release(first[1])
    again = await queue.dequeue(5, 0)
    assert sorted(d.job.run_id for d in again) == ["r1", "r2"]
    assert {d.job.run_id: d.deliveries for d in again} == {"r1": 2, "r2": 1}
    await queue.ack(first[1])  # a stale receipt (the message was leased again) changes nothing
    await queue.dead_letter(first[1], "stale")
    assert await queue.size() == 2 and await queue.dead_letters() == []
    for delivery in again:
        await queue.dead_letter(delivery, f"bad {delivery.job.run_id}")
    assert await queue.size() == 0
    letters = await queue.dead_letters()
    assert sorted((d.job.run_id if d.job else None, d.reason) for d in letters) == [("r1", "bad r1"),
                                                                                     ("r2", "bad r2")]
    assert {d.reason: d.raw["deliveries"] for d in letters} == {"bad r1": 2, "bad r2": 1}
    assert all(d.raw["dead_at"] > 0 for d in letters)
    assert len(await queue.dead_letters(limit=1)) == 1


async def test_queue_redelivers_after_expiry_and_extend_postpones_it(sqlite_backend: Backend) -> None:
    queue = sqlite_backend.queue  # visibility_timeout 0.5 s
    await queue.enqueue([_job("r")])
    (delivery,) = await queue.dequeue(1, 0)
    await asyncio.sleep(0.3)
    await queue.extend(delivery, 0.6)
    await asyncio.sleep(0.35)
    assert await queue.dequeue(1, 0) == []  # would have expired without the extension
    (again,) = await queue.dequeue(1, 3.0)
    assert again.deliveries == 2 and again.job == delivery.job and again.receipt != delivery.receipt
    await queue.extend(delivery, 30)  # the old lease is gone: no effect
    await queue.ack(again)
    assert await queue.size() == 0  # type: ignore[attr-defined]


async def test_queue_delay_and_release_delay(sqlite_backend: Backend) -> None:
    queue = sqlite_backend.queue
    await queue.enqueue([_job("late")], delay=0.8)
    assert await queue.dequeue(1, 0.1) == []
    (delivery,) = await queue.dequeue(1, 5.0)  # the wait sleeps until the message is due
    await queue.release(delivery, 0.6)
    assert await queue.dequeue(1, 0) == []
    (again,) = await queue.dequeue(1, 5.0)
    assert again.deliveries == 2
    await queue.ack(again)


async def test_blocking_dequeue_wakes_on_enqueue_in_this_process(sqlite_backend: Backend) -> None:
    waiting = asyncio.create_task(sqlite_backend.queue.dequeue(3, 30.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await sqlite_backend.queue.enqueue([_job("r")])
    (delivery,) = await asyncio.wait_for(waiting, 10)
    assert delivery.job.run_id == "r"


async def test_queue_connections_never_share_a_message(db_path: Path) -> None:
    async with databases(db_path, 3) as (producer_db, *consumer_dbs):
        producer = SqliteQueue(producer_db)
        await producer.enqueue([_job(f"r{i}") for i in range(200)])
        consumers = [SqliteQueue(db) for db in consumer_dbs]
        batches = await asyncio.gather(*(_drain(q) for q in consumers))
        delivered = [d for batch in batches for d in batch]
        assert sorted(d.job.run_id for d in delivered) == sorted(f"r{i}" for i in range(200))
        assert all(d.deliveries == 1 for d in delivered)
        for consumer, batch in zip(consumers, batches, strict=True):
            for delivery in batch:
                await consumer.ack(delivery)
        assert await producer.size() == 0


async def test_unreadable_message_goes_to_the_dead_letter(sqlite_backend: Backend) -> None:
    queue = sqlite_backend.queue
    assert isinstance(queue, SqliteQueue)
    await queue.db.write(lambda conn: conn.execute(
        "INSERT INTO fc_queue (job, available_at) VALUES (?, ?)", ("{not json", time.time())))
    await queue.enqueue([_job("good")])
    (delivery,) = await queue.dequeue(5, 0)
    assert delivery.job.run_id == "good"
    (letter,) = await queue.dead_letters()
    assert letter.job is None and letter.raw["job"] == "{not json" and "unreadable" in letter.reason


# ---------------------------------------------------------------------------------------------- context
async def test_context_none_is_not_missing_and_many_keys(sqlite_backend: Backend) -> None:
    context = sqlite_backend.context
    keys = {f"k{i}": i for i in range(1200)}  # more than one statement's worth of parameters
    await context.apply("run", {**keys, "none": None, "gone": 1}, ["gone"])
    got = await context.get_many("run", [*keys, "none", "gone", "missing", "k1"])
    assert got == {**keys, "none": None}
    assert (await context.get_all("run"))["none"] is None
    assert await context.get_all("other") == {}


async def test_context_writers_on_separate_connections_lose_nothing(db_path: Path) -> None:
    async with databases(db_path, 4) as dbs:
        stores = [SqliteContextStore(db) for db in dbs]

        async def writer(index: int, store: SqliteContextStore) -> None:
            for step in range(25):
                await store.apply("run", {f"w{index}.{step}": step, "last": index})

        await asyncio.gather(*(writer(i, s) for i, s in enumerate(stores)))
        values = await stores[0].get_all("run")
        assert len(values) == 4 * 25 + 1 and values["w3.24"] == 24 and values["last"] in range(4)


# ---------------------------------------------------------------------------------------------- status
async def test_status_cas_has_one_winner_across_connections(db_path: Path) -> None:
    async with databases(db_path, 8) as dbs:
        stores = [SqliteStatusStore(db) for db in dbs]
        assert await stores[0].create(RunRecord("run", "bp"))
        assert not await stores[1].create(RunRecord("run", "other"))
        for _ in range(5):  # several rounds: running -> done -> running ...
            results = await asyncio.gather(*(
                store.transition("run", ["running"], "completed", {"errors": [{"by": i}]})
                for i, store in enumerate(stores)
            ))
            winners = [r for r in results if r is not None]
            assert len(winners) == 1
            final = await stores[0].get("run")
            assert final is not None and final.status == "completed" and final.errors == winners[0].errors
            assert await stores[0].transition("run", ["completed"], "running", {}) is not None


async def test_status_list_is_newest_first_with_cursor(sqlite_backend: Backend) -> None:
    status = sqlite_backend.status
    for i in range(7):
        await status.create(RunRecord(f"r{i}", "a" if i % 2 else "b", created_at=1000.0 + i // 2))
    await status.transition("r6", ["running"], "failed", {})
    order: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await status.list(limit=3, cursor=cursor)
        order += [r.run_id for r in page]
        if cursor is None:
            break
    assert order == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]  # created_at desc, then run id desc
    page, cursor = await status.list(blueprint_id="a", limit=2)
    assert [r.run_id for r in page] == ["r5", "r3"] and cursor is not None
    page, cursor = await status.list(blueprint_id="a", limit=2, cursor=cursor)
    assert [r.run_id for r in page] == ["r1"] and cursor is None
    assert [r.run_id for r in (await status.list(status="failed"))[0]] == ["r6"]
    with pytest.raises(ValueError, match="cursor"):
        await status.list(cursor="not a cursor")


async def test_status_stalled(sqlite_backend: Backend) -> None:
    status = sqlite_backend.status
    for run_id in ("active", "awaiting", "done"):
        await status.create(RunRecord(run_id, "bp"))
    await status.transition("awaiting", ["running"], "awaiting", {"awaiting": [{"node_id": "w"}]})
    await status.transition("done", ["running"], "completed", {})
    found = await status.stalled(time.time() + 1)
    assert sorted(r.run_id for r in found) == ["active", "awaiting"]
    assert await status.stalled(time.time() - 60) == []


async def test_wait_for_change_sees_another_connection(db_path: Path) -> None:
    async with databases(db_path, 2) as (mine, theirs):
        watcher, writer = SqliteStatusStore(mine), SqliteStatusStore(theirs)
        await writer.create(RunRecord("run", "bp"))
        assert await watcher.get("run") is not None
        await writer.transition("run", ["running"], "completed", {})  # between our get and our wait
        await asyncio.wait_for(watcher.wait_for_change("run", 30), 5)
        waiting = asyncio.create_task(watcher.wait_for_change("run", 30))
        await asyncio.sleep(0.15)
        assert not waiting.done()
        await writer.transition("run", ["completed"], "failed", {})
        await asyncio.wait_for(waiting, 5)


# ---------------------------------------------------------------------------------------------- coordination
def _arrive(run_id: str, target: Job, member: str, arrived: bool, members: tuple[str, ...],
            strategy: str = "all", recovery: bool = False) -> Transition:
    arrival = Arrival(target, member, arrived=arrived, contribution={"from": member} if arrived else None,
                      expected=members,
                      strategy=strategy)  # type: ignore[arg-type]
    return Transition(run_id, f"0:{member}", completion=None, arrivals=(arrival,), finish=True, recovery=recovery)


async def test_all_join_with_a_skipped_member_fires_once(sqlite_backend: Backend) -> None:
    coordination = sqlite_backend.coordination
    members = ("b", "c")
    await coordination.schedule("run", [_job("run", m) for m in members])
    target = _job("run", "d")
    fired: list[Job] = []
    for member, arrived in (("b", True), ("b", True), ("c", False), ("c", False), ("b", True)):
        committed = await coordination.commit(_arrive("run", target, member, arrived, members))
        fired += committed.fired
        assert committed.skipped == ()
    assert [j.input for j in fired] == [{"b": {"from": "b"}}]
    (pending,) = await coordination.jobs("run")
    assert pending.job.key == target.key and not pending.leased


async def test_all_skipped_join_is_skipped_once_and_replay_reports_it(sqlite_backend: Backend) -> None:
    coordination = sqlite_backend.coordination
    members = ("b", "c")
    target = _job("run", "d")
    outcomes = [(await coordination.commit(_arrive("run", target, m, False, members))).skipped
                for m in ("b", "c", "c")]
    assert outcomes == [(), (target.key,), ()]
    replay = await coordination.commit(_arrive("run", target, "c", False, members, recovery=True))
    assert replay.skipped == (target.key,) and replay.fired == ()
    assert await coordination.jobs("run") == []


async def test_any_join_fires_once(sqlite_backend: Backend) -> None:
    coordination = sqlite_backend.coordination
    members = ("a", "b", "c")
    target = _job("run", "j")
    fired = [len((await coordination.commit(_arrive("run", target, m, a, members, "any"))).fired)
             for m, a in (("a", False), ("b", True), ("b", True), ("c", True))]
    assert fired == [0, 1, 0, 0]
    (pending,) = await coordination.jobs("run")
    assert pending.job.input == {"b": {"from": "b"}}  # the members arrived when it fired


async def test_all_join_fires_once_across_connections(db_path: Path) -> None:
    members = tuple(f"p{i}" for i in range(6))
    target = _job("run", "join")
    async with databases(db_path, len(members)) as dbs:
        stores = [SqliteCoordinationStore(db) for db in dbs]
        await stores[0].schedule("run", [_job("run", m) for m in members])

        async def arrive(store: SqliteCoordinationStore, member: str) -> int:
            fired = 0
            for _ in range(3):  # each predecessor delivered three times
                fired += len((await store.commit(_arrive("run", target, member, True, members))).fired)
            return fired

        assert sum(await asyncio.gather(*(arrive(s, m) for s, m in zip(stores, members, strict=True)))) == 1
        (pending,) = await stores[0].jobs("run")
        assert pending.job.input == {m: {"from": m} for m in members}
        committed = await stores[0].commit(Transition("run", "0:none", completion=None, arrivals=()))
        assert (committed.pending, committed.parked) == (1, 0)  # the predecessors finished, the join pends


async def test_commit_writes_context_in_its_transaction(sqlite_backend: Backend) -> None:
    coordination, context = sqlite_backend.coordination, sqlite_backend.context
    job = _job("run", "a")
    await coordination.schedule("run", [job])
    await context.apply("run", {"old": 1, "keep": 2})
    mine = Completion("a", output=1, token="t1", context_updates={"x": {"y": 1}, "none": None},
                      context_deletes=("old",))
    theirs = Completion("a", output=2, token="t2", context_updates={"x": "theirs"})
    first = await coordination.commit(Transition("run", job.key, completion=mine, finish=True))
    assert first.conflict is None and (first.pending, first.parked) == (0, 0)
    assert await context.get_all("run") == {"keep": 2, "x": {"y": 1}, "none": None}
    second = await coordination.commit(Transition("run", job.key, completion=theirs, finish=True))
    assert second.conflict == mine
    assert (await context.get_many("run", ["x"])) == {"x": {"y": 1}}  # the loser's writes are not applied


async def test_coordination_bookkeeping(sqlite_backend: Backend) -> None:
    coordination = sqlite_backend.coordination
    a, w = _job("run", "a"), _job("run", "wait")
    assert await coordination.activity("run") is None
    assert [j.node_id for j in await coordination.schedule("run", [a, w, a])] == ["a", "wait"]
    assert (await coordination.begin(a, "w1", 30)).lease
    assert not (await coordination.begin(a, "w2", 30)).lease
    assert (await coordination.begin(a, "w1", 30)).lease  # the holder may take it again
    assert [(p.job.node_id, p.leased) for p in await coordination.jobs("run")] == [("a", True), ("wait", False)]
    parked = await coordination.park("run", w.key)
    assert (parked.pending, parked.parked) == (1, 1)
    assert (await coordination.park("run", w.key)).parked == 1  # parking twice counts once
    done = await coordination.commit(Transition("run", a.key, completion=Completion("a", output=None, token="t"),
                                                finish=True))
    assert (done.pending, done.parked) == (0, 1)
    assert (await coordination.begin(a, "w2", 30)).state == "done"  # w1 still leases it, w2 may not
    await coordination.release("run", a.key, "w1")
    begin = await coordination.begin(a, "w2", 30)
    assert begin.lease and begin.state == "done" and begin.completion == Completion("a", output=None, token="t")
    resumed = w.evolve(payload={"resume": {"action": "go"}})
    assert await coordination.unpark("run", w.key, resumed)
    (pending,) = await coordination.jobs("run")
    assert pending.job == resumed
    assert (await coordination.park("run", "0:missing")).pending == 1
    activity = await coordination.activity("run")
    assert activity is not None and activity > time.time() - 60
    await coordination.delete_run("run")
    assert await coordination.activity("run") is None and await coordination.jobs("run", "parked") == []


# ---------------------------------------------------------------------------------------------- end to end
async def _value(ctx: NodeContext) -> Any:
    return ctx.input


async def _plus(ctx: NodeContext) -> int:
    await ctx.context.set(f"seen.{ctx.node_id}", None)
    return int(ctx.input) + int(ctx.params.get("add", 1))


async def _join(ctx: NodeContext) -> Any:
    return ctx.input


async def _route(ctx: NodeContext) -> NodeResult:
    return NodeResult(ctx.input, "big" if ctx.input > 10 else "small")


async def _number(ctx: NodeContext) -> int:
    return int(ctx.input)


def e2e_app() -> App:
    diamond = Flow("diamond", version="1")
    diamond.node("a", _value).node("b", _plus, params={"add": 1}).node("c", _plus, params={"add": 2})
    diamond.node("d", _join).edge("a", "b").edge("a", "c").edge("b", "d").edge("c", "d")
    branch = Flow("branch", version="1")
    branch.node("r", _route).node("big", _plus).node("small", _plus, params={"add": -1}).node("done", _join)
    branch.edge("r", "big", action="big").edge("r", "small", action="small")
    branch.edge("big", "done").edge("small", "done")
    conditions = Flow("conditions", version="1")
    conditions.node("n", _number).node("big", _plus).node("small", _plus, params={"add": -1})
    conditions.node("even", _value).node("done", _join)
    conditions.edge("n", "big", condition="result.output > 10").edge("n", "small", condition="result.output <= 10")
    conditions.edge("n", "even", condition="result.output % 2 == 0")
    conditions.edge("big", "done").edge("small", "done").edge("even", "done")
    return App([diamond, branch, conditions])


@asynccontextmanager
async def worker(app: App, backend: Backend) -> AsyncIterator[Client]:
    engine = Engine(app, backend, options=EngineOptions(lease_seconds=5))
    running = Worker(engine, concurrency=8, poll_wait=0.2, grace=2)
    task = asyncio.create_task(running.run())
    try:
        yield Client(backend, app)
    finally:
        running.stop()
        await task


async def test_end_to_end_diamond_and_conditional_branches(db_path: Path) -> None:
    backend = registry().build("sqlite", {"path": str(db_path)})
    try:
        async with worker(e2e_app(), backend) as client:
            diamond = await client.run("diamond", 5, timeout=30)
            big, small, even, odd = await asyncio.gather(
                client.run("branch", 12, timeout=30), client.run("branch", 3, timeout=30),
                client.run("conditions", 12, timeout=30), client.run("conditions", 3, timeout=30))
    finally:
        await backend.close()
    assert diamond.status == "completed", diamond.errors
    assert diamond.output == {"b": 6, "c": 7} and diamond.context["seen.b"] is None
    assert big.status == "completed" and small.status == "completed", (big.errors, small.errors)
    assert big.outputs == {"r": 12, "big": 13, "done": {"big": 13}}  # untaken: skipped, the join still fires
    assert small.outputs == {"r": 3, "small": 2, "done": {"small": 2}}
    assert big.output == {"big": 13}
    assert even.status == "completed" and odd.status == "completed", (even.errors, odd.errors)
    assert even.outputs == {"n": 12, "big": 13, "even": 12, "done": {"big": 13, "even": 12}}
    assert odd.outputs == {"n": 3, "small": 2, "done": {"small": 2}}


#: fc_context and fc_completions as databases created before they became rowid tables have them
FIRST_LAYOUT = """
CREATE TABLE fc_context (run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (run_id, key))
    WITHOUT ROWID;
CREATE TABLE fc_completions (run_id TEXT NOT NULL, key TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (run_id, key)) WITHOUT ROWID;
"""


async def test_a_database_with_the_first_layout_is_used_as_it_is(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.executescript(FIRST_LAYOUT)
    backend = registry().build("sqlite", {"path": str(db_path)})
    try:
        async with worker(e2e_app(), backend) as client:
            diamond = await client.run("diamond", 5, timeout=30)
        coordination, context = backend.coordination, backend.context
        job = _job("run", "a")
        await coordination.schedule("run", [job])
        mine = Completion("a", output=1, token="t1", context_updates={"x": 1})
        assert (await coordination.commit(Transition("run", job.key, completion=mine, finish=True))).conflict is None
        theirs = Completion("a", output=2, token="t2", context_updates={"x": 2})
        assert (await coordination.commit(Transition("run", job.key, completion=theirs, finish=True))).conflict == mine
        assert await context.get_all("run") == {"x": 1}
    finally:
        await backend.close()
    assert diamond.status == "completed" and diamond.output == {"b": 6, "c": 7}, diamond.errors
    with sqlite3.connect(db_path) as conn:
        layouts = dict(conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE name IN ('fc_context', 'fc_completions')").fetchall())
    assert all("WITHOUT ROWID" in sql for sql in layouts.values()) and len(layouts) == 2


async def test_run_ids_survive_a_worker_restart(db_path: Path) -> None:
    """Runs started while no worker runs are finished by a worker of another backend instance."""
    app = e2e_app()
    client_backend = registry().build("sqlite", {"path": str(db_path)})
    worker_backend = registry().build("sqlite", {"path": str(db_path)})
    try:
        client = Client(client_backend, app)
        run_ids = [await client.start("diamond", i) for i in range(10)]
        async with worker(app, worker_backend):
            results = [await client.wait(run_id, 30) for run_id in run_ids]
    finally:
        await client_backend.close()
        await worker_backend.close()
    assert [r.output for r in results] == [{"b": i + 1, "c": i + 2} for i in range(10)]


async def test_two_worker_processes_share_one_database(tmp_path: Path) -> None:
    """Two worker processes on one file finish 50 diamond runs: every node executes exactly once."""
    options = {"path": str(tmp_path / "shared.db")}
    log = tmp_path / "executions.log"
    backend = registry().build("sqlite", options)
    await backend.setup()
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flowcraft.testing.worker", "--backend", "sqlite", "--options",
            json.dumps(options), "--concurrency", "4", "--lease", "5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = b""
            while b"worker ready" not in line:  # skip warnings printed before
                line = await asyncio.wait_for(process.stdout.readline(), 60)
                assert line, "the worker process exited"
        client = Client(backend, contract_app)
        run_ids = [await client.start("contract-diamond", {"log": str(log), "value": i}) for i in range(50)]
        results = [await client.wait(run_id, 60) for run_id in run_ids]
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
    try:
        for result in results:
            assert result.status == "completed", result.errors
            assert result.outputs["j"]["received"] == {p: result.outputs[p] for p in ("p1", "p2", "p3")}
            assert result.output == result.outputs["j"]
        executions = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        per_node = Counter((e["run"], e["node"]) for e in executions)
        assert len(per_node) == 50 * 6 and set(per_node.values()) == {1}
        assert len({e["pid"] for e in executions}) == 2  # both processes did work
        assert await backend.queue.size() == 0  # type: ignore[attr-defined]
        assert await backend.queue.dead_letters() == []
        db: SqliteDatabase = backend.queue.db  # type: ignore[attr-defined]
        completions = await db.call(lambda conn: conn.execute("SELECT COUNT(*) FROM fc_completions").fetchone()[0])
        assert completions == 50 * 6
    finally:
        await backend.close()


def test_database_file_is_plain_sqlite(tmp_path: Path) -> None:
    """Operators can inspect the file with any SQLite tool while workers run (WAL allows readers)."""
    path = tmp_path / "f.db"

    async def populate() -> None:
        backend = registry().build("sqlite", {"path": str(path)})
        await backend.status.create(RunRecord("r", "bp"))
        await backend.close()

    asyncio.run(populate())
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"fc_queue", "fc_dead_letters", "fc_context", "fc_status", "fc_jobs", "fc_completions",
                "fc_arrivals", "fc_leases", "fc_runs"} <= tables
        assert conn.execute("SELECT status FROM fc_status WHERE run_id = 'r'").fetchone() == ("running",)
        # rowid tables: their rows are appended, only their (run_id, key) index entries land at random
        layouts = dict(conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE name IN ('fc_context', 'fc_completions')").fetchall())
        assert len(layouts) == 2 and not any("WITHOUT ROWID" in sql for sql in layouts.values())
    assert os.path.getsize(path) > 0


async def test_delete_dead_letters_takes_more_ids_than_one_statement_may_bind(sqlite_backend: Backend) -> None:
    """An operator deletes thousands of dead letters at once: the ids are bound in statements of a few hundred, so a
    SQLite built with the old limit of 999 bound parameters takes them too (the connection is set to that limit)."""
    queue = sqlite_backend.queue
    assert isinstance(queue, SqliteQueue)
    await queue.db.call(lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
    await queue.enqueue([_job(f"r{i}") for i in range(1200)])
    for delivery in await queue.dequeue(1200, 0):
        await queue.dead_letter(delivery, "bad")
    letters = await queue.dead_letters(limit=2000)
    assert len(letters) == 1200
    assert await queue.delete_dead_letters([letter.id for letter in letters]) == 1200
    assert await queue.dead_letters() == []
