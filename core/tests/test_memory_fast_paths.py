"""The memory preset's fast paths beyond the contract suite: the run record a prefetch or a hand-over gives the
engine is the record as it is now (one shared copy per record version), and a done job keeps no document."""

from __future__ import annotations

import asyncio
import contextlib
import time

from flowcraft.backends.memory import MemoryCoordinationStore, MemoryStatusStore, memory_backend
from flowcraft.spi import Arrival, Completion, Job, RunRecord, Transition


async def test_a_prefetched_record_follows_every_change_of_the_record() -> None:
    backend = memory_backend()
    status, queue = backend.status, backend.queue
    assert isinstance(status, MemoryStatusStore)
    await status.create(RunRecord("r1", "bp", input=1))
    job = Job("r1", "bp", "a")
    await backend.coordination.schedule("r1", [job])
    await queue.enqueue([job, job.evolve(node_id="b")])
    first, second = await queue.receive(2, 0.1, "w1", 30)
    assert first.record is not None and first.record is second.record  # one copy for the run's deliveries
    assert first.record is not await status.get("r1")  # get still copies
    await status.transition("r1", ["running"], "cancelled", {})
    await queue.release(first)
    (again,) = await queue.receive(1, 0.1, "w1", 30)
    assert again.record is not None and again.record.status == "cancelled"
    assert first.record.status == "running"  # a copy handed out earlier is never changed under its holder


async def test_a_handed_over_job_carries_the_record_as_it_is_and_a_done_job_keeps_no_document() -> None:
    backend = memory_backend()
    coordination = backend.coordination
    assert isinstance(coordination, MemoryCoordinationStore)
    await backend.status.create(RunRecord("r2", "bp"))
    job, successor = Job("r2", "bp", "a"), Job("r2", "bp", "b")
    await coordination.schedule("r2", [job])
    await backend.status.transition("r2", ["running"], "running", {"input": {"x": 2}})
    committed = await coordination.commit(Transition(
        "r2", job.key, completion=Completion("a", output=1, token="t"),
        arrivals=(Arrival(successor, "a", arrived=True, contribution=1, expected=("a",)),), finish=True,
        owner="w1", continue_up_to=1, lease_seconds=30))
    (handed,) = committed.continued
    assert handed.record is not None and handed.record.input == {"x": 2}
    assert handed.begin is not None and handed.begin.lease and handed.begin.state == "pending"
    assert coordination.job_state("r2", job.key) == "done" and coordination.job("r2", job.key) is None
    assert [p.job.key for p in await coordination.jobs("r2", "pending")] == [successor.key]


async def test_many_waits_on_runs_wake_at_their_changes_and_a_timed_out_wait_leaves_nothing_behind() -> None:
    """``wait_for_change`` of the memory store (a future and a timer per wait): every waiter of a run wakes at its
    next change, a waiter of another run does not, and a wait that timed out is forgotten."""
    status = MemoryStatusStore()
    for run_id in ("a", "b"):
        await status.create(RunRecord(run_id, "bp"))
    waits = [asyncio.create_task(status.wait_for_change("a", 10.0)) for _ in range(3)]
    other = asyncio.create_task(status.wait_for_change("b", 10.0))
    await asyncio.sleep(0)
    await status.transition("a", ["running"], "completed", {})
    await asyncio.wait_for(asyncio.gather(*waits), 1.0)
    assert not other.done()
    other.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await other
    started = time.monotonic()
    await status.wait_for_change("b", 0.01)
    assert time.monotonic() - started < 1.0
    assert status._changed == {}  # nobody waits any more: no waiter kept for either run


def test_a_wait_left_behind_by_a_closed_event_loop_does_not_break_a_later_transition() -> None:
    status = MemoryStatusStore()
    first = asyncio.new_event_loop()
    first.run_until_complete(status.create(RunRecord("c", "bp")))
    first.run_until_complete(asyncio.wait([first.create_task(status.wait_for_change("c", 30.0))], timeout=0.01))
    first.close()  # the wait never ended: its future stays registered
    assert asyncio.run(status.transition("c", ["running"], "completed", {})) is not None
