"""The ``rabbitmq`` backend's hand-over (``flowcraft_redis.handover``) against real servers: the member a commit
writes, ack / extend / release / dead_letter of a handed delivery, a sweep that leaves a job a live worker holds
alone, and a worker SIGKILLed while it runs a handed job (or holds handed jobs of a fan-out in its backlog), whose
jobs come back through another worker's sweep."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from test_rabbitmq_support import rabbitmq_options_fixture  # noqa: F401  # the fixture rabbitmq_options

from flowcraft import App, Client, Flow, NodeContext
from flowcraft.plugins import registry
from flowcraft.spi import Arrival, Backend, Completion, Delivery, Job, RunRecord, Transition
from flowcraft.testing import InProcessWorkers
from flowcraft_rabbitmq import RabbitMqQueue
from flowcraft_redis.handover import HandedReceipt, Handover, decode_member

pytestmark = pytest.mark.asyncio
VISIBILITY = 1.0


@pytest_asyncio.fixture
async def backend(rabbitmq_options: dict[str, Any]) -> AsyncIterator[Backend]:
    built = registry().build("rabbitmq", {**rabbitmq_options, "handover_visibility_timeout": VISIBILITY})
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


def _handover(backend: Backend) -> Handover:
    queue = backend.queue
    assert isinstance(queue, RabbitMqQueue) and queue.handover is not None
    return queue.handover


async def _hand(backend: Backend, run_id: str, owner: str = "w1") -> Delivery:
    """Commit node a of a run as ``owner``, handing its successor b over (the commit's continues)."""
    await backend.status.create(RunRecord(run_id, "bp"))
    a, b = Job(run_id, "bp", "a"), Job(run_id, "bp", "b", input={"ü": [1, None]}, has_input=True)
    await backend.coordination.schedule(run_id, [a])
    assert (await backend.coordination.begin(a, owner, 30)).lease
    committed = await backend.coordination.commit(Transition(
        run_id, a.key, completion=Completion("a", output=1, token="t1"),
        arrivals=(Arrival(b, "a", arrived=True, contribution=1, expected=("a",)),), finish=True, owner=owner,
        continue_up_to=1, lease_seconds=30))
    (handed,) = committed.continued
    assert handed.job == b and committed.fired == (b,)
    return handed


async def _until_empty(handover: Handover, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not await handover.deadlines():
            return
        await asyncio.sleep(0.05)
    assert await handover.deadlines() == {}


async def _receive(backend: Backend, timeout: float) -> list[Delivery]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = await backend.queue.dequeue(1, min(0.5, max(0.05, end - time.monotonic())))
        if got:
            return got
    return []


async def test_a_commit_puts_the_handed_job_in_the_set_as_the_queue_encodes_it(backend: Backend) -> None:
    handover = _handover(backend)
    before = time.time()
    handed = await _hand(backend, "r-member")
    receipt = handed.receipt
    assert isinstance(receipt, HandedReceipt)
    deadlines = await handover.deadlines()
    assert list(deadlines) == [receipt.member]
    assert before + VISIBILITY <= deadlines[receipt.member] <= time.time() + VISIBILITY
    unique, body = decode_member(receipt.member)
    assert re.fullmatch(rb"[0-9a-f]{16}\.1", unique)
    assert Job.from_dict(json.loads(body)) == handed.job
    assert handed.deliveries == 1 and handed.record is None and handed.begin is not None and handed.begin.lease
    assert not (await backend.coordination.begin(handed.job, "w2", 30)).lease  # the lease is w1's
    assert await backend.queue.dequeue(1, 0.3) == []  # never published


async def test_ack_removes_and_extend_moves_the_deadline_only_while_it_is_there(backend: Backend) -> None:
    handover = _handover(backend)
    handed = await _hand(backend, "r-ack")
    receipt = handed.receipt
    assert isinstance(receipt, HandedReceipt)
    await backend.queue.extend(handed, 60)
    assert (await handover.deadlines())[receipt.member] == pytest.approx(time.time() + 60, abs=5)
    await backend.queue.ack(handed)
    await handover.flush()
    assert await handover.deadlines() == {}
    await backend.queue.extend(handed, 60)  # acked: not put back
    await backend.queue.ack(handed)  # twice: nothing
    assert await handover.deadlines() == {}
    await asyncio.sleep(VISIBILITY + 0.5)
    assert await _receive(backend, 1.0) == []  # nothing for a sweep to bring back


@pytest.mark.parametrize("delay", [0.0, 0.6])
async def test_release_publishes_the_handed_job_then_removes_it(backend: Backend, delay: float) -> None:
    handover = _handover(backend)
    handed = await _hand(backend, f"r-release-{delay}")
    released_at = time.monotonic()
    await backend.queue.release(handed, delay)
    assert await handover.deadlines() == {}
    got = await _receive(backend, 10)
    assert [d.job for d in got] == [handed.job]
    assert time.monotonic() - released_at >= delay - 0.05
    assert got[0].deliveries == 2  # the handed delivery counts
    await backend.queue.ack(got[0])
    await backend.queue.release(handed)  # settled already: nothing published again
    assert await _receive(backend, VISIBILITY + 1.5) == []


async def test_dead_letter_publishes_the_handed_job_with_its_reason_then_removes_it(backend: Backend) -> None:
    handover = _handover(backend)
    handed = await _hand(backend, "r-dead")
    await backend.queue.dead_letter(handed, "bad input ü")
    assert await handover.deadlines() == {}
    letters = await backend.queue.dead_letters()
    assert [(letter.job, letter.reason) for letter in letters] == [(handed.job, "bad input ü")]
    assert await _receive(backend, VISIBILITY + 1.5) == []


async def test_a_sweep_leaves_a_job_held_within_its_visibility_and_brings_it_back_after(
        backend: Backend, rabbitmq_options: dict[str, Any]) -> None:
    """Another process's queue consumes (and sweeps) while the holder extends the handed job's visibility: the
    job is not published; once the holder stops, the sweep puts it back on the queue, out of the set."""
    handover = _handover(backend)
    handed = await _hand(backend, "r-held")
    other = registry().build("rabbitmq", {**rabbitmq_options, "handover_visibility_timeout": VISIBILITY})
    try:
        other_handover = _handover(other)

        async def hold() -> None:
            while True:
                await backend.queue.extend(handed, VISIBILITY)
                await asyncio.sleep(VISIBILITY / 4)

        holder = asyncio.create_task(hold())
        try:
            assert await _receive(other, 4 * VISIBILITY) == []
        finally:
            holder.cancel()
        assert other_handover.swept == 0 and len(await handover.deadlines()) == 1
        got = await _receive(other, VISIBILITY + 5)
        assert [d.job for d in got] == [handed.job] and got[0].deliveries == 2
        assert other_handover.swept == 1
        await _until_empty(handover)  # removed once published (the delivery may overtake the removal)
        await other.queue.ack(got[0])
        await backend.queue.ack(handed)  # the holder's late ack: harmless
    finally:
        await other.close()


# ------------------------------------------------------------------------------------------ a killed worker
def app(folder: str) -> App:
    """a -> b -> c; b's first attempt (anywhere) hangs, so the worker running it can be killed there."""

    async def node(ctx: NodeContext) -> Any:
        with (Path(folder) / "log").open("a") as log:
            log.write(f"{ctx.node_id}\n")
        if ctx.node_id == "b" and not (Path(folder) / "b-started").exists():
            (Path(folder) / "b-started").touch()
            await asyncio.sleep(3600)
        return (ctx.input or 0) + 1 if isinstance(ctx.input, int) else 1

    flow = Flow("hand3", version="1")
    for name in ("a", "b", "c"):
        flow.node(name, node)
    flow.edge("a", "b")
    flow.edge("b", "c")
    return App(flows=[flow])


def _hung(folder: Path) -> set[str]:
    """The b nodes of ``fan_app`` that hung."""
    return {path.name.removeprefix("hang-") for path in folder.glob("hang-*")}


def fan_app(folder: str) -> App:
    """a -> b0..b7 -> z; the first two b nodes to start (anywhere) hang, so the worker running them, with a
    concurrency of 2, holds the rest of what a's commit handed it in its backlog when it is killed."""

    async def node(ctx: NodeContext) -> Any:
        with (Path(folder) / "log").open("a") as log:
            log.write(f"{ctx.node_id}\n")
        if ctx.node_id.startswith("b") and len(_hung(Path(folder))) < 2:  # (no await between the check and the touch)
            (Path(folder) / f"hang-{ctx.node_id}").touch()
            await asyncio.sleep(3600)
        return 1

    flow = Flow("fan8", version="1")
    flow.node("a", node).node("z", node)
    for i in range(8):
        flow.node(f"b{i}", node).edge("a", f"b{i}").edge(f"b{i}", "z")
    return App(flows=[flow])


CHILD = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import test_rabbitmq_handover
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.worker import Worker
from flowcraft.plugins import registry

async def main():
    backend = registry().build("rabbitmq", json.loads(sys.argv[3]))
    app = getattr(test_rabbitmq_handover, sys.argv[4])(sys.argv[2])
    options = EngineOptions(lease_seconds=float(sys.argv[5]))
    worker = Worker(Engine(app, backend, options=options), concurrency=2, poll_wait=0.2)
    await worker.run()

asyncio.run(main())
"""


async def _child(tmp_path: Path, options: dict[str, Any], app_name: str, lease_seconds: float) -> Any:
    return await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(Path(__file__).parent),
                                                str(tmp_path), json.dumps(options), app_name, str(lease_seconds))


async def test_a_killed_workers_handed_job_comes_back_through_the_sweep(
        backend: Backend, rabbitmq_options: dict[str, Any], tmp_path: Path) -> None:
    handover = _handover(backend)
    client = Client(backend, app(str(tmp_path)))
    run_id = await client.start("hand3", None)
    options = {**rabbitmq_options, "handover_visibility_timeout": VISIBILITY}
    child = await _child(tmp_path, options, "app", 2)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "b-started").exists():  # (another process creates it)
            assert child.returncode is None and time.monotonic() < deadline, "the worker never started node b"
            await asyncio.sleep(0.05)
        held = await handover.deadlines()  # b was handed over by a's commit: it waits in the set, not the broker
        assert [Job.from_dict(json.loads(decode_member(m)[1])).node_id for m in held] == ["b"]
    finally:
        child.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(child.wait(), 10) == -signal.SIGKILL
    async with InProcessWorkers(backend, count=1, concurrency=2, app=app(str(tmp_path))):
        result = await client.wait(run_id, 60)
    assert result.status == "completed", result.errors
    assert result.outputs == {"a": 1, "b": 2, "c": 3}
    executions = Counter((tmp_path / "log").read_text().split())
    assert executions == {"a": 1, "b": 2, "c": 1}
    assert handover.swept >= 1
    await handover.flush()
    await _until_empty(handover)


async def test_a_killed_workers_backlog_of_a_fan_out_comes_back_through_the_sweep(
        backend: Backend, rabbitmq_options: dict[str, Any], tmp_path: Path) -> None:
    """a's commit hands all 8 of its jobs to a worker of concurrency 2 (the slot it leaves, a free one and 6 of
    the 8 places in its backlog); the two running hang, the worker is killed with six jobs waiting in its backlog:
    all eight come back through the sweep and the run completes, each b run once but the two that hung (twice)."""
    handover = _handover(backend)
    client = Client(backend, fan_app(str(tmp_path)))
    run_id = await client.start("fan8", None)
    options = {**rabbitmq_options, "handover_visibility_timeout": VISIBILITY}
    child = await _child(tmp_path, options, "fan_app", 4)  # a backlog job waits 1 s (a quarter lease) at most
    try:
        deadline = time.monotonic() + 60
        while len(_hung(tmp_path)) < 2:
            assert child.returncode is None and time.monotonic() < deadline, "the worker never started two b nodes"
            await asyncio.sleep(0.02)
    finally:  # at once: a backlog job waits 1 s at most before the worker gives it back to the broker
        child.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(child.wait(), 10) == -signal.SIGKILL
    held = await handover.deadlines()  # the two running and the six in the backlog (nothing sweeps yet)
    nodes = sorted(Job.from_dict(json.loads(decode_member(m)[1])).node_id for m in held)
    assert nodes == [f"b{i}" for i in range(8)], nodes
    async with InProcessWorkers(backend, count=1, concurrency=2, app=fan_app(str(tmp_path))):
        result = await client.wait(run_id, 60)
    assert result.status == "completed", result.errors
    assert result.outputs == {"a": 1, "z": 1, **{f"b{i}": 1 for i in range(8)}}
    hung = _hung(tmp_path)
    executions = Counter((tmp_path / "log").read_text().split())
    assert executions == {"a": 1, "z": 1, **{f"b{i}": 2 if f"b{i}" in hung else 1 for i in range(8)}}
    assert handover.swept >= 8
    await handover.flush()
    await _until_empty(handover)
