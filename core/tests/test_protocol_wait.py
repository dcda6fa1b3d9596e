"""Workers of different coordination protocols never take jobs from one store at the same time
(``CoordinationStore.protocol``, ``flowcraft.presence.protocol_blockers``): of two versioned workers the one started
later waits, a live worker from before protocol versions makes every versioned worker wait, and a waiting worker
receives nothing until the blockers retired or expired, or it stops."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flowcraft import Flow, NodeContext
from flowcraft.app import App
from flowcraft.backends.memory import MemoryCoordinationStore, memory_backend
from flowcraft.cli import cli
from flowcraft.client import Client
from flowcraft.engine.core import Engine
from flowcraft.engine.worker import Worker
from flowcraft.plugins import registry
from flowcraft.presence import WORKERS_RUN, Presence, WorkerPresence
from flowcraft.spi import Backend, WorkerInfo


class Clock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class DeclaringCoordination(MemoryCoordinationStore):
    """A memory coordination store that declares ``protocol``: a worker of another version of the store."""

    def __init__(self, protocol: str) -> None:
        super().__init__()
        self._protocol = protocol

    @property
    def protocol(self) -> str:
        return self._protocol


def declaring(base: Backend, protocol: str) -> Backend:
    """``base``'s queue, context and status with a coordination store declaring ``protocol``: another worker's
    backend on the same presence lists."""
    return Backend(base.queue, base.context, base.status, DeclaringCoordination(protocol), name=base.name)


async def plus_one(ctx: NodeContext) -> int:
    return int(ctx.input or 0) + 1


APP = App(flows=[Flow("one").node("a", plus_one)])


def presence_of(backend: Backend, worker_id: str, clock: Clock, interval: float = 1.0) -> WorkerPresence:
    return WorkerPresence(backend, APP, worker_id=worker_id, concurrency=2, interval=interval, clock=clock)


async def write_old_entry(backend: Backend, worker_id: str, heartbeat_at: float, interval: float = 1.0) -> None:
    """The entry a worker from before protocol versions writes: no ``protocol`` key at all."""
    entry = WorkerInfo(worker_id=worker_id, host="old-host", pid=4242, started_at=heartbeat_at,
                       heartbeat_at=heartbeat_at, interval=interval).to_dict()
    del entry["protocol"]
    await backend.context.apply(WORKERS_RUN, {worker_id: entry})


async def stored_state(backend: Backend, worker_id: str) -> str:
    return str((await backend.context.get_many(WORKERS_RUN, [worker_id]))[worker_id]["state"])


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------- the decision
async def test_workers_of_one_protocol_never_wait() -> None:
    clock, base = Clock(), memory_backend()
    first, second = presence_of(declaring(base, "2"), "w-1", clock), presence_of(declaring(base, "2"), "w-2", clock)
    await first.start()
    clock.now += 1
    await second.start()
    assert not await first.check() and not await second.check()
    assert (first.blockers, second.blockers) == ((), ())
    assert [info.protocol for info in await first.presence.workers()] == ["2", "2"]
    assert await stored_state(base, "w-2") == "starting"


async def test_of_two_protocols_the_later_started_waits_and_the_earlier_goes_on() -> None:
    clock, base = Clock(), memory_backend()
    earlier, later = presence_of(declaring(base, "1"), "w-early", clock), presence_of(declaring(base, "2"), "w-late",
                                                                                     clock)
    await earlier.start()
    clock.now += 1
    await later.start()
    assert later.must_wait and [info.worker_id for info in later.blockers] == ["w-early"]
    assert later.blockers[0].protocol == "1" and later.info.protocol == "2"
    assert await stored_state(base, "w-late") == "waiting"  # written at once, not at the next heartbeat
    assert not await earlier.check() and not earlier.must_wait  # the earlier one sees the later and goes on
    # the order decides, not the protocol: a later worker of protocol "1" waits for an earlier one of "2"
    clock.now += 1
    latest = presence_of(declaring(base, "1"), "w-latest", clock)
    await latest.start()
    assert [info.worker_id for info in latest.blockers] == ["w-late"]


async def test_of_two_protocols_started_at_the_same_time_the_greater_worker_id_waits() -> None:
    clock, base = Clock(), memory_backend()
    second, first = presence_of(declaring(base, "2"), "w-b", clock), presence_of(declaring(base, "1"), "w-a", clock)
    await second.start()  # writes first, but the order is (started_at, worker_id), the same on every worker
    await first.start()
    assert not await first.check() and await second.check()
    assert [info.worker_id for info in second.blockers] == ["w-a"]


async def test_a_live_worker_without_a_protocol_makes_every_versioned_worker_wait() -> None:
    clock, base = Clock(), memory_backend()
    versioned = presence_of(declaring(base, "2"), "w-new", clock)
    await versioned.start()  # started first: it would go on against any versioned worker
    assert not versioned.must_wait
    clock.now += 5
    await write_old_entry(base, "w-old", clock.now)
    [old] = [info for info in await versioned.presence.workers() if info.worker_id == "w-old"]
    assert old.protocol is None  # an entry without the key reads as unknown
    assert await versioned.check() and [info.worker_id for info in versioned.blockers] == ["w-old"]
    assert WorkerInfo.from_dict(versioned.info.to_dict()) == versioned.info  # the protocol round-trips


async def test_a_waiting_worker_goes_on_once_the_blocker_retires_or_expires() -> None:
    clock, base = Clock(), memory_backend()
    blocker = presence_of(declaring(base, "1"), "w-blocker", clock)
    waiting = presence_of(declaring(base, "2"), "w-waiting", clock)
    await blocker.start()
    clock.now += 1
    await waiting.start()
    assert waiting.must_wait
    await blocker.retire()
    assert not await waiting.check() and waiting.blockers == ()

    await write_old_entry(base, "w-silent", clock.now, interval=1.0)  # it heartbeats no more after this
    assert await waiting.check()
    clock.now += WorkerInfo.EXPIRY_INTERVALS * 1.0 - 0.01  # not expired yet
    assert await waiting.check()
    clock.now += 0.02  # expired: a dead worker blocks nothing
    assert not await waiting.check()


async def test_the_waiting_warning_names_the_blockers_and_what_to_do(caplog: pytest.LogCaptureFixture) -> None:
    clock, base = Clock(), memory_backend()
    await write_old_entry(base, "w-old", clock.now)
    earlier = presence_of(declaring(base, "1"), "w-one", clock)
    await earlier.start()
    earlier.info = earlier.info.evolve(host="host-a", pid=11)
    await earlier.presence.heartbeat(earlier.info)
    clock.now += 1
    later = presence_of(declaring(base, "2"), "w-two", clock)
    caplog.clear()  # (w-one waits for w-old too)
    with caplog.at_level(logging.WARNING, logger="flowcraft.presence"):
        await later.start()
        await later.check()  # one line per check: the heartbeat checks once an interval
    lines = [record.getMessage() for record in caplog.records
             if record.name == "flowcraft.presence" and record.levelno == logging.WARNING]
    assert len(lines) == 2 and lines[0] == lines[1]
    assert lines[0] == (
        "worker w-two (coordination protocol 2) is waiting, taking no jobs: live workers of another coordination "
        "protocol use this store: w-old on old-host pid 4242 (protocol none: a version before protocol checks), "
        "w-one on host-a pid 11 (protocol 1); mixing coordination protocols could complete a run without a join's "
        "branch; stop those workers; this one starts taking jobs when they are gone")


# ------------------------------------------------------------------------------------------- the worker loop
class ReceiveCounter:
    """Counts the queue's receives (the real receive runs)."""

    def __init__(self, backend: Backend) -> None:
        self.calls = 0
        self._receive = backend.queue.receive
        backend.queue.receive = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self._receive(*args, **kwargs)


