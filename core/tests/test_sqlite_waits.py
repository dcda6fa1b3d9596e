"""The sqlite backend's database thread: what its calls wait for. Reads queued together take no write lock, and a
receive waiting for work is woken by another connection's commit (two ``SqliteDatabase`` objects on one file each
own a connection and a thread, as two worker processes do)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import flowcraft.backends.sqlite as sqlite_backend
from flowcraft.backends.sqlite import SqliteDatabase, SqliteQueue, SqliteStatusStore
from flowcraft.spi import Job, RunRecord


async def test_reads_queued_together_take_no_write_lock(tmp_path: Path) -> None:
    """Reads the thread runs in one batch neither take nor wait for the write lock: another writer holding the
    writer turn (and SQLite's write lock) does not hold them up, where a group transaction would wait for it."""
    fcntl = pytest.importorskip("fcntl")
    path = tmp_path / "flowcraft.db"
    db = SqliteDatabase(path)
    status = SqliteStatusStore(db)
    try:
        await status.create(RunRecord("r1", "bp"))
        started, release = threading.Event(), threading.Event()

        def hold_the_thread(conn: sqlite3.Connection) -> None:
            started.set()
            release.wait(10)

        blocker = asyncio.ensure_future(db.call(hold_the_thread))
        assert await asyncio.to_thread(started.wait, 10)
        reads = asyncio.gather(*(status.get("r1") for _ in range(3)))  # queued behind the blocker: one batch
        await asyncio.sleep(0.05)
        turn = os.open(f"{path}-writer", os.O_RDWR)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            fcntl.flock(turn, fcntl.LOCK_EX)  # another process's writer turn ...
            other.execute("BEGIN IMMEDIATE")  # ... and its write transaction
            release.set()
            await blocker
            records = await asyncio.wait_for(reads, 5)
            assert [record.run_id for record in records if record is not None] == ["r1"] * 3
            other.execute("ROLLBACK")
        finally:
            other.close()
            os.close(turn)
    finally:
        await db.close()


async def test_a_waiting_receive_wakes_on_another_connections_enqueue(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With polls far apart, a receive waiting in one connection still gets the job another connection enqueues
    at once: its database thread sees the other's commit (PRAGMA data_version) and wakes it."""
    monkeypatch.setattr(sqlite_backend, "POLL_MIN", 30.0)
    monkeypatch.setattr(sqlite_backend, "POLL_MAX", 30.0)
    path = tmp_path / "flowcraft.db"
    mine, theirs = SqliteDatabase(path), SqliteDatabase(path)
    try:
        await mine.setup()
        waiting, other = SqliteQueue(mine), SqliteQueue(theirs)
        receive = asyncio.ensure_future(waiting.dequeue(1, 20.0))
        await asyncio.sleep(0.3)  # it looked, found nothing and waits for its next poll, 20 s away
        assert not receive.done()
        await other.enqueue([Job("run", "bp", "n")])
        got = await asyncio.wait_for(receive, 5)
        assert [delivery.job.run_id for delivery in got] == ["run"]
        assert mine.changes.waiting == 0  # no receive waits any more: the thread stops looking
    finally:
        await mine.close()
        await theirs.close()


async def test_the_waits_of_a_loop_share_one_poll(tmp_path: Path) -> None:
    """Many runs waited on at once cost one read per poll, not one per run, and each wait still wakes when another
    connection changes its run."""
    path = tmp_path / "flowcraft.db"
    mine, theirs = SqliteDatabase(path), SqliteDatabase(path)
    try:
        watcher, writer = SqliteStatusStore(mine), SqliteStatusStore(theirs)
        run_ids = [f"run{i}" for i in range(20)]
        for run_id in run_ids:
            await writer.create(RunRecord(run_id, "bp"))
        reads = 0
        read = mine.read

        async def counted(fn: Any) -> Any:
            nonlocal reads
            reads += 1
            return await read(fn)

        mine.read = counted  # type: ignore[method-assign]
        waits = [asyncio.ensure_future(watcher.wait_for_change(run_id, 30)) for run_id in run_ids]
        await asyncio.sleep(0.1)  # each wait read its run's stamp once
        before = reads
        await asyncio.sleep(watcher.change_poll * 6)
        assert reads - before <= 8  # about one read per poll (20 runs polled one by one: about 120)
        assert not any(wait.done() for wait in waits)
        for run_id in run_ids:
            assert await writer.transition(run_id, ["running"], "completed", {}) is not None
        await asyncio.wait_for(asyncio.gather(*waits), 5)
        await asyncio.sleep(watcher.change_poll * 3)
        assert not watcher._polled and not watcher._pollers  # the poll ends at its first turn with no wait left
    finally:
        await mine.close()
        await theirs.close()
