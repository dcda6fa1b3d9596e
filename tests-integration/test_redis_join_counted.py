"""A wide join on Redis costs each member's commit a constant request and constant work (lua/commit.lua's counted
join: the member's own arrival field and the join's count ``n<target>``), against a real redis-server, with the
rules of ``flowcraft.spi.apply_transition``: ``all``/``any``, replays and redeliveries counted once, recovery, the
fired job's input in the order of ``expected``, and joins whose members an older version recorded without a count.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio

from flowcraft.backends.memory import MemoryCoordinationStore
from flowcraft.spi import Job, apply_transition
from flowcraft.testing.joins import member_commit, outcome, replayed_join
from flowcraft_redis import RedisCoordinationStore, make_client
from flowcraft_redis.coordination import COUNTED_JOIN
from flowcraft_redis.layout import dumps, job_field, join_count_field

pytestmark = pytest.mark.asyncio

RUN = "run:wide/ü"


class Sent:
    """The commit script calls of a store and the bytes of their arguments."""

    def __init__(self, store: RedisCoordinationStore) -> None:
        self.calls = 0
        self.bytes = 0
        batcher = store.batcher
        call_script = batcher.call_script

        async def counted(sha: str, keys: Sequence[str], *args: Any) -> Any:
            self.calls += 1
            self.bytes += sum(len(a if isinstance(a, bytes) else str(a).encode()) for a in (*keys, *args))
            return await call_script(sha, keys, *args)

        batcher.call_script = counted  # type: ignore[method-assign]


@pytest_asyncio.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisCoordinationStore]:
    client = make_client(redis_url)
    try:
        yield RedisCoordinationStore(client, key_prefix=f"{redis_prefix}{uuid.uuid4().hex[:8]}:",
                                     state_ttl_seconds=600)
    finally:
        await client.aclose()


def _members(n: int) -> tuple[str, ...]:
    return tuple(f"m:{i} ü" for i in range(n))


async def _count(store: RedisCoordinationStore, join: Job) -> bytes | None:
    value: bytes | None = await store.redis.hget(store.keys.run(RUN), join_count_field(join.key))
    return value


async def test_a_wide_join_sends_and_reads_a_constant_per_member(store: RedisCoordinationStore) -> None:
    """3000 members in random order: each commit's request is a few hundred bytes (the join's 3000 members would be
    ~30 kB each), one call per member plus two (the first member, which writes the count, and the last, which fires
    the join with its input map in the order of ``expected``)."""
    n = 3000
    members = _members(n)
    join = Job(RUN, "bp", "join", version="1")
    await store.schedule(RUN, [Job(RUN, "bp", member) for member in members])
    sent = Sent(store)
    order = list(members)
    random.Random(7).shuffle(order)
    fired: list[Job] = []
    for done, member in enumerate(order, 1):
        committed = await store.commit(member_commit(RUN, member, join, members))
        assert committed.conflict is None
        fired += committed.fired
        assert sent.bytes <= 400 * done + 40 * n, f"after {done} commits: {sent.bytes} bytes sent"
    assert sent.calls == n + 2
    (joined,) = fired
    assert joined.key == join.key
    assert list(joined.input) == list(members)  # the order of expected, not of the arrivals
    assert joined.input == {member: {"from": member} for member in members}
    assert await _count(store, join) == f"{n} {n}".encode()


@pytest.mark.parametrize("strategy", ["all", "any"])
@pytest.mark.parametrize("seed", range(4))
async def test_a_wide_join_with_replays_follows_apply_transition(store: RedisCoordinationStore, strategy: str,
                                                                 seed: int) -> None:
    """Members that arrive or skip, their commits replayed (same token), redelivered in recovery and conflicting
    (another token), in random order: every answer is apply_transition's on the memory tables, a member is counted
    once, and a fired join's input map follows the order of ``expected``."""
    members = _members(COUNTED_JOIN + 8)
    join = Job(RUN, "bp", "join", version="1")
    fired, arrived = await replayed_join(store, RUN, join, members, strategy, seed)  # type: ignore[arg-type]
    for job in fired:
        assert list(job.input) == [m for m in members if m in job.input]
    assert await _count(store, join) == f"{len(members)} {sum(arrived.values())}".encode()
    state = await store.redis.hget(store.keys.run(RUN), job_field(join.key))
    assert state is not None and state[:1] == (b"p" if any(arrived.values()) else b"s")