def running_worker(backend: Backend, interval: float = 0.05) -> tuple[Worker, WorkerPresence]:
    engine = Engine(APP, backend)
    presence = WorkerPresence(backend, APP, worker_id=engine.worker_id, concurrency=2, interval=interval)
    return Worker(engine, concurrency=2, poll_wait=0.02, grace=1.0, presence=presence), presence


async def test_a_worker_that_must_wait_receives_nothing_until_the_blocker_is_gone() -> None:
    backend = memory_backend()
    await write_old_entry(backend, "w-old", time.time(), interval=0.05)
    keep_alive = asyncio.create_task(_heartbeat_old(backend, "w-old", 0.05))
    receives = ReceiveCounter(backend)
    worker, presence = running_worker(backend)
    task = asyncio.create_task(worker.run())
    client = Client(backend, APP)
    try:
        await until(lambda: presence.started and worker.state == "waiting", "the worker to wait")
        run_id = await client.start("one", 41)
        await asyncio.sleep(0.3)  # six heartbeat intervals
        assert receives.calls == 0 and not worker.ready.is_set() and worker.handled == 0
        record = await backend.status.get(run_id)
        assert record is not None and record.status == "running"
        assert await stored_state(backend, presence.info.worker_id) == "waiting"
        keep_alive.cancel()
        await Presence(backend.context).retire("w-old")
        result = await client.wait(run_id, timeout=5)
        assert (result.status, result.output) == ("completed", 42)
        assert worker.ready.is_set() and receives.calls > 0 and not presence.must_wait
        await until(lambda: worker.state == "ready", "the worker to say ready")
    finally:
        keep_alive.cancel()
        worker.stop()
        await asyncio.wait_for(task, 5)


