"""A prefetching receive (memory and sqlite presets) takes no lease on a job whose run has settled: the engine only
acks such a job, and a lease it held would refuse a retry of the failed run ("a worker still handles node ...")
until it expired. test_retry's second retry right after a failure hit that window, 3 times in 36 under load."""

import time

import pytest

from flowcraft.backends.memory import memory_backend
from flowcraft.spi import Backend, Delivery, Job, RunRecord


async def _settled_job_received(backend: Backend, run_id: str) -> tuple[Delivery, Job]:
    await backend.status.create(RunRecord(run_id, "bp"))
    job = Job(run_id, "bp", "n")
    await backend.coordination.schedule(run_id, [job])
    await backend.queue.enqueue([job])
    assert await backend.status.transition(run_id, ("running",), "failed", {}) is not None
    deadline = time.monotonic() + 10
    got: list[Delivery] = []
    while not got and time.monotonic() < deadline:
        got = await backend.queue.receive(1, 1.0, "w1", 30)
    assert len(got) == 1
    return got[0], job


@pytest.mark.parametrize("preset", ["memory", "sqlite"])
async def test_a_settled_runs_job_is_received_with_its_record_and_no_lease(preset: str, sqlite: Backend) -> None:
    backend = memory_backend() if preset == "memory" else sqlite
    assert backend.capabilities.prefetches_status
    delivery, job = await _settled_job_received(backend, "settled-run")
    assert delivery.record is not None and delivery.record.status == "failed"
    assert delivery.begin is None
    assert [held.leased for held in await backend.coordination.jobs("settled-run", "pending")] == [False]
    assert (await backend.coordination.begin(job, "w2", 30)).lease
    await backend.queue.ack(delivery)
