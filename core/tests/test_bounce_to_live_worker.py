"""A worker that does not load a job's blueprint bounces the job (releases it with ``bounce_delay``); after
``max_bounces`` deliveries it dead-letters it, unless a live worker loads that blueprint version: that worker takes
it, however often workers without it drew it first (``flowcraft run --inline`` beside workers of other apps), up to
``LIVE_LOADER_BOUNCES`` times ``max_bounces`` deliveries."""

from __future__ import annotations

import asyncio
from pathlib import Path

from flowcraft import App, Flow, NodeContext
from flowcraft.client import Client
from flowcraft.engine.core import LIVE_LOADER_BOUNCES, Engine, EngineOptions
from flowcraft.engine.worker import Worker
from flowcraft.plugins import registry
from flowcraft.presence import WorkerPresence
from flowcraft.spi import Backend


async def solo_node(ctx: NodeContext) -> str:
    return "solo ran"


def one_node_flow(flow_id: str) -> Flow:
    flow = Flow(flow_id, version="1")
    flow.node("one", solo_node)
    return flow


def solo() -> Flow:
    return one_node_flow("solo")


def other() -> Flow:
    return one_node_flow("other")


def backend_at(tmp_path: Path) -> Backend:
    return registry().build("sqlite", {"path": str(tmp_path / "runs.db")})


async def announced(backend: Backend, app: App, worker_id: str) -> WorkerPresence:
    presence = WorkerPresence(backend, app, worker_id=worker_id, concurrency=1, interval=5.0)
    await presence.start()
    return presence


async def draw_and_handle(client: Client, engine: Engine, times: int) -> None:
    """The job drawn ``times`` times by ``engine``'s worker (without its blueprint), not dead-lettered before."""
    for _ in range(times):
        assert await client.dead_letters() == []
        (delivery,) = await client.backend.queue.dequeue(1, 5.0)
        await engine.handle(delivery)


def without_solo(backend: Backend) -> Engine:
    return Engine(App(flows=[other()]), backend, options=EngineOptions(max_bounces=2, bounce_delay=0.0))


def test_bounced_past_max_bounces_while_a_live_worker_loads_it_then_run_by_that_worker(tmp_path: Path) -> None:
    async def main() -> None:
        backend = backend_at(tmp_path)
        await backend.setup()
        with_solo = App(flows=[solo()])
        async with Client(backend, with_solo) as client:
            await announced(backend, App(flows=[other()]), "w-without")
            loader = await announced(backend, with_solo, "w-with")  # live, not receiving yet
            run_id = await client.start("solo", None)
            engine = without_solo(backend)
            await draw_and_handle(client, engine, engine.options.max_bounces + 1)
            assert await client.dead_letters() == []  # released each time, never dead-lettered
            worker = Worker(Engine(with_solo, backend), poll_wait=0.1, presence=loader)
            task = asyncio.create_task(worker.run())
            try:
                result = await client.wait(run_id, timeout=10)
            finally:
                worker.stop()
                await task
            assert (result.status, result.output) == ("completed", "solo ran")
            await backend.close()

    asyncio.run(main())


def test_dead_lettered_after_max_bounces_when_no_live_worker_loads_it(tmp_path: Path) -> None:
    async def main() -> None:
        backend = backend_at(tmp_path)
        await backend.setup()
        async with Client(backend, App(flows=[solo()])) as client:
            await announced(backend, App(flows=[other()]), "w-without")
            gone = await announced(backend, App(flows=[solo()]), "w-with")
            run_id = await client.start("solo", None)
            await gone.retire()  # the only worker that loaded it stopped
            engine = without_solo(backend)
            await draw_and_handle(client, engine, engine.options.max_bounces)
            [letter] = await client.dead_letters()
            assert letter.job is not None and letter.job.run_id == run_id
            assert "'solo' version '1' is not loaded by this worker" in letter.reason
            await backend.close()

    asyncio.run(main())


def test_dead_lettered_when_a_live_loader_never_draws_it(tmp_path: Path) -> None:
    """A live worker loads it but never draws it (it consumes another queue, say): dead-lettered after
    LIVE_LOADER_BOUNCES times max_bounces deliveries, with a reason that says so."""
    async def main() -> None:
        backend = backend_at(tmp_path)
        await backend.setup()
        async with Client(backend, App(flows=[solo()])) as client:
            await announced(backend, App(flows=[solo()]), "w-elsewhere")  # live, never receives here
            run_id = await client.start("solo", None)
            engine = without_solo(backend)
            await draw_and_handle(client, engine, LIVE_LOADER_BOUNCES * engine.options.max_bounces)
            [letter] = await client.dead_letters()
            assert letter.job is not None and letter.job.run_id == run_id
            assert "live workers load it but none drew it in 8 deliveries" in letter.reason
            await backend.close()

    asyncio.run(main())