async def test_a_worker_that_finds_it_must_wait_at_a_heartbeat_stops_receiving() -> None:
    backend = memory_backend()
    receives = ReceiveCounter(backend)
    worker, presence = running_worker(backend)
    task = asyncio.create_task(worker.run())
    client = Client(backend, APP)
    keep_alive: asyncio.Task[None] | None = None
    try:
        assert (await client.run("one", 1, timeout=5)).output == 2  # taking jobs
        await write_old_entry(backend, "w-old", time.time(), interval=0.05)  # an old worker starts beside it
        keep_alive = asyncio.create_task(_heartbeat_old(backend, "w-old", 0.05))
        await until(lambda: worker.state == "waiting", "the heartbeat to find the old worker")
        assert [info.worker_id for info in presence.blockers] == ["w-old"]
        assert worker.room() == 0  # its commits hand nothing over to it either
        await asyncio.sleep(0.05)  # a receive under way when it decided returns
        seen = receives.calls
        run_id = await client.start("one", 7)
        await asyncio.sleep(0.3)
        assert receives.calls == seen
        record = await backend.status.get(run_id)
        assert record is not None and record.status == "running"
        keep_alive.cancel()
        await Presence(backend.context).retire("w-old")
        assert (await client.wait(run_id, timeout=5)).output == 8
    finally:
        if keep_alive is not None:
            keep_alive.cancel()
        worker.stop()
        await asyncio.wait_for(task, 5)


async def test_stopping_while_waiting_returns_promptly() -> None:
    backend = memory_backend()
    await write_old_entry(backend, "w-old", time.time(), interval=60.0)
    worker, presence = running_worker(backend, interval=30.0)  # no heartbeat comes to wake it
    task = asyncio.create_task(worker.run())
    await until(lambda: worker.state == "waiting", "the worker to wait")
    started = asyncio.get_running_loop().time()
    worker.stop()
    await asyncio.wait_for(task, 2)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert [info.worker_id for info in await presence.presence.workers()] == ["w-old"]  # its entry retired


async def _heartbeat_old(backend: Backend, worker_id: str, interval: float) -> None:
    """An old worker's heartbeat: its entry rewritten every interval until cancelled."""
    while True:
        await write_old_entry(backend, worker_id, time.time(), interval=interval)
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------------------------- stores and the CLI
async def test_the_stores_declare_their_protocols(sqlite: Backend) -> None:
    assert memory_backend().coordination.protocol == "1"  # the default
    assert sqlite.coordination.protocol == "2"  # counted joins (fc_join_counts)


def test_flowcraft_workers_shows_the_state_and_protocol(make_project: Callable[..., Path]) -> None:
    root = make_project("protocol_app", "from flowcraft import App\napp = App(flows=[])\n", sqlite_config=True)

    async def write() -> None:
        backend = registry().build("sqlite", {"path": str(root / "runs.db")})
        await backend.setup()
        try:
            clock = Clock(time.time())
            await write_old_entry(backend, "w-old", clock.now)
            await presence_of(backend, "w-new", clock).start()
        finally:
            await backend.close()

    asyncio.run(write())
    listed = CliRunner().invoke(cli, ["workers", "--json"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    shown = {info["worker_id"]: (info["state"], info["protocol"]) for info in json.loads(listed.stdout)}
    assert shown == {"w-old": ("ready", None), "w-new": ("waiting", "2")}
    table = CliRunner(env={"COLUMNS": "250"}).invoke(cli, ["workers"], catch_exceptions=False)
    [new_row] = [line for line in table.output.splitlines() if "w-new" in line]
    [old_row] = [line for line in table.output.splitlines() if "w-old" in line]
    assert re.search(r"\swaiting\s+2\s", new_row) and re.search(r"\sready\s+unknown\s", old_row), table.output
