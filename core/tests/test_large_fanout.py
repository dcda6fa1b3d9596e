"""The embedded backends take a commit, a start and a join of any size (a blueprint's 9000-way fan-out, a run
started with 9000 jobs, a join of 9000 members), as the Redis scripts do since they read and write in slices
(tests-integration/test_redis_large.py): no limit of the database's (SQLite's bound variables per statement)
shows through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from flowcraft.plugins import registry
from flowcraft.spi import Arrival, Backend, Completion, Job, RunRecord, Transition

#: more than SQLite's default bound variables (999 before 3.32) and than Lua's unpack takes (~8000)
WIDE = 9000


@pytest_asyncio.fixture(params=["memory", "sqlite"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    options = {"path": str(tmp_path / "flowcraft.db")} if request.param == "sqlite" else {}
    built = registry().build(request.param, options)
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


def _record(run_id: str) -> RunRecord:
    return RunRecord(run_id=run_id, blueprint_id="bp", version="1", status="running", input=0)


def _jobs(run_id: str) -> list[Job]:
    return [Job(run_id, "bp", f"n{i}", version="1", input=i, has_input=True) for i in range(WIDE)]


async def _start(backend: Backend, run_id: str, jobs: list[Job]) -> None:
    """The run's start in one step where the store declares it, else in the three steps."""
    if backend.capabilities.starts:
        assert await backend.coordination.start(_record(run_id), jobs)
    else:
        assert await backend.status.create(_record(run_id))
        await backend.queue.enqueue(await backend.coordination.schedule(run_id, jobs))


async def _drain(backend: Backend, run_id: str) -> list[Job]:
    got: list[Job] = []
    while batch := await backend.queue.dequeue(1000, 0.05):
        got.extend(delivery.job for delivery in batch if delivery.job.run_id == run_id)
    return got


async def _commit(backend: Backend, transition: Transition, fired_by_store: bool = True) -> tuple[Job, ...]:
    committed = await backend.coordination.commit(transition)
    assert committed.conflict is None
    if not (backend.capabilities.dispatches and fired_by_store):
        await backend.queue.enqueue(list(committed.fired))
    return committed.fired


async def test_a_commit_fires_thousands_of_jobs(backend: Backend) -> None:
    run_id = "wide-commit"
    first = Job(run_id, "bp", "a", version="1", input=0, has_input=True)
    await _start(backend, run_id, [first])
    assert [d.job.key for d in await backend.queue.dequeue(1, 1.0)] == [first.key]
    targets = _jobs(run_id)
    arrivals = tuple(Arrival(job, "a", arrived=True, contribution=job.input, expected=("a",)) for job in targets)
    fired = await _commit(backend, Transition(run_id, first.key, completion=Completion("a", output=1, token="t"),
                                              arrivals=arrivals, finish=True))
    assert [job.key for job in fired] == [job.key for job in targets]
    assert sorted(p.job.key for p in await backend.coordination.jobs(run_id)) == sorted(j.key for j in targets)
    delivered = await _drain(backend, run_id)
    assert sorted((job.key, job.input) for job in delivered) == sorted((job.key, job.input) for job in targets)


async def test_a_run_starts_with_thousands_of_jobs(backend: Backend) -> None:
    run_id = "wide-start"
    await _start(backend, run_id, _jobs(run_id))
    assert sorted(p.job.key for p in await backend.coordination.jobs(run_id)) == sorted(j.key for j in _jobs(run_id))
    assert sorted(job.key for job in await _drain(backend, run_id)) == sorted(j.key for j in _jobs(run_id))


async def test_a_join_of_thousands_of_members(backend: Backend) -> None:
    """Its last member's arrival fires it with the full input map; the first 8999 members are recorded by one
    commit whose arrivals each name a second member not yet arrived, so none completes the join."""
    run_id = "wide-join"
    first = Job(run_id, "bp", "a", version="1", input=0, has_input=True)
    await _start(backend, run_id, [first])
    members = tuple(f"m{i}" for i in range(WIDE))
    join = Job(run_id, "bp", "join", version="1")
    recorded = tuple(Arrival(join, member, arrived=True, contribution={"v": i}, expected=members)
                     for i, member in enumerate(members[:-1]))
    assert await _commit(backend, Transition(run_id, first.key, arrivals=recorded)) == ()
    last = Arrival(join, members[-1], arrived=True, contribution={"v": WIDE - 1}, expected=members)
    (joined,) = await _commit(backend, Transition(run_id, first.key, completion=Completion("a", output=1, token="t"),
                                                  arrivals=(last,), finish=True))
    assert joined.key == join.key
    assert joined.input == {member: {"v": i} for i, member in enumerate(members)}
