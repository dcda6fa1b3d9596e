"""Sync nodes: the bounded pool that stuck nodes cannot exhaust, and the cooperative ``ctx.cancelled``."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from flowcraft import Flow, FlowRuntime, NodeContext
from flowcraft.nodes.threads import SyncNodePool


async def _timed_out(pool: SyncNodePool, release: threading.Event) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.run(release.wait), 0.1)


async def test_stuck_calls_are_written_off_and_replaced_up_to_the_cap() -> None:
    pool = SyncNodePool(size=2, max_written_off=2)
    release = threading.Event()
    try:
        await _timed_out(pool, release)
        await _timed_out(pool, release)
        assert (pool.threads, pool.written_off) == (2, 2)  # both threads stuck; replacements start on demand
        gate = threading.Event()
        both = asyncio.gather(pool.run(gate.wait), pool.run(gate.wait))
        await asyncio.sleep(0.1)
        gate.set()  # only returns if two replacement threads run side by side
        assert await asyncio.wait_for(both, 2) == [True, True]
        assert (pool.threads, pool.written_off) == (4, 2)

        await _timed_out(pool, release)
        await _timed_out(pool, release)  # four stuck: past the cap of two, no replacement
        waiting = asyncio.ensure_future(pool.run(lambda: "late"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert (pool.threads, pool.written_off) == (4, 4)
        release.set()  # the stuck calls return; their threads serve again
        assert await asyncio.wait_for(waiting, 2) == "late"
    finally:
        release.set()
    for _ in range(200):  # the stuck threads account for their return just after handing back the result
        if pool.written_off == 0 and pool.threads == 2:
            break
        await asyncio.sleep(0.01)
    assert pool.written_off == 0
    assert pool.threads == 2  # threads above size leave once nothing is written off


async def test_a_call_cancelled_before_it_started_never_runs() -> None:
    pool = SyncNodePool(size=1, max_written_off=0)
    release = threading.Event()
    ran: list[str] = []
    blocker = asyncio.ensure_future(pool.run(release.wait))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(pool.run(ran.append, "queued"))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    release.set()
    assert await blocker is True
    assert await pool.run(ran.append, "next") is None
    assert ran == ["next"]


def test_a_timed_out_sync_node_sees_ctx_cancelled_and_the_next_node_runs() -> None:
    stopped = threading.Event()

    def cooperative(ctx: NodeContext) -> str:
        while not ctx.cancelled:
            time.sleep(0.01)
        stopped.set()
        return "too late"

    flow = Flow("slow")
    flow.node("slow", cooperative, timeout=0.2)
    quick = Flow("quick")
    quick.node("a", lambda ctx: "ran")
    runtime = FlowRuntime(flows=[flow, quick])
    result = runtime.run_sync("slow")
    assert result.status == "failed"
    assert result.errors[0]["message"] == "node 'slow' timed out after 0.2s"
    assert stopped.wait(2)
    assert runtime.run_sync("quick").output == "ran"
