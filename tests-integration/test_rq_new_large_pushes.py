"""The rq queue's scripts push any number of jobs: Lua's ``unpack`` fails past ~8000 values (its C stack), so the
queue list gets them in pushes of at most 1000 (lua/enqueue.lua, and the commit's dispatch in lua/dispatch.lua)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from flowcraft.plugins import registry
from flowcraft.spi import Backend, Job
from flowcraft_rq import RqQueue

#: more than one unpack can take
JOBS = 9000


@pytest_asyncio.fixture(params=["rq", "lean"])
async def backend(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[Backend]:
    built = registry().build("rq", {"redis_url": redis_url, "key_prefix": redis_prefix,
                                    "queue_name": f"q-{uuid.uuid4().hex[:10]}", "queue_layout": request.param})
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


async def test_one_enqueue_of_more_jobs_than_lua_can_unpack(backend: Backend) -> None:
    queue = backend.queue
    assert isinstance(queue, RqQueue)
    jobs = [Job("big-run", "bp", f"n{i}", input=i, has_input=True) for i in range(JOBS)]
    await queue.enqueue(jobs)
    assert await queue.depth() == JOBS
    got = await queue.dequeue(JOBS, 1.0)
    assert sorted(delivery.job.node_id for delivery in got) == sorted(job.node_id for job in jobs)