async def test_a_wide_join_of_skipped_members_is_skipped_once(store: RedisCoordinationStore) -> None:
    n = COUNTED_JOIN + 1
    members = _members(n)
    join = Job(RUN, "bp", "join", version="1")
    for strategy in ("all", "any"):
        target = join.evolve(node_id=f"join-{strategy}")
        skipped: list[str] = []
        for member in members:
            committed = await store.commit(member_commit(RUN, member, target, members, arrived=False,
                                                         strategy=strategy))  # type: ignore[arg-type]
            assert committed.fired == ()
            skipped += committed.skipped
            again = await store.commit(member_commit(RUN, member, target, members, arrived=False, recovery=True,
                                                     strategy=strategy))  # type: ignore[arg-type]
            assert again.fired == () and again.skipped == committed.skipped  # recovery repeats what it decided
        assert skipped == [target.key]
        assert await _count(store, target) == f"{n} 0".encode()


async def test_a_wide_any_join_fires_on_its_first_arrived_member(store: RedisCoordinationStore) -> None:
    n = COUNTED_JOIN * 3
    members = _members(n)
    join = Job(RUN, "bp", "join", version="1")
    for member in members[:5]:
        committed = await store.commit(member_commit(RUN, member, join, members, arrived=False, strategy="any"))
        assert committed.fired == ()
    (fired,) = (await store.commit(member_commit(RUN, members[5], join, members, strategy="any"))).fired
    assert fired.input == {members[5]: {"from": members[5]}}
    for member in members[6:]:
        committed = await store.commit(member_commit(RUN, member, join, members, strategy="any"))
        assert committed.fired == () and committed.skipped == ()
    assert await _count(store, join) == f"{n} {n - 5}".encode()


def _old_format(store: RedisCoordinationStore, join: Job, values: dict[str, str]) -> dict[str, str]:
    """Arrival fields as the commit recorded them before joins were counted (no count field)."""
    base = f"a{len(join.key)} {join.key}"
    return {base + member: value for member, value in values.items()}


@pytest.mark.parametrize("strategy", ["all", "any"])
async def test_members_recorded_before_joins_were_counted(store: RedisCoordinationStore, strategy: str) -> None:
    """A run in flight across an upgrade: half of a wide join's members were recorded by the previous version (their
    arrival fields, no count); the other half's commits count them (the first reads them all) and the join fires
    with every arrived member, in the order of ``expected``, as apply_transition does."""
    n = COUNTED_JOIN * 2
    members = _members(n)
    join = Job(RUN, "bp", "join", version="1")
    old = members[: n // 2]
    arrived = {member: i % 3 != 0 for i, member in enumerate(members)}
    if strategy == "any":
        arrived.update(dict.fromkeys(old, False))  # the previous version recorded only skipped members
    await store.redis.hset(store.keys.run(RUN), mapping=_old_format(store, join, {
        member: "1" + dumps({"from": member}) if arrived[member] else "0null" for member in old}))
    memory = MemoryCoordinationStore()
    for member in old:
        apply_transition(memory, member_commit(RUN, member, join, members, arrived=arrived[member],
                                               strategy=strategy))  # type: ignore[arg-type]
    fired: list[Job] = []
    for member in reversed(members[n // 2:]):
        tx = member_commit(RUN, member, join, members, arrived=arrived[member],
                           strategy=strategy)  # type: ignore[arg-type]
        got, want = await store.commit(tx), apply_transition(memory, tx)
        assert outcome(got) == outcome(want), member
        fired += got.fired
    (joined,) = fired
    assert list(joined.input) == [m for m in members if m in joined.input]
    assert await _count(store, join) == f"{n} {sum(arrived.values())}".encode()


async def test_a_join_fired_before_joins_were_counted(store: RedisCoordinationStore) -> None:
    """An ``any`` join the previous version fired: its late members are recorded and counted, and fire nothing (a
    redelivery in recovery re-fires the stored job, as apply_transition)."""
    n = COUNTED_JOIN + 2
    members = _members(n)
    join = Job(RUN, "bp", "join", version="1")
    stored = join.evolve(input={members[0]: 1}, has_input=True)
    await store.redis.hset(store.keys.run(RUN), mapping={
        **_old_format(store, join, {members[0]: "11"}), job_field(join.key): "p" + dumps(stored.to_dict()),
        "#pending": "1"})
    committed = await store.commit(member_commit(RUN, members[1], join, members, strategy="any"))
    assert committed.fired == () and committed.pending == 1
    again = await store.commit(member_commit(RUN, members[1], join, members, strategy="any", recovery=True))
    assert [job.to_dict() for job in again.fired] == [stored.to_dict()]
    assert await _count(store, join) == b"2 2"
