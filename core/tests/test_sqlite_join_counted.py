"""SQLite counts a join's members (``fc_join_counts``) instead of counting its arrivals on every member's commit: a
member's arrival costs the same whatever the join's width, with the rules of ``flowcraft.spi.apply_transition``
(replays counted once, ``all``/``any``), also for a join whose members a version before the counts recorded (a
database of schema 1, upgraded when a process opens it to write)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from flowcraft.backends.sqlite import SqliteCoordinationStore, SqliteDatabase, _connect_read_only
from flowcraft.spi import Job
from flowcraft.testing.joins import member_commit, replayed_join

pytestmark = pytest.mark.asyncio

RUN = "run/ü 1"


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteCoordinationStore]:
    built = SqliteCoordinationStore(SqliteDatabase(tmp_path / "flowcraft.db"))
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


def _members(n: int) -> tuple[str, ...]:
    return tuple(f"m{i}" for i in range(n))


async def test_a_members_arrival_costs_the_same_early_and_late_in_a_wide_join(store: SqliteCoordinationStore) -> None:
    """SQLite's own work (virtual machine instructions, by its progress handler) for members 100-599 of a 3000-member
    join and for members 2400-2899: the same, within noise (counting the recorded members on each arrival made the
    late ones ~10x the early ones)."""
    n = 3000
    members = _members(n)
    join = Job(RUN, "bp", "join")
    steps = [0]

    def counted() -> int:
        steps[0] += 1
        return 0

    await store.db.write(lambda conn: conn.set_progress_handler(counted, 100))
    work: dict[int, int] = {}
    fired: list[Job] = []
    for i, member in enumerate(members):
        if i in (100, 600, 2400, 2900):
            work[i] = steps[0]
        fired += (await store.commit(member_commit(RUN, member, join, members))).fired
    await store.db.write(lambda conn: conn.set_progress_handler(None, 0))
    early, late = work[600] - work[100], work[2900] - work[2400]
    assert late < 1.5 * early, (early, late)
    (joined,) = fired
    assert joined.input == {member: {"from": member} for member in members}


@pytest.mark.parametrize("strategy", ["all", "any"])
@pytest.mark.parametrize("seed", range(3))
async def test_a_join_with_replays_follows_the_memory_store(store: SqliteCoordinationStore, strategy: str,
                                                            seed: int) -> None:
    """Members that arrive or skip, their commits replayed, redelivered in recovery and conflicting, in random
    order: each answer is the memory store's (which counts in a dict)."""
    members = _members(12)
    join = Job(RUN, "bp", "join")
    _, arrived = await replayed_join(store, RUN, join, members, strategy, seed)  # type: ignore[arg-type]
    counts = await store.db.read(lambda conn: conn.execute(
        "SELECT recorded, arrived FROM fc_join_counts WHERE run_id = ? AND target = ?", (RUN, join.key)).fetchall())
    assert counts == [(len(members), sum(arrived.values()))]
    await store.delete_run(RUN)
    left = await store.db.read(lambda conn: conn.execute("SELECT COUNT(*) FROM fc_join_counts").fetchone())
    assert left == (0,)


async def test_a_join_recorded_before_counts_decides_after_the_upgrade(tmp_path: Path) -> None:
    """A database of schema 1 (no fc_join_counts) holding half of a join's members: a process of this version opens
    it (adding the table), counts them on the next member's arrival, and the join fires with every member; a
    read-only connection reads a schema-1 database."""
    path = tmp_path / "flowcraft.db"
    members = _members(10)
    join = Job(RUN, "bp", "join")
    before = SqliteCoordinationStore(SqliteDatabase(path))
    await before.setup()
    for member in members[:5]:
        await before.commit(member_commit(RUN, member, join, members))
    await before.close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE fc_join_counts; PRAGMA user_version = 1;")
    conn.close()
    _connect_read_only(str(path)).close()
    after = SqliteCoordinationStore(SqliteDatabase(path))
    await after.setup()
    try:
        fired: list[Job] = []
        for member in members[5:]:
            fired += (await after.commit(member_commit(RUN, member, join, members))).fired
        (joined,) = fired
        assert joined.input == {member: {"from": member} for member in members}
        counts = await after.db.read(lambda conn: conn.execute("SELECT recorded, arrived FROM fc_join_counts")
                                     .fetchall())
        assert counts == [(10, 10)]
    finally:
        await after.close()
