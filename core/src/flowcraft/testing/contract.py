"""The contract suite: what every backend must do. Subclass ``BackendContract`` in your tests::

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend_config(self, tmp_path):
            return "mybackend", {"url": ..., "prefix": unique_prefix}

The suite builds the backend by name through the plugin registry (so the worker processes of the crash
tests can build it too), with ``visibility_timeout`` added to the options. ``capabilities`` lists what the
backend can do; removing one is a documented gap (e.g. the memory backend cannot serve several processes).

``BackendContract`` is every contract class below; each test's docstring says which promise it checks.

* ``QueueContract``: at-least-once delivery, visibility timeout, heartbeats, delays, the dead letter;
* ``ContextContract``: JSON values stored per key, concurrent writers;
* ``StatusContract``: insert-if-absent records, compare-and-set transitions, listing, the stalled index;
* ``CoordinationContract``: first-writer-wins jobs and completion records, leases, all/any joins, recovery
  replays, park and unpark, activity;
* ``WorkflowContract``: every node kind and routing rule, run by ``InProcessWorkers`` over the backend;
* ``ReconcilerContract``: the reconciler re-enqueues a stalled run's pending jobs and leaves live ones alone;
* ``RecoveryContract``: redeliveries, replays and reconciler passes driven to the exact point of a defect
  once seen under chaos, each leaving the run as one delivery would;
* ``CrashContract``: real worker processes SIGKILLed at each fault point (needs ``MULTIPROCESS``);
* ``CapabilitiesContract``: each fast path the backend declares (``Backend.capabilities``) behaves as declared;
* ``PresenceContract``: worker presence (published blueprints, heartbeats) over the context store, and the queue's
  optional worker registration hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from flowcraft.app import App
from flowcraft.client import Client
from flowcraft.engine.core import Engine, EngineOptions, RunResult
from flowcraft.engine.worker import Worker
from flowcraft.errors import ConfigError, UnsupportedError
from flowcraft.flow import Flow
from flowcraft.plugins import registry
from flowcraft.presence import WorkerPresence
from flowcraft.reconciler import Reconciler
from flowcraft.spi import (
    FINAL_STATUSES,
    Arrival,
    Backend,
    Committed,
    Completion,
    Delivery,
    Job,
    RunEnd,
    RunRecord,
    Transition,
)
from flowcraft.testing.apps import app as contract_app
from flowcraft.testing.worker import FAULT_POINTS

MULTIPROCESS = "multiprocess"


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def receive(backend: Backend, count: int, timeout: float = 10.0) -> list[Delivery]:
    """Dequeue until ``count`` deliveries arrived (queues may hand out fewer per call)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += await backend.queue.dequeue(count - len(got), min(1.0, max(0.1, deadline - time.monotonic())))
    return got


def _job(run_id: str, node: str = "n", **kwargs: Any) -> Job:
    return Job(run_id, "bp", node, **kwargs)


class _Base:
    capabilities: ClassVar[frozenset[str]] = frozenset({MULTIPROCESS})
    visibility_timeout: ClassVar[float] = 2.0
    pytestmark = pytest.mark.asyncio

    @pytest.fixture
    def backend_config(self) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError("a BackendContract subclass must define the backend_config fixture")

    @pytest.fixture
    def worker_options(self, backend_config: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        name, options = backend_config
        return name, {**options, "visibility_timeout": self.visibility_timeout}

    @pytest_asyncio.fixture
    async def backend(self, worker_options: tuple[str, dict[str, Any]]) -> AsyncIterator[Backend]:
        name, options = worker_options
        built = registry().build(name, options)
        await built.setup()
        try:
            yield built
        finally:
            await built.close()

    @pytest.fixture
    def run_prefix(self) -> str:
        return f"t-{uuid.uuid4().hex[:10]}"


# ====================================================================== components
class QueueContract(_Base):
    """Queue: at-least-once delivery, visibility timeout, heartbeats, delays, the dead letter."""

    async def test_queue_delivers_and_ack_removes(self, backend: Backend, run_prefix: str) -> None:
        """Each job is delivered once with its fields intact (unicode ids, a None input); ack removes it."""
        jobs = [_job(f"{run_prefix}:{i}", node="ñode/ü: x", input=None, has_input=True) for i in range(3)]
        await backend.queue.enqueue(jobs)
        got = await receive(backend, 3)
        assert sorted(d.job.run_id for d in got) == sorted(j.run_id for j in jobs)
        assert all(d.deliveries == 1 for d in got)
        assert got[0].job.node_id == "ñode/ü: x" and got[0].job.has_input and got[0].job.input is None
        for delivery in got:
            await backend.queue.ack(delivery)
        assert await backend.queue.dequeue(10, 0.5) == []

    async def test_queue_depth(self, backend: Backend, run_prefix: str) -> None:
        """``depth()`` (optional: None = cannot say) counts jobs waiting, at least the 3 just enqueued, and
        drops to 0 once all are acked; servers that only estimate get ~5 s to catch up."""
        if await backend.queue.depth() is None:
            pytest.skip(f"the {backend.queue.name or type(backend.queue).__name__} queue cannot report its depth")

        async def settle(ok: Callable[[int], bool]) -> int | None:
            deadline = time.monotonic() + 5.0
            while True:
                depth = await backend.queue.depth()
                if depth is None or ok(depth) or time.monotonic() > deadline:
                    return depth
                await asyncio.sleep(0.25)

        await backend.queue.enqueue([_job(f"{run_prefix}:{i}") for i in range(3)])
        waiting = await settle(lambda depth: depth >= 3)
        assert waiting is None or waiting >= 3, f"depth {waiting} after enqueueing 3 jobs"
        got = await receive(backend, 3)
        assert len(got) == 3
        for delivery in got:
            await backend.queue.ack(delivery)
        left = await settle(lambda depth: depth == 0)
        assert left is None or left == 0, f"depth {left} after acking every job"

    async def test_queue_redelivers_after_visibility_timeout(self, backend: Backend, run_prefix: str) -> None:
        """A job nobody acks comes back after the visibility timeout: a dead worker's job is not lost."""
        await backend.queue.enqueue([_job(run_prefix)])
        first = await receive(backend, 1)
        assert len(first) == 1
        assert await backend.queue.dequeue(1, 0.2) == []  # invisible while leased
        again = await receive(backend, 1, timeout=self.visibility_timeout + 10)
        assert len(again) == 1 and again[0].job == first[0].job
        assert again[0].deliveries == 2
        await backend.queue.ack(again[0])

    async def test_queue_extend_keeps_a_job_invisible(self, backend: Backend, run_prefix: str) -> None:
        """Heartbeats (extend) keep a job invisible past its timeout, so a long node is not run twice."""
        await backend.queue.enqueue([_job(run_prefix)])
        (delivery,) = await receive(backend, 1)
        for _ in range(3):
            await asyncio.sleep(self.visibility_timeout * 0.6)
            await backend.queue.extend(delivery, self.visibility_timeout)
        assert await backend.queue.dequeue(1, 0.1) == []
        await backend.queue.ack(delivery)

    async def test_queue_delayed_delivery(self, backend: Backend, run_prefix: str) -> None:
        """enqueue(delay=) holds a job back for the delay: retry backoff and sleep nodes rely on it."""
        started = time.monotonic()
        await backend.queue.enqueue([_job(run_prefix)], delay=1.5)
        assert await backend.queue.dequeue(1, 0.5) == []
        (delivery,) = await receive(backend, 1, timeout=10)
        assert time.monotonic() - started >= 1.4
        await backend.queue.ack(delivery)

    async def test_queue_release_with_delay(self, backend: Backend, run_prefix: str) -> None:
        """A released job comes back only after its delay (how a job due later or bounced is given back)."""
        await backend.queue.enqueue([_job(run_prefix)])
        (delivery,) = await receive(backend, 1)
        await backend.queue.release(delivery, 1.0)
        assert await backend.queue.dequeue(1, 0.3) == []
        (again,) = await receive(backend, 1, timeout=10)
        await backend.queue.ack(again)

    async def test_queue_dead_letter_keeps_the_reason(self, backend: Backend, run_prefix: str) -> None:
        """A dead-lettered job is never delivered again and keeps its job and reason for the operator."""
        await backend.queue.enqueue([_job(run_prefix, payload={"x": [1, 2]})])
        (delivery,) = await receive(backend, 1)
        await backend.queue.dead_letter(delivery, "cannot be processed: test")
        assert await backend.queue.dequeue(1, 0.3) == []
        letters = [d for d in await backend.queue.dead_letters(100) if d.job is not None and d.job.run_id == run_prefix]
        assert len(letters) == 1
        assert letters[0].reason == "cannot be processed: test"
        assert letters[0].job is not None and letters[0].job.payload == {"x": [1, 2]}

    async def test_queue_dead_letters_replay_and_purge(self, backend: Backend, run_prefix: str) -> None:
        """Dead letters have ids; a replayed one's job is delivered again (unchanged) and its dead letter is
        gone; a purged one is gone without a delivery. Skipped for a queue that cannot remove its dead letters
        (``manages_dead_letters`` False), which must then refuse a replay with ``UnsupportedError``."""
        queue = backend.queue
        jobs = [_job(run_prefix, node=f"n{i}", payload={"i": i}) for i in range(3)]
        await queue.enqueue(jobs)
        for delivery in await receive(backend, 3):
            await queue.dead_letter(delivery, f"test {delivery.job.node_id}")
        letters = {d.job.node_id: d for d in await queue.dead_letters(1000) if d.job and d.job.run_id == run_prefix}
        assert sorted(letters) == ["n0", "n1", "n2"]
        if not queue.manages_dead_letters:
            with pytest.raises(UnsupportedError):
                await queue.replay_dead_letters([letters["n0"].id])
            pytest.skip(f"the {queue.name} queue cannot remove its dead letters (manages_dead_letters)")
        assert all(letter.id for letter in letters.values()) and len({d.id for d in letters.values()}) == 3
        replayed = await queue.replay_dead_letters([letters["n0"].id])
        assert [d.job.node_id for d in replayed if d.job] == ["n0"]
        (again,) = await receive(backend, 1)
        assert again.job.node_id == "n0" and again.job.payload == {"i": 0} and again.job.run_id == run_prefix
        await queue.ack(again)
        assert await queue.purge_dead_letters([letters["n1"].id]) == 1
        left = [d for d in await queue.dead_letters(1000) if d.job and d.job.run_id == run_prefix]
        assert [d.job.node_id for d in left if d.job] == ["n2"]
        assert await queue.purge_dead_letters([letters["n1"].id]) == 0  # already gone: ignored
        await queue.purge_dead_letters([left[0].id])
        assert await queue.dequeue(1, 0.3) == []


class ContextContract(_Base):
    """ContextStore: JSON values stored per key, null included, concurrent writers."""

    async def test_context_set_get_delete_and_none(self, backend: Backend, run_prefix: str) -> None:
        """Keys with separators and unicode round-trip; null is a value, not a missing key; deletes forget."""
        run = f"{run_prefix}: ü/x"
        await backend.context.apply(run, {"a": 1, "none": None, "nested": {"k": [1, "two"]}, "ключ:/ ": "v"})
        assert await backend.context.get_many(run, ["a", "none", "missing", "ключ:/ "]) == {
            "a": 1, "none": None, "ключ:/ ": "v"}
        await backend.context.apply(run, {"a": 2}, ["nested"])
        assert await backend.context.get_all(run) == {"a": 2, "none": None, "ключ:/ ": "v"}
        await backend.context.delete_run(run)
        assert await backend.context.get_all(run) == {}

    async def test_context_concurrent_writers_lose_nothing(self, backend: Backend, run_prefix: str) -> None:
        """Concurrent writers of different keys lose no update: the context is stored per key."""
        async def writer(index: int) -> None:
            for step in range(5):
                await backend.context.apply(run_prefix, {f"w{index}.{step}": index * 100 + step})

        await asyncio.gather(*(writer(i) for i in range(10)))
        values = await backend.context.get_all(run_prefix)
        assert len(values) == 50
        assert values["w7.3"] == 703


class StatusContract(_Base):
    """StatusStore: insert-if-absent records, compare-and-set transitions, listing, the stalled index."""

    async def test_status_create_get_and_no_duplicates(self, backend: Backend, run_prefix: str) -> None:
        """create is insert-if-absent (one run per id) and get returns the record's fields as stored."""
        record = RunRecord(run_prefix, "bp", input={"x": 1}, parent={"run_id": "p"})
        assert await backend.status.create(record)
        assert not await backend.status.create(RunRecord(run_prefix, "other"))
        stored = await backend.status.get(run_prefix)
        assert stored is not None and stored.blueprint_id == "bp" and stored.input == {"x": 1}
        assert stored.parent == {"run_id": "p"} and stored.status == "running"
        assert await backend.status.get(run_prefix + "-missing") is None

    async def test_status_transition_has_exactly_one_winner(self, backend: Backend, run_prefix: str) -> None:
        """Of concurrent compare-and-set transitions exactly one wins; a final status never changes."""
        await backend.status.create(RunRecord(run_prefix, "bp"))
        results = await asyncio.gather(*(
            backend.status.transition(run_prefix, ["running"], "completed" if i % 2 else "failed", {})
            for i in range(10)
        ))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        final = await backend.status.get(run_prefix)
        assert final is not None and final.status == winners[0].status
        assert await backend.status.transition(run_prefix, ["running", "awaiting"], "completed", {}) is None

    async def test_status_list_filters_and_pages(self, backend: Backend, run_prefix: str) -> None:
        """list filters by status and blueprint, and its cursor pages through every record once."""
        blueprint = f"bp-{run_prefix}"
        for i in range(5):
            await backend.status.create(RunRecord(f"{run_prefix}-{i}", blueprint))
        await backend.status.transition(f"{run_prefix}-0", ["running"], "failed", {})
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = await backend.status.list(blueprint_id=blueprint, limit=2, cursor=cursor)
            assert len(page) <= 2
            seen += [r.run_id for r in page]
            if cursor is None:
                break
        assert sorted(seen) == [f"{run_prefix}-{i}" for i in range(5)]
        failed, _ = await backend.status.list(status="failed", blueprint_id=blueprint)
        assert [r.run_id for r in failed] == [f"{run_prefix}-0"]

    async def test_status_stalled_finds_old_active_runs(self, backend: Backend, run_prefix: str) -> None:
        """stalled returns old active runs, never final or recent ones: what the reconciler scans."""
        await backend.status.create(RunRecord(run_prefix, "bp"))
        await backend.status.create(RunRecord(run_prefix + "-done", "bp"))
        await backend.status.transition(run_prefix + "-done", ["running"], "completed", {})
        await asyncio.sleep(0.05)
        found = {r.run_id for r in await backend.status.stalled(time.time(), 1000)}
        assert run_prefix in found and run_prefix + "-done" not in found
        assert run_prefix not in {r.run_id for r in await backend.status.stalled(time.time() - 3600, 1000)}


    async def test_status_delete_removes_a_record(self, backend: Backend, run_prefix: str) -> None:
        """delete removes the record (get None, not listed, the id can be created again); deleting a missing
        run is False. Every bundled backend implements it (``deletes``); retention relies on it."""
        if not backend.status.deletes:
            with pytest.raises(UnsupportedError):
                await backend.status.delete(run_prefix)
            pytest.skip(f"the {backend.status.name} status store cannot delete runs")
        blueprint = f"bp-{run_prefix}"
        await backend.status.create(RunRecord(run_prefix, blueprint))
        await backend.status.create(RunRecord(run_prefix + "-kept", blueprint))
        await backend.status.transition(run_prefix, ["running"], "completed", {})
        assert await backend.status.delete(run_prefix)
        assert await backend.status.get(run_prefix) is None
        assert not await backend.status.delete(run_prefix)
        listed, _ = await backend.status.list(blueprint_id=blueprint)
        assert [r.run_id for r in listed] == [run_prefix + "-kept"]
        completed, _ = await backend.status.list(status="completed", blueprint_id=blueprint)
        assert completed == []
        assert await backend.status.create(RunRecord(run_prefix, blueprint))


class CoordinationContract(_Base):
    """CoordinationStore: first-writer-wins jobs and completions, leases, joins, replays, park/unpark."""

    async def test_schedule_is_insert_if_absent(self, backend: Backend, run_prefix: str) -> None:
        """schedule inserts only absent jobs (first-writer-wins): what makes firing a job exactly-once."""
        jobs = [_job(run_prefix, "a"), _job(run_prefix, "b")]
        assert len(await backend.coordination.schedule(run_prefix, jobs)) == 2
        assert await backend.coordination.schedule(run_prefix, jobs) == []
        pending = await backend.coordination.jobs(run_prefix)
        assert sorted(p.job.node_id for p in pending) == ["a", "b"]

    async def test_lease_is_exclusive_until_released(self, backend: Backend, run_prefix: str) -> None:
        """A live lease excludes other owners until its owner releases it; jobs() reports it as leased."""
        job = _job(run_prefix)
        await backend.coordination.schedule(run_prefix, [job])
        first = await backend.coordination.begin(job, "w1", 30)
        assert first.lease and first.state == "pending" and first.completion is None
        assert not (await backend.coordination.begin(job, "w2", 30)).lease
        assert await backend.coordination.renew(run_prefix, job.key, "w1", 30)
        assert not await backend.coordination.renew(run_prefix, job.key, "w2", 30)
        assert [p.leased for p in await backend.coordination.jobs(run_prefix)] == [True]
        await backend.coordination.release(run_prefix, job.key, "w1")
        assert (await backend.coordination.begin(job, "w2", 30)).lease

    async def test_expired_lease_can_be_taken_over(self, backend: Backend, run_prefix: str) -> None:
        """An expired lease can be taken by another owner: a dead worker's job is not blocked forever."""
        job = _job(run_prefix)
        await backend.coordination.schedule(run_prefix, [job])
        assert (await backend.coordination.begin(job, "w1", 0.5)).lease
        await asyncio.sleep(1.1)
        assert (await backend.coordination.begin(job, "w2", 30)).lease

    async def test_completion_is_first_writer_wins(self, backend: Backend, run_prefix: str) -> None:
        """A job's first completion record wins; a later attempt's commit gets it back as the conflict."""
        job = _job(run_prefix)
        await backend.coordination.schedule(run_prefix, [job])
        mine = Completion("n", output={"v": 1}, action="go", token="t1")
        theirs = Completion("n", output={"v": 2}, action=None, token="t2")
        first = await backend.coordination.commit(Transition(run_prefix, job.key, completion=mine, finish=True))
        assert first.conflict is None and first.pending == 0
        second = await backend.coordination.commit(Transition(run_prefix, job.key, completion=theirs, finish=True))
        assert second.conflict == mine
        begin = await backend.coordination.begin(job, "w", 30)
        assert begin.state == "done" and begin.completion == mine

    async def test_all_join_fires_exactly_once_under_concurrency(self, backend: Backend, run_prefix: str) -> None:
        """An all-join fires once with every contribution under concurrent, doubled arrivals."""
        members = [f"p{i}" for i in range(6)]
        await backend.coordination.schedule(run_prefix, [_job(run_prefix, m) for m in members])
        target = _job(run_prefix, "join")

        async def arrive(member: str) -> tuple[int, ...]:
            arrival = Arrival(target, member, arrived=True, contribution={"from": member}, expected=tuple(members))
            outcomes = []
            for _ in range(2):  # every arrival delivered twice
                committed = await backend.coordination.commit(
                    Transition(run_prefix, _job(run_prefix, member).key, completion=None, arrivals=(arrival,),
                               finish=True))
                outcomes.append(len(committed.fired))
            return tuple(outcomes)

        results = await asyncio.gather(*(arrive(m) for m in members))
        fired = sum(sum(r) for r in results)
        assert fired == 1
        (pending,) = await backend.coordination.jobs(run_prefix)
        assert pending.job.node_id == "join"
        assert pending.job.input == {m: {"from": m} for m in members}

    async def test_any_join_fires_once_and_all_skipped_is_skipped(self, backend: Backend, run_prefix: str) -> None:
        """An any-join fires on the first arrival only; a join whose members all skipped is skipped."""
        members = ("a", "b", "c")
        target = _job(run_prefix, "any")
        fired = 0
        for member in members:
            committed = await backend.coordination.commit(Transition(
                run_prefix, f"0:{member}", completion=None,
                arrivals=(Arrival(target, member, arrived=True, contribution=member, expected=members,
                                  strategy="any"),)))
            fired += len(committed.fired)
        assert fired == 1
        skipped_target = _job(run_prefix, "dead")
        outcomes = []
        for member in members:
            committed = await backend.coordination.commit(Transition(
                run_prefix, f"0:{member}", completion=None,
                arrivals=(Arrival(skipped_target, member, arrived=False, contribution=None, expected=members),)))
            outcomes.append(committed.skipped)
        assert outcomes == [(), (), (skipped_target.key,)]

    async def test_recovery_replay_returns_what_is_still_pending(self, backend: Backend, run_prefix: str) -> None:
        """A recovery replay re-fires successors still pending (their enqueue may be lost)."""
        job = _job(run_prefix, "a")
        await backend.coordination.schedule(run_prefix, [job])
        completion = Completion("a", output=1, token="tok")
        arrival = Arrival(_job(run_prefix, "b", input=1, has_input=True), "a", arrived=True, contribution=1,
                          expected=("a",))
        first = await backend.coordination.commit(Transition(run_prefix, job.key, completion=completion,
                                                             arrivals=(arrival,), finish=True))
        assert [j.node_id for j in first.fired] == ["b"] and first.pending == 1
        replay = await backend.coordination.commit(
            Transition(run_prefix, job.key, completion=completion, arrivals=(arrival,), finish=True, recovery=True))
        assert replay.conflict is None and [j.node_id for j in replay.fired] == ["b"]
        normal = await backend.coordination.commit(Transition(run_prefix, job.key, completion=completion,
                                                              arrivals=(arrival,), finish=True))
        assert normal.fired == ()

    async def test_park_and_unpark(self, backend: Backend, run_prefix: str) -> None:
        """park moves a pending wait to parked and counts it; unpark restores it once, with the resume."""
        job = _job(run_prefix, "wait")
        await backend.coordination.schedule(run_prefix, [job])
        parked = await backend.coordination.park(run_prefix, job.key)
        assert (parked.pending, parked.parked) == (0, 1)
        assert [p.job.node_id for p in await backend.coordination.jobs(run_prefix, "parked")] == ["wait"]
        resumed = job.evolve(payload={"resume": {"action": "ok"}})
        assert await backend.coordination.unpark(run_prefix, job.key, resumed)
        assert not await backend.coordination.unpark(run_prefix, job.key, resumed)
        (pending,) = await backend.coordination.jobs(run_prefix)
        assert pending.job.payload == {"resume": {"action": "ok"}}

    async def test_activity_is_recorded(self, backend: Backend, run_prefix: str) -> None:
        """Coordination writes record the run's activity time, which the reconciler compares."""
        before = time.time() - 1
        await backend.coordination.schedule(run_prefix, [_job(run_prefix)])
        activity = await backend.coordination.activity(run_prefix)
        assert activity is not None and activity >= before

    async def test_protocol_is_declared(self, backend: Backend) -> None:
        """protocol names the version of what the store writes, which workers announce and compare so that workers
        of different versions never take jobs from one store together (``flowcraft.presence``): a non-empty str."""
        protocol = backend.coordination.protocol
        assert isinstance(protocol, str) and protocol.strip(), f"protocol {protocol!r}"


# ====================================================================== workflows on real workers
class InProcessWorkers:
    """Engines with worker loops in this process, plus a client: ``async with InProcessWorkers(backend) as w``."""

    def __init__(self, backend: Backend, count: int = 2, concurrency: int = 8, app: App = contract_app) -> None:
        self.backend = backend
        self.client = Client(backend, app)
        self.engines = [Engine(app, backend, options=EngineOptions(lease_seconds=5)) for _ in range(count)]
        self.workers = [Worker(e, concurrency=concurrency, poll_wait=0.2, grace=2) for e in self.engines]
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> InProcessWorkers:
        self.tasks = [asyncio.create_task(w.run()) for w in self.workers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()
        await asyncio.gather(*self.tasks)

    async def run(self, blueprint: str, input: Any = None, timeout: float = 30) -> RunResult:
        return await self.client.wait(await self.client.start(blueprint, input), timeout)


class WorkflowContract(_Base):
    """Every node kind and routing rule, run by in-process workers over the backend."""

    async def test_diamond_all_join(self, backend: Backend, tmp_path: Path) -> None:
        """A fan-out to three nodes and an all-join completes with every contribution, the join run once."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-diamond", {"log": str(tmp_path / "log"), "value": 1})
        assert result.status == "completed", result.errors
        assert result.outputs["j"]["received"] == {p: result.outputs[p] for p in ("p1", "p2", "p3")}
        assert result.output == result.outputs["j"]
        assert Counter(e["node"] for e in read_log(tmp_path / "log"))["j"] == 1

    async def test_any_join_of_four_runs_once(self, backend: Backend, tmp_path: Path) -> None:
        """An any-join of four parallel branches runs once, with the first arrival's contribution."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-any", {"log": str(tmp_path / "log")})
        assert result.status == "completed", result.errors
        assert Counter(e["node"] for e in read_log(tmp_path / "log"))["j"] == 1
        (winner,) = result.outputs["j"]["received"]
        assert result.outputs["j"]["received"][winner] == result.outputs[winner]

    async def test_node_returning_none_completes(self, backend: Backend) -> None:
        """A node returning None completes, its None output kept (None is a value, not a missing output)."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-none", {"value": 3})
        assert result.status == "completed" and result.outputs == {"s": 3, "n": None, "e": None}

    @pytest.mark.parametrize("side", ["left", "right"])
    async def test_conditional_branches_complete(self, backend: Backend, side: str) -> None:
        """Only the taken branch runs; the untaken one is skipped (dead path) and the join still fires."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-branches", {"value": side})
        assert result.status == "completed", result.errors
        assert side in result.outputs and ({"left", "right"} - {side}).isdisjoint(result.outputs)
        assert set(result.outputs["j"]["received"]) == ({"left2"} if side == "left" else {"right"})
        assert ("only-right" in result.outputs) == (side == "right")

    async def test_retries_really_retry_with_backoff(self, backend: Backend, tmp_path: Path) -> None:
        """A failing node is retried through the queue with backoff, and every attempt really runs."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-retry", {"log": str(tmp_path / "log")})
        assert result.status == "completed" and result.outputs["f"] == "ok on attempt 3"
        assert [e["attempt"] for e in read_log(tmp_path / "log") if e["node"] == "f"] == [1, 2, 3]

    async def test_timeline_records_attempts_skips_and_failures(self, backend: Backend, tmp_path: Path) -> None:
        """The run's timeline (written with the completions, through the SPI only): each attempt of a retried
        node with its worker, times and error; skipped nodes; a failing node with its error; no engine keys
        in ``RunResult.context``."""
        async with InProcessWorkers(backend) as w:
            retried = await w.run("contract-retry", {"log": str(tmp_path / "log")})
            branched = await w.run("contract-branches", {"value": "left"})
            failed = await w.run("contract-fail", {})
        visits = {v.node_id: v for v in retried.timeline}
        assert [(a.attempt, a.error is None) for a in visits["f"].attempts] == [(1, False), (2, False), (3, True)]
        assert visits["f"].state == "done" and all(a.worker and a.started_at and a.finished_at
                                                   for a in visits["f"].attempts)
        assert [v.node_id for v in retried.timeline] == ["s", "f"]
        states = {v.node_id: v.state for v in branched.timeline}
        assert states["right"] == states["only-right"] == "skipped" and states["j"] == "done"
        bad = next(v for v in failed.timeline if v.node_id == "bad")
        assert bad.state == "failed" and bad.error and bad.attempts[-1].error
        for result in (retried, branched, failed):
            assert not [k for k in result.context if k == "_result" or k.startswith(("_outputs.", "_timeline."))]

    async def test_fallback_only_when_primary_fails(self, backend: Backend, tmp_path: Path) -> None:
        """A fallback runs only when its primary fails for good, and its output flows on."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-fallback", {"log": str(tmp_path / "log"), "value": 9})
        assert result.status == "completed", result.errors
        assert result.outputs["next"] == 9 and result.outputs["good"] == 9
        assert "unused" not in {e["node"] for e in read_log(tmp_path / "log")}

    async def test_failure_is_final(self, backend: Backend) -> None:
        """A node failing for good fails the run, which stays failed; nothing after it runs."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-fail", {})
            await asyncio.sleep(0.6)
            later = await w.client.status(result.run_id)
        assert result.status == "failed" and later.status == "failed"
        assert result.errors[0]["node_id"] == "bad"
        assert "after" not in later.outputs

    async def test_loop(self, backend: Backend) -> None:
        """A back edge runs the loop body once per visit until it exits; the context carries the count."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-loop", {})
        assert result.status == "completed", result.errors
        assert result.context["count"] == 4 and result.outputs["after"] == 4

    async def test_map_with_chunks_and_concurrency(self, backend: Backend) -> None:
        """A map fans out over its items in chunks and gathers them in order; an empty list too."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-map", {"value": [1, 2, 3, 4, 5]})
            empty = await w.run("contract-map", {"value": []})
        assert result.status == "completed", result.errors
        assert result.outputs["squares"] == [1, 4, 9, 16, 25] and result.outputs["sum"] == 55
        assert empty.status == "completed" and empty.outputs["sum"] == 0

    async def test_sleep_is_a_durable_timer(self, backend: Backend) -> None:
        """A sleep node is a durable timer (a delayed job): the run goes on after about the delay."""
        async with InProcessWorkers(backend) as w:
            started = time.monotonic()
            result = await w.run("contract-sleep", {"value": "x"})
        assert result.status == "completed" and result.outputs["woke"] == "x"
        assert 0.9 <= time.monotonic() - started <= 6

    @pytest.mark.parametrize("action", ["approve", "reject"])
    async def test_wait_and_resume_route_by_action(self, backend: Backend, action: str) -> None:
        """A wait makes the run awaiting; resume routes by its action, once (a second one is refused)."""
        async with InProcessWorkers(backend) as w:
            paused = await w.run("contract-wait", {"value": 1})
            assert paused.status == "awaiting"
            assert paused.awaiting == [{"node_id": "approval", "visit": 0}]
            await w.client.resume(paused.run_id, action=action, output={"by": "ada"})
            with pytest.raises(Exception, match=r"not awaiting|already resumed"):
                await w.client.resume(paused.run_id, action=action)
            result = await w.client.wait(paused.run_id, 30)
        assert result.status == "completed", result.errors
        other = "rejected" if action == "approve" else "approved"
        assert result.outputs[action.rstrip("e") + "ed"] == {"by": "ada"} and other not in result.outputs

    async def test_subflow(self, backend: Backend) -> None:
        """A subflow node runs a child run and continues with the child's result."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract-parent", {"value": 40})
        assert result.status == "completed", result.errors
        assert result.outputs["sub"] == 42 and result.outputs["after"] == 42

    async def test_cancel_drops_queued_work(self, backend: Backend) -> None:
        """Cancelling wins once and is final: the run's queued work (a pending timer) never runs."""
        async with InProcessWorkers(backend) as w:
            run_id = await w.client.start("contract-sleep", {"value": 1})
            await asyncio.sleep(0.3)
            assert await w.client.cancel(run_id)
            assert not await w.client.cancel(run_id)
            await asyncio.sleep(1.5)
            result = await w.client.status(run_id)
        assert result.status == "cancelled" and "woke" not in result.outputs

    async def test_ids_with_separators_and_unicode(self, backend: Backend) -> None:
        """Ids with ':' '/' spaces and unicode work end to end: a store never parses its keys."""
        async with InProcessWorkers(backend) as w:
            result = await w.run("contract ids:/ünï", {"value": "ok"})
        assert result.status == "completed" and result.outputs == {"a:b/c d": "ok", "ñ/ø:1": "ok"}

    async def test_unknown_version_is_not_lost(self, backend: Backend, run_prefix: str) -> None:
        """A job of a version no worker loaded is given back, then dead-lettered with the reason."""
        await backend.status.create(RunRecord(run_prefix, "contract-none", version="999"))
        job = Job(run_prefix, "contract-none", "s", version="999", input={}, has_input=True)
        await backend.coordination.schedule(run_prefix, [job])
        await backend.queue.enqueue([job])
        engine = Engine(contract_app, backend, options=EngineOptions(max_bounces=2, bounce_delay=0.1))
        handled = 0
        while handled < 2:
            for delivery in await receive(backend, 1, timeout=self.visibility_timeout + 10):
                await engine.handle(delivery)
                handled += 1
        letters = [d for d in await backend.queue.dead_letters(1000) if d.job and d.job.run_id == run_prefix]
        assert len(letters) == 1 and "version '999' is not loaded" in letters[0].reason


class ReconcilerContract(_Base):
    """The reconciler, which works through the SPI alone, on this backend's components."""

    async def test_reconciler_requeues_only_pending_jobs_of_stalled_runs(self, backend: Backend) -> None:
        """A run whose start was lost is re-enqueued: pending jobs only, no untaken branch."""
        client = Client(backend, contract_app)
        lost, start = client.engine.queue.enqueue, backend.coordination.start

        async def drop(jobs: Any, delay: float = 0.0) -> None:
            return None

        async def start_losing_the_message(record: RunRecord, jobs: Sequence[Job]) -> bool:
            # a store that starts runs in one step (``starts``) queues the start message with the record
            assert await backend.status.create(record)
            await backend.coordination.schedule(record.run_id, jobs)
            return True

        client.engine.queue.enqueue = drop  # type: ignore[method-assign]  # the start message is lost
        backend.coordination.start = start_losing_the_message  # type: ignore[method-assign]
        run_id = await client.start("contract-branches", {"value": "right"})
        client.engine.queue.enqueue = lost  # type: ignore[method-assign]
        backend.coordination.start = start  # type: ignore[method-assign]
        healthy = await client.start("contract-none", {"value": 1})
        async with InProcessWorkers(backend, count=1):
            assert (await client.wait(healthy, 30)).status == "completed"
            await asyncio.sleep(1.2)
            assert (await client.status(run_id)).status == "running"
            stats = await Reconciler(backend, stalled_threshold_seconds=1.0).run()
            assert stats.stalled_runs == 1 and stats.reconciled_runs == 1 and stats.requeued_jobs == 1
            result = await client.wait(run_id, 30)
        assert result.status == "completed"
        assert "left" not in result.outputs and "left2" not in result.outputs

    async def test_reconciler_leaves_runs_with_a_live_worker_alone(self, backend: Backend) -> None:
        """A run whose job a live worker holds is not stalled, however long the job takes."""
        async with InProcessWorkers(backend, count=1) as w:
            run_id = await w.client.start("contract-long", {})
            await asyncio.sleep(1.5)
            stats = await Reconciler(backend, stalled_threshold_seconds=0.5).run()
            assert stats.reconciled_runs == 0
            result = await w.client.wait(run_id, 30)
        assert result.status == "completed"


# ====================================================================== redelivery, replay, recovery
class _Interrupted(Exception):
    """Raised by a fault hook: the handling stops right there, as if the worker had been killed."""


def _interrupt_at(point: str) -> Any:
    def fault(reached: str) -> None:
        if reached == point:
            raise _Interrupted(point)

    return fault


Handled = Callable[[Delivery], Awaitable[None]]


def _without_ends(backend: Backend) -> Backend:
    """``backend``'s components as an engine that does not end runs in their last commit sees them (its
    capabilities without ``ends``: the run's end is its own step after the commit, as without the fast path)."""
    view = copy.copy(backend)
    view.capabilities = dataclasses.replace(backend.capabilities, ends=False)
    return view


async def _drive(engine: Engine, backend: Backend, run_id: str, *, after: Handled | None = None,
                 until: Callable[[RunRecord], bool] | None = None, timeout: float = 30.0) -> RunRecord:
    """Handle deliveries one at a time with ``engine`` until the run is final (or ``until`` holds)."""
    done = until or (lambda record: record.status in FINAL_STATUSES)
    deadline = time.monotonic() + timeout
    while True:
        record = await backend.status.get(run_id)
        assert record is not None
        if done(record):
            return record
        assert time.monotonic() < deadline, f"run {run_id} still {record.status} after {timeout}s"
        for delivery in await backend.queue.dequeue(1, 0.2):
            await engine.handle(delivery)
            if after is not None:
                await after(delivery)


class RecoveryContract(_Base):
    """Any redelivery, replay or reconciler pass leaves the run exactly as one delivery would. Each test
    drives ``Engine.handle`` to the exact point of a defect once seen under SIGKILL chaos."""

    def _engine(self, backend: Backend, **options: Any) -> Engine:
        return Engine(contract_app, backend, options=EngineOptions(lease_seconds=5), **options)

    async def test_redelivered_map_jobs_never_route_a_placeholder(self, backend: Backend, tmp_path: Path) -> None:
        """Redelivered map fan-out, chunk and gather jobs never route a placeholder."""
        engine, client = self._engine(backend), Client(backend, contract_app)
        log = tmp_path / "log"
        run_id = await client.start("contract-map", {"log": str(log), "value": [1, 2, 3, 4, 5]})
        replayed: set[str] = set()

        async def redeliver_map_jobs(delivery: Delivery) -> None:
            job = delivery.job
            kind = "fan-out" if job.item is None else "gather" if job.item < 0 else "chunk"
            if job.node_id == "squares" and kind not in replayed:  # a second delivery of each kind of job
                replayed.add(kind)
                await backend.queue.enqueue([job])

        await _drive(engine, backend, run_id, after=redeliver_map_jobs)
        result = await client.status(run_id)
        assert replayed == {"fan-out", "chunk", "gather"}
        assert result.status == "completed", result.errors
        assert result.outputs["squares"] == [1, 4, 9, 16, 25] and result.outputs["sum"] == 55
        assert Counter(e["node"] for e in read_log(log))["sum"] == 1

    async def test_replayed_finished_job_changes_no_context(self, backend: Backend, tmp_path: Path) -> None:
        """Replaying a finished job writes no context: later visits may have changed those keys."""
        engine, client = self._engine(backend), Client(backend, contract_app)
        log = tmp_path / "log"
        run_id = await client.start("contract-loop", {"log": str(log)})
        first: list[Job] = []

        async def replay_first_body(delivery: Delivery) -> None:
            job = delivery.job
            if job.node_id == "body" and job.visit == 0:
                first.append(job)
            elif job.node_id == "body" and job.visit == 2 and first:
                await backend.queue.enqueue([first.pop()])  # visit 0 again, after visit 1 raised count to 2

        await _drive(engine, backend, run_id, after=replay_first_body)
        result = await client.status(run_id)
        assert result.status == "completed", result.errors
        assert result.context["count"] == 4 and result.outputs["after"] == 4
        assert Counter(e["node"] for e in read_log(log))["body"] == 4

    async def test_an_attempt_that_never_committed_leaves_no_context(self, backend: Backend,
                                                                    tmp_path: Path) -> None:
        """An attempt dying in its commit leaves no context for its re-execution to read."""
        engine, client = self._engine(backend), Client(backend, contract_app)
        log = tmp_path / "log"
        run_id = await client.start("contract-loop", {"log": str(log)})
        commit, died = backend.coordination.commit, list[str]()

        async def dies_in_first_body_commit(transition: Transition) -> Committed:
            if not died and transition.completion is not None and transition.completion.node_id == "body":
                died.append(transition.job_key)
                raise _Interrupted("the worker died while committing")
            return await commit(transition)

        backend.coordination.commit = dies_in_first_body_commit  # type: ignore[method-assign]
        deadline = time.monotonic() + 30 + self.visibility_timeout
        while (await client.status(run_id)).status == "running" and time.monotonic() < deadline:
            for delivery in await backend.queue.dequeue(1, 0.2):
                with contextlib.suppress(_Interrupted):  # its message comes back after the visibility timeout
                    await engine.handle(delivery)
        result = await client.status(run_id)
        assert died and result.status == "completed", result.errors
        # the attempt that died counted 1 without committing: its re-execution must count 1 again
        assert result.context["count"] == 4 and result.outputs["after"] == 4
        assert Counter(e["node"] for e in read_log(log))["body"] == 5

    async def test_context_is_durable_before_successors_can_fire(self, backend: Backend) -> None:
        """A node's context writes are durable before its successors can fire."""
        client = Client(backend, contract_app)
        run_id = await client.start("contract-none", {"value": 3})
        interrupted = self._engine(backend, fault=_interrupt_at("after_commit"))
        (delivery,) = await receive(backend, 1)
        with pytest.raises(_Interrupted):
            await interrupted.handle(delivery)  # the start node committed; its worker "died" right after
        context = await backend.context.get_all(run_id)
        assert context["_outputs.s"] == 3 and context["value"] == 3
        record = await _drive(self._engine(backend), backend, run_id, timeout=30 + self.visibility_timeout)
        assert record.status == "completed"
        assert (await client.status(run_id)).outputs == {"s": 3, "n": None, "e": None}

    async def test_reconciler_finishes_a_run_whose_work_is_done(self, backend: Backend) -> None:
        """A run whose last job committed but was never published is finished by the reconciler. (A backend that
        ``ends`` runs with their last commit never leaves that state, but for a commit not given the end: a
        recovery's, or a worker's that does not use it; the worker that dies here is such a one.)"""
        client = Client(backend, contract_app)
        run_id = await client.start("contract-none", {"value": 3})
        engine = self._engine(backend)
        interrupted = self._engine(_without_ends(backend), fault=_interrupt_at("after_enqueue"))
        handled: list[str] = []
        while "e" not in handled:
            for delivery in await receive(backend, 1):
                handled.append(delivery.job.node_id)
                if delivery.job.node_id == "e":  # the last job commits, then its worker dies unpublished
                    with pytest.raises(_Interrupted):
                        await interrupted.handle(delivery)
                else:
                    await engine.handle(delivery)
        assert (await backend.status.get(run_id)).status == "running"  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        stats = await Reconciler(backend, stalled_threshold_seconds=0.01).run()
        assert (stats.stalled_runs, stats.reconciled_runs, stats.failed_runs) == (1, 1, 0)
        record = await _drive(engine, backend, run_id)
        assert record.status == "completed", record.errors
        assert (await client.status(run_id)).outputs == {"s": 3, "n": None, "e": None}

    async def test_reconciler_publishes_awaiting_when_a_parked_wait_was_not(self, backend: Backend) -> None:
        """A wait parked by a worker that died unpublished is published as awaiting."""
        engine, client = self._engine(backend), Client(backend, contract_app)
        run_id = await client.start("contract-wait", {"value": 1})
        await engine.handle((await receive(backend, 1))[0])
        (wait,) = await receive(backend, 1)
        await backend.coordination.park(run_id, wait.job.key)  # its worker parked the wait, then died
        await backend.queue.ack(wait)
        assert (await backend.status.get(run_id)).status == "running"  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        stats = await Reconciler(backend, stalled_threshold_seconds=0.01).run()
        assert (stats.stalled_runs, stats.reconciled_runs, stats.failed_runs) == (1, 1, 0)
        record = await _drive(engine, backend, run_id, until=lambda r: r.status != "running")
        assert record.status == "awaiting" and record.awaiting == [{"node_id": "approval", "visit": 0}]
        await client.resume(run_id, action="approve", output={"by": "ada"})
        assert (await _drive(engine, backend, run_id)).status == "completed"
        assert (await client.status(run_id)).outputs["approved"] == {"by": "ada"}

    async def test_a_wait_delivered_again_after_its_resume_is_not_parked_again(self, backend: Backend) -> None:
        """A wait's delivery from before its resume does not park the run again."""
        engine, client = self._engine(backend), Client(backend, contract_app)
        run_id = await client.start("contract-wait", {"value": 1})
        await engine.handle((await receive(backend, 1))[0])
        (wait,) = await receive(backend, 1)
        await engine.handle(wait)
        assert (await backend.status.get(run_id)).status == "awaiting"  # type: ignore[union-attr]
        await backend.queue.enqueue([wait.job])  # the delivery from before the resume comes back first
        await client.resume(run_id, action="reject", output={"by": "bob"})
        history: list[str] = []

        async def watch(delivery: Delivery) -> None:
            history.append((await backend.status.get(run_id)).status)  # type: ignore[union-attr]

        assert (await _drive(engine, backend, run_id, after=watch)).status == "completed"
        assert "awaiting" not in history
        assert (await client.status(run_id)).outputs["rejected"] == {"by": "bob"}

    async def test_a_subflow_whose_start_died_is_started_again(self, backend: Backend) -> None:
        """A worker that died between a child run's record and its first jobs: the reconciler leaves the child
        alone and the parent's redelivered subflow job finishes its start, so the run still completes."""
        engine, client = self._engine(backend), Client(backend, contract_app)
        run_id = await client.start("contract-parent", {"value": 40})
        coordination, died = backend.coordination, list[str]()
        schedule, start = coordination.schedule, coordination.start

        async def dies_scheduling_the_child(run: str, jobs: Sequence[Job]) -> list[Job]:
            if not died and run != run_id:
                died.append(run)
                raise _Interrupted("the worker died starting the child run")
            return await schedule(run, jobs)

        async def dies_after_the_childs_record(record: RunRecord, jobs: Sequence[Job]) -> bool:
            # a store that starts a run in one step never leaves a record without its jobs; a worker that makes
            # the 3 steps (an older version, a start with an initial context) can: its record, then its death
            if not died:
                died.append(record.run_id)
                await backend.status.create(record)
                raise _Interrupted("the worker died starting the child run")
            return await start(record, jobs)

        coordination.schedule = dies_scheduling_the_child  # type: ignore[method-assign,assignment]
        coordination.start = dies_after_the_childs_record  # type: ignore[method-assign]
        deadline = time.monotonic() + 30 + self.visibility_timeout
        reconciled = False
        while (await client.status(run_id)).status == "running" and time.monotonic() < deadline:
            for delivery in await backend.queue.dequeue(1, 0.2):
                with contextlib.suppress(_Interrupted):  # its message comes back after the visibility timeout
                    await engine.handle(delivery)
            if died and not reconciled:
                await asyncio.sleep(0.05)
                stats = await Reconciler(backend, stalled_threshold_seconds=0.01).run()
                assert stats.failed_runs == 0, "the reconciler failed a child its parent can start again"
                reconciled = True
        result = await client.status(run_id)
        assert died and result.status == "completed", result.errors
        assert result.outputs["sub"] == 42 and result.outputs["after"] == 42

    async def test_reconciler_fails_only_an_interrupted_start(self, backend: Backend, run_prefix: str) -> None:
        """A run with a record but no coordination state (an interrupted start) is failed, saying so."""
        await backend.status.create(RunRecord(run_prefix, "contract-none", status="running", version="1"))
        await asyncio.sleep(0.05)
        stats = await Reconciler(backend, stalled_threshold_seconds=0.01).run()
        assert (stats.stalled_runs, stats.reconciled_runs, stats.failed_runs) == (1, 0, 1)
        record = await backend.status.get(run_prefix)
        assert record is not None and record.status == "failed"
        assert "start was interrupted" in record.errors[-1]["message"]

    async def test_reconciler_pages_past_runs_it_skips(self, backend: Backend) -> None:
        """The reconciler pages past the runs it skips and still reaches a stalled one behind them."""
        client = Client(backend, contract_app)
        async with InProcessWorkers(backend, count=1) as w:
            waiting = [await w.client.start("contract-wait", {"value": i}) for i in range(5)]
            for run_id in waiting:
                assert (await w.client.wait(run_id, 30)).status == "awaiting"
        lost = client.engine.queue.enqueue

        async def drop(jobs: Any, delay: float = 0.0) -> None:
            return None

        client.engine.queue.enqueue = drop  # type: ignore[method-assign]  # the start message is lost
        stalled = await client.start("contract-none", {"value": 1})
        client.engine.queue.enqueue = lost  # type: ignore[method-assign]
        await asyncio.sleep(0.05)
        stats = await Reconciler(backend, stalled_threshold_seconds=0.01, batch_size=2).run()
        assert stats.scanned == 6 and (stats.stalled_runs, stats.reconciled_runs) == (1, 1)
        record = await _drive(self._engine(backend), backend, stalled)
        assert record.status == "completed"

    async def test_second_delivery_of_a_job_in_hand_is_not_run_again(self, backend: Backend,
                                                                      tmp_path: Path) -> None:
        """A second delivery of a job its engine is running is given back, not run beside it."""
        engine, client = self._engine(backend), Client(backend, contract_app)
        log = tmp_path / "log"
        run_id = await client.start("contract-long", {"log": str(log)})
        (start,) = await receive(backend, 1)
        await engine.handle(start)
        (slow,) = await receive(backend, 1)
        first = asyncio.create_task(engine.handle(slow))
        await asyncio.sleep(0.5)
        await backend.queue.enqueue([slow.job])  # a recovery re-fired the job while it runs
        (again,) = await receive(backend, 1)
        await engine.handle(again)  # the same engine: handed back, not run beside the first
        await first
        record = await _drive(engine, backend, run_id)
        assert record.status == "completed"
        assert Counter(e["node"] for e in read_log(log))["slow"] == 1


# ====================================================================== crash tests
class _Process:
    def __init__(self, backend: tuple[str, dict[str, Any]], events: Path, *extra: str) -> None:
        name, options = backend
        env = {**os.environ, "FLOWCRAFT_TEST_EVENTS": str(events)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowcraft.testing.worker", "--backend", name, "--options", json.dumps(options),
             "--lease", "2", *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_killed(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError("the armed worker never reached its fault point") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def _healthy_worker(backend: tuple[str, dict[str, Any]], events: Path) -> Iterator[_Process]:
    process = _Process(backend, events, "--concurrency", "4")
    try:
        yield process
    finally:
        process.stop()


class CrashContract(_Base):
    """SIGKILL a real worker process at each step of job handling; a fresh worker must finish the run."""

    @pytest.mark.parametrize("point", FAULT_POINTS)
    @pytest.mark.parametrize("at", [1, 5])
    async def test_worker_killed_mid_job(self, backend: Backend, worker_options: tuple[str, dict[str, Any]],
                                         tmp_path: Path, point: str, at: int) -> None:
        """A worker SIGKILLed at each fault point leaves a run a fresh worker finishes, re-running one job at most."""
        if MULTIPROCESS not in self.capabilities:
            pytest.skip("documented gap: this backend cannot be shared by worker processes")
        client = Client(backend, contract_app)
        log, events = tmp_path / "log", tmp_path / "events"
        run_id = await client.start("contract-diamond", {"log": str(log), "value": 1})
        armed = _Process(worker_options, events, "--fault", point, "--fault-at", str(at))
        code = await asyncio.to_thread(armed.wait_killed, 60)
        assert code == -signal.SIGKILL
        with _healthy_worker(worker_options, events):
            result = await client.wait(run_id, 60)
        assert result.status == "completed", result.errors
        outputs = result.outputs
        assert outputs["j"]["received"] == {p: outputs[p] for p in ("p1", "p2", "p3")}
        assert outputs["e"] == outputs["j"]
        finishes = [e for e in read_log(events) if e["event"] == "run:finish" and e["run"] == run_id]
        assert [e["status"] for e in finishes] == ["completed"]
        executions = Counter(e["node"] for e in read_log(log))
        assert set(executions) == {"s", "p1", "p2", "p3", "j", "e"}
        # execution is at-least-once: only the job the worker died in may have run a second time
        assert sum(count - 1 for count in executions.values()) <= 1, executions


class CapabilitiesContract(_Base):
    """Each fast path a backend declares (``Backend.capabilities``) behaves as declared; a test is skipped
    when its backend does not declare the capability (then the engine does that step itself)."""

    @staticmethod
    def _declared(backend: Backend, capability: str) -> None:
        if not getattr(backend.capabilities, capability):
            pytest.skip(f"backend {backend.name!r} does not declare {capability}")

    async def test_applies_context_writes_the_context_with_the_record_only(self, backend: Backend,
                                                                           run_prefix: str) -> None:
        """applies_context: a commit's context writes are readable right after it, and a replay of the same
        completion (recovery) writes none again (a later node may have changed the key since)."""
        self._declared(backend, "applies_context")
        job = _job(run_prefix)
        await backend.coordination.schedule(run_prefix, [job])
        completion = Completion("n", output=1, action=None, token="t1", context_updates={"k": "first", "gone": None},
                                context_deletes=("old",))
        await backend.context.apply(run_prefix, {"old": 0})
        await backend.coordination.commit(Transition(run_prefix, job.key, completion=completion, finish=True))
        assert await backend.context.get_many(run_prefix, ["k", "gone", "old"]) == {"k": "first", "gone": None}
        await backend.context.apply(run_prefix, {"k": "later"})
        await backend.coordination.commit(Transition(run_prefix, job.key, completion=completion, finish=True,
                                                     recovery=True))
        assert await backend.context.get_many(run_prefix, ["k"]) == {"k": "later"}

    async def test_prefetches_status_fills_record_and_lease(self, backend: Backend, run_prefix: str) -> None:
        """prefetches_status: receive returns the job's run record and takes its lease for the owner."""
        self._declared(backend, "prefetches_status")
        await backend.status.create(RunRecord(run_prefix, "bp", input={"x": 1}))
        job = _job(run_prefix)
        await backend.coordination.schedule(run_prefix, [job])
        await backend.queue.enqueue([job])
        deadline = time.monotonic() + 10
        got: list[Delivery] = []
        while not got and time.monotonic() < deadline:
            got = await backend.queue.receive(1, 1.0, "w1", 30)
        assert len(got) == 1 and got[0].prefetched
        delivery = got[0]
        assert delivery.record is not None and delivery.record.run_id == run_prefix
        assert delivery.record.input == {"x": 1}
        assert delivery.begin is not None and delivery.begin.lease and delivery.begin.state == "pending"
        assert not (await backend.coordination.begin(job, "w2", 30)).lease  # the lease is w1's
        await backend.queue.ack(delivery)

    async def test_prefetches_status_takes_no_lease_on_a_settled_runs_job(self, backend: Backend,
                                                                          run_prefix: str) -> None:
        """prefetches_status: a job of a run that has settled is received with its record and no lease (the engine
        only acks it), so nothing holds the job: a retry of the failed run is not refused meanwhile."""
        self._declared(backend, "prefetches_status")
        await backend.status.create(RunRecord(run_prefix, "bp"))
        job = _job(run_prefix)
        await backend.coordination.schedule(run_prefix, [job])
        await backend.queue.enqueue([job])
        assert await backend.status.transition(run_prefix, ("running",), "failed", {}) is not None
        deadline = time.monotonic() + 10
        got: list[Delivery] = []
        while not got and time.monotonic() < deadline:
            got = await backend.queue.receive(1, 1.0, "w1", 30)
        assert len(got) == 1
        delivery = got[0]
        assert delivery.record is not None and delivery.record.status == "failed"
        assert delivery.begin is None
        assert [held.leased for held in await backend.coordination.jobs(run_prefix, "pending")] == [False]
        assert (await backend.coordination.begin(job, "w2", 30)).lease
        await backend.queue.ack(delivery)

    async def test_dispatches_puts_fired_jobs_on_the_queue(self, backend: Backend, run_prefix: str) -> None:
        """dispatches: the jobs a commit fires are delivered by the queue without the engine enqueueing them."""
        self._declared(backend, "dispatches")
        job, successor = _job(run_prefix, "a"), _job(run_prefix, "b")
        await backend.coordination.schedule(run_prefix, [job])
        committed = await backend.coordination.commit(Transition(
            run_prefix, job.key, completion=Completion("a", output=1, action=None, token="t1"),
            arrivals=(Arrival(successor, "a", arrived=True, contribution=1, expected=("a",)),), finish=True))
        assert [j.key for j in committed.fired] == [successor.key]
        got = await receive(backend, 1)
        assert [(d.job.run_id, d.job.node_id) for d in got] == [(run_prefix, "b")]
        await backend.queue.ack(got[0])

    async def test_releases_lease_drops_the_finishing_owners_lease(self, backend: Backend, run_prefix: str) -> None:
        """releases_lease: after a finishing commit by its owner, another worker can take the job's lease at once;
        a commit that does not finish the job leaves the lease where it was."""
        self._declared(backend, "releases_lease")
        job, other = _job(run_prefix, "a"), _job(run_prefix, "b")
        await backend.coordination.schedule(run_prefix, [job, other])
        assert (await backend.coordination.begin(job, "w1", 30)).lease
        assert (await backend.coordination.begin(other, "w1", 30)).lease
        await backend.coordination.commit(Transition(
            run_prefix, job.key, completion=Completion("a", output=1, token="t1"), finish=True, owner="w1"))
        await backend.coordination.commit(Transition(
            run_prefix, other.key, completion=Completion("b", output=1, token="t2"), finish=False, owner="w1"))
        assert (await backend.coordination.begin(job, "w2", 30)).lease
        assert not (await backend.coordination.begin(other, "w2", 30)).lease

    async def test_acks_acks_with_a_commit_that_leaves_jobs_pending(self, backend: Backend, run_prefix: str) -> None:
        """acks: a finishing commit given its delivery's receipt acks it when jobs remain pending (it never comes
        back); one that leaves nothing pending does not (its job comes back once its visibility lapses)."""
        self._declared(backend, "acks")
        first, last = _job(run_prefix, "a"), _job(run_prefix, "b")
        await backend.coordination.schedule(run_prefix, [first])
        await backend.queue.enqueue([first])
        [delivery] = await receive(backend, 1)
        committed = await backend.coordination.commit(Transition(
            run_prefix, first.key, completion=Completion("a", output=1, token="t1"),
            arrivals=(Arrival(last, "a", arrived=True, contribution=1, expected=("a",)),), finish=True, owner="w1",
            receipt=delivery.receipt))
        assert committed.conflict is None and committed.pending == 1
        [fired] = await receive(backend, 1)
        assert fired.job.node_id == "b"
        committed = await backend.coordination.commit(Transition(
            run_prefix, last.key, completion=Completion("b", output=2, token="t2"), finish=True, owner="w1",
            receipt=fired.receipt))
        assert committed.pending == 0
        await asyncio.sleep(self.visibility_timeout + 0.5)  # both visibilities lapsed
        back = await receive(backend, 2, timeout=min(1.0, self.visibility_timeout / 2))  # b comes back once
        assert [d.job.node_id for d in back] == ["b"]
        await backend.queue.ack(back[0])

    async def test_continues_hands_fired_jobs_to_the_committing_worker(self, backend: Backend,
                                                                      run_prefix: str) -> None:
        """continues: a commit hands at most ``continue_up_to`` fired jobs to its owner, already received (run
        record read, lease taken, invisible on the queue), and queues the rest; a handed job whose worker
        never acks it comes back once its visibility lapses, and its receipt acks it."""
        self._declared(backend, "continues")
        await backend.status.create(RunRecord(run_prefix, "bp", input={"x": 1}))
        job, left, right = _job(run_prefix, "a"), _job(run_prefix, "b"), _job(run_prefix, "c")
        await backend.coordination.schedule(run_prefix, [job])
        assert (await backend.coordination.begin(job, "w1", 30)).lease
        committed = await backend.coordination.commit(Transition(
            run_prefix, job.key, completion=Completion("a", output=1, token="t1"),
            arrivals=tuple(Arrival(s, "a", arrived=True, contribution=1, expected=("a",)) for s in (left, right)),
            finish=True, owner="w1", continue_up_to=1, lease_seconds=30))
        assert sorted(j.node_id for j in committed.fired) == ["b", "c"]
        assert len(committed.continued) == 1
        handed = committed.continued[0]
        queued = "c" if handed.job.node_id == "b" else "b"
        assert handed.job.run_id == run_prefix and handed.deliveries == 1
        assert handed.begin is not None and handed.begin.lease and handed.begin.state == "pending"
        assert handed.record is None or handed.record.input == {"x": 1}  # (None: the engine reads it)
        assert not (await backend.coordination.begin(handed.job, "w2", 30)).lease  # the lease is w1's
        if not backend.capabilities.dispatches:  # the engine queues what was not handed over
            await backend.queue.enqueue([j for j in committed.fired if j.key != handed.job.key])
        got = await receive(backend, 2, timeout=1.0)  # within the handed job's visibility
        assert [d.job.node_id for d in got] == [queued]
        await backend.queue.ack(got[0])
        await asyncio.sleep(self.visibility_timeout + 0.5)
        back = await receive(backend, 1)
        assert [d.job.node_id for d in back] == [handed.job.node_id]
        await backend.queue.ack(back[0])
        assert await backend.queue.dequeue(1, 0.2) == []
        await backend.queue.ack(handed)  # a late ack of a delivery received again since is harmless

    async def test_notifies_wakes_a_waiter_soon_after_a_transition(self, backend: Backend, run_prefix: str) -> None:
        """notifies: a client waiting as ``Client.wait`` does (re-read, then wait_for_change with a long timeout)
        sees a status transition within a second; a wait may return early ("may have changed"), but a store that
        only sleeps out the timeout fails this."""
        self._declared(backend, "notifies")
        await backend.status.create(RunRecord(run_prefix, "bp"))
        seen_at: list[float] = []

        async def wait_until_completed() -> None:
            while True:
                record = await backend.status.get(run_prefix)
                if record is not None and record.status == "completed":
                    seen_at.append(time.monotonic())
                    return
                await backend.status.wait_for_change(run_prefix, 10.0)

        waiter = asyncio.create_task(wait_until_completed())
        await asyncio.sleep(0.5)  # the waiter is listening (and past any early first return)
        assert not waiter.done()
        changed_at = time.monotonic()
        assert await backend.status.transition(run_prefix, ["running"], "completed", {}) is not None
        await asyncio.wait_for(waiter, 5.0)
        assert seen_at[0] - changed_at < 1.0

    async def test_writes_context_writes_with_a_winning_transition_only(self, backend: Backend,
                                                                       run_prefix: str) -> None:
        """writes_context: ``transition_with_context`` writes its context values with a transition that wins
        (readable as soon as the new status is) and none with one that loses; of concurrent ones exactly one
        wins, and the context holds the winner's values."""
        self._declared(backend, "writes_context")
        status, context = backend.status, backend.context
        await status.create(RunRecord(run_prefix, "bp"))
        result = {"x": [1, 2], "none": None}
        won = await status.transition_with_context(run_prefix, ["running"], "completed", {"awaiting": []},
                                                   context={"_result": result, "k": None})
        assert won is not None and won.status == "completed"
        assert await context.get_many(run_prefix, ["_result", "k"]) == {"_result": result, "k": None}
        assert await status.transition_with_context(run_prefix, ["running", "awaiting"], "failed", {},
                                                    context={"_result": "late", "other": 1}) is None
        assert await context.get_many(run_prefix, ["_result", "other"]) == {"_result": result}
        final = await status.get(run_prefix)
        assert final is not None and final.status == "completed"

        racing = run_prefix + "-race"
        await status.create(RunRecord(racing, "bp"))
        results = await asyncio.gather(*(
            status.transition_with_context(racing, ["running"], "awaiting",
                                           {"awaiting": [{"node_id": f"n{i}", "visit": 0}]},
                                           context={"_result": f"n{i}"})
            for i in range(6)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await context.get_many(racing, ["_result"]) == {"_result": winners[0].awaiting[0]["node_id"]}


    async def test_starts_writes_what_the_three_steps_write(self, backend: Backend, run_prefix: str) -> None:
        """starts: ``CoordinationStore.start`` leaves the record, the pending jobs and the queued deliveries the
        3-step start (``StatusStore.create``, ``schedule``, ``Queue.enqueue``) leaves; the run has activity."""
        self._declared(backend, "starts")
        stepped, started = run_prefix + "-3", run_prefix + "-1"
        records = {run_id: RunRecord(run_id, "bp", version="1", blueprint_hash="h", input={"x": [1, None]},
                                     parent={"run_id": "p", "node_id": "sub", "visit": 0})
                   for run_id in (stepped, started)}
        jobs = {run_id: [_job(run_id, node, version="1", input={"x": [1, None]}, has_input=True,
                              payload={"trace": {"traceparent": "00-t"}}) for node in ("a", "b")]
                for run_id in (stepped, started)}
        assert await backend.status.create(records[stepped])
        await backend.queue.enqueue(await backend.coordination.schedule(stepped, jobs[stepped]))
        before = time.time()
        assert await backend.coordination.start(records[started], jobs[started])

        def comparable(record: RunRecord | None) -> dict[str, Any]:
            assert record is not None
            return {k: v for k, v in vars_of(record).items() if k not in ("run_id", "created_at", "updated_at")}

        made = {run_id: await backend.status.get(run_id) for run_id in (stepped, started)}
        assert comparable(made[started]) == comparable(made[stepped])
        record = made[started]
        assert record is not None and record.status == "running"
        assert before - 1 <= record.created_at <= time.time() + 1 and record.updated_at >= record.created_at
        for run_id in (stepped, started):
            pending = await backend.coordination.jobs(run_id)
            assert sorted((p.job.node_id, p.job.input, p.job.payload, p.leased) for p in pending) == [
                ("a", {"x": [1, None]}, {"trace": {"traceparent": "00-t"}}, False),
                ("b", {"x": [1, None]}, {"trace": {"traceparent": "00-t"}}, False)]
            assert await backend.coordination.activity(run_id) is not None
        got = await receive(backend, 4)
        assert sorted((d.job.run_id, d.job.node_id) for d in got) == sorted(
            (run_id, node) for run_id in (stepped, started) for node in ("a", "b"))
        assert all(d.job.payload == {"trace": {"traceparent": "00-t"}} and d.job.input == {"x": [1, None]}
                   for d in got)
        for delivery in got:
            await backend.queue.ack(delivery)

    async def test_starts_a_second_start_of_an_id_changes_nothing(self, backend: Backend, run_prefix: str) -> None:
        """starts: a start of a run id that exists (started in one step or created by ``StatusStore.create``)
        returns False and writes nothing: no record change, no job, no delivery, no activity."""
        self._declared(backend, "starts")
        first = RunRecord(run_prefix, "bp", version="1", input=1)
        assert await backend.coordination.start(first, [_job(run_prefix, "a")])
        [delivery] = await receive(backend, 1)
        await backend.queue.ack(delivery)
        before = await backend.status.get(run_prefix)
        assert not await backend.coordination.start(RunRecord(run_prefix, "other", version="2", input=2),
                                                    [_job(run_prefix, "a"), _job(run_prefix, "z")])
        assert await backend.status.get(run_prefix) == before
        assert [p.job.node_id for p in await backend.coordination.jobs(run_prefix)] == ["a"]

        created = run_prefix + "-created"  # a record without jobs (a 3-step start that died after its record)
        assert await backend.status.create(RunRecord(created, "bp", version="1"))
        assert not await backend.coordination.start(RunRecord(created, "bp", version="1"), [_job(created, "a")])
        assert await backend.coordination.jobs(created) == []
        assert await backend.coordination.activity(created) is None  # the reconciler still sees the dead start
        assert await backend.queue.dequeue(4, 0.3) == []

    async def test_starts_of_one_id_at_once_have_one_winner(self, backend: Backend, run_prefix: str) -> None:
        """starts: of concurrent starts of one run id exactly one writes, and its jobs are queued once; a crash
        cannot leave a record without its jobs, since the record is written in the same step as they are."""
        self._declared(backend, "starts")
        results = await asyncio.gather(*(
            backend.coordination.start(RunRecord(run_prefix, "bp", input=i), [_job(run_prefix, f"n{i}")])
            for i in range(5)))
        assert results.count(True) == 1
        winner = results.index(True)
        record = await backend.status.get(run_prefix)
        assert record is not None and record.input == winner
        assert [p.job.node_id for p in await backend.coordination.jobs(run_prefix)] == [f"n{winner}"]
        got = await receive(backend, 1)
        assert [d.job.node_id for d in got] == [f"n{winner}"]
        await backend.queue.ack(got[0])
        assert await backend.queue.dequeue(4, 0.3) == []

    async def test_starts_runs_a_client_start_to_completion(self, backend: Backend) -> None:
        """starts: a client's start takes the one step (no separate create, schedule or enqueue) and the run
        completes; a start with an initial context takes the 3 steps and completes too."""
        self._declared(backend, "starts")
        client, calls = Client(backend, contract_app), Counter[str]()
        for component, method in ((backend.status, "create"), (backend.coordination, "schedule"),
                                  (backend.queue, "enqueue"), (backend.coordination, "start")):
            setattr(component, method, _counting(getattr(component, method), calls, method))
        run_id = await client.start("contract-none", {"value": 1})
        assert calls == {"start": 1}
        calls.clear()
        with_context = await client.start("contract-none", {"value": 1}, context={"k": 1})
        assert calls == {"create": 1, "schedule": 1, "enqueue": 1}
        async with InProcessWorkers(backend, 1):
            for started in (run_id, with_context):
                result = await client.wait(started, timeout=30)
                assert result.status == "completed", result.errors

    async def _ending_commit(self, backend: Backend, run_id: str, node: str, token: str, *, end: RunEnd,
                             receipt: Any = None, recovery: bool = False) -> Committed:
        """Commit ``node``'s job of ``run_id`` as the finishing commit of its worker "w1", given ``end``."""
        return await backend.coordination.commit(Transition(
            run_id, _job(run_id, node).key, completion=Completion(node, output=token, token=token), finish=True,
            recovery=recovery, owner="w1", receipt=receipt, end=end))

    async def test_ends_ends_the_run_with_the_commit_that_leaves_nothing_pending(self, backend: Backend,
                                                                                run_prefix: str) -> None:
        """ends: a finishing commit given ``end`` that leaves nothing pending or parked moves the record to
        ``completed`` with the end's fields and writes ``_result`` in the same step (``Committed.ended``: the
        new record), wakes a waiting client as a transition does and, with ``acks``, acks the delivery (it never
        comes back); one that leaves a job pending ends nothing. A run awaiting ends too (an active status)."""
        self._declared(backend, "ends")
        status, context = backend.status, backend.context
        await status.create(RunRecord(run_prefix, "bp", version="1", input={"x": 1}))
        first, last = _job(run_prefix, "a"), _job(run_prefix, "b")
        await backend.coordination.schedule(run_prefix, [first])
        await backend.queue.enqueue([first])
        [delivery] = await receive(backend, 1)
        result = {"r": [1, None], "s": "ü"}
        committed = await backend.coordination.commit(Transition(
            run_prefix, first.key, completion=Completion("a", output=1, token="t1"),
            arrivals=(Arrival(last, "a", arrived=True, contribution=1, expected=("a",)),), finish=True, owner="w1",
            receipt=delivery.receipt, end=RunEnd(result="early", fields={"awaiting": []})))
        assert committed.conflict is None and committed.pending == 1 and committed.ended is None
        before = await status.get(run_prefix)
        assert before is not None and before.status == "running"
        assert await context.get_many(run_prefix, ["_result"]) == {}
        if not backend.capabilities.acks:
            await backend.queue.ack(delivery)
        [fired] = await receive(backend, 1)
        assert fired.job.node_id == "b"

        seen_at: list[float] = []

        async def wait_until_completed() -> None:  # as ``Client.wait`` does: watch, read, wait
            await status.watch(run_prefix)
            while True:
                record = await status.get(run_prefix)
                if record is not None and record.status == "completed":
                    seen_at.append(time.monotonic())
                    return
                await status.wait_for_change(run_prefix, 10.0)

        waiter = asyncio.create_task(wait_until_completed())
        await asyncio.sleep(0.5)  # the waiter is listening
        assert not waiter.done()
        changed_at = time.monotonic()
        committed = await self._ending_commit(backend, run_prefix, "b", "t2", receipt=fired.receipt,
                                              end=RunEnd(result=result, fields={"awaiting": []}))
        assert committed.conflict is None and committed.pending == 0 and committed.parked == 0
        ended = committed.ended
        assert ended is not None and ended.status == "completed" and ended.awaiting == []
        stored = await status.get(run_prefix)
        assert stored is not None and vars_of(stored) == vars_of(ended)
        assert ended.updated_at >= before.updated_at
        assert {k: v for k, v in vars_of(ended).items() if k not in ("status", "updated_at")} == {
            k: v for k, v in vars_of(before).items() if k not in ("status", "updated_at")}
        assert await context.get_many(run_prefix, ["_result"]) == {"_result": result}
        if backend.capabilities.notifies:
            await asyncio.wait_for(waiter, 5.0)
            assert seen_at[0] - changed_at < 1.0
        else:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if backend.capabilities.acks:  # acked with the commit: it never comes back
            await asyncio.sleep(self.visibility_timeout + 0.5)
            assert await receive(backend, 1, timeout=min(1.0, self.visibility_timeout / 2)) == []
        else:
            await backend.queue.ack(fired)

        awaiting = run_prefix + "-aw"  # a run awaiting (a resumed wait's successor is its last job) ends too
        await status.create(RunRecord(awaiting, "bp", status="awaiting",
                                      awaiting=[{"node_id": "w", "visit": 0}]))
        await backend.coordination.schedule(awaiting, [_job(awaiting, "a")])
        committed = await self._ending_commit(backend, awaiting, "a", "t3",
                                              end=RunEnd(result=None, fields={"awaiting": []}))
        assert committed.ended is not None and committed.ended.status == "completed"
        assert committed.ended.awaiting == []
        assert await context.get_many(awaiting, ["_result"]) == {"_result": None}

    async def test_ends_nothing_while_jobs_are_pending_or_parked(self, backend: Backend, run_prefix: str) -> None:
        """ends: a commit that leaves a job pending, or one parked (a wait), ends nothing: ``ended`` is None, the
        status and the context are unchanged."""
        self._declared(backend, "ends")
        pending, parked = run_prefix + "-p", run_prefix + "-w"
        for run_id in (pending, parked):
            await backend.status.create(RunRecord(run_id, "bp"))
            await backend.coordination.schedule(run_id, [_job(run_id, "a"), _job(run_id, "w")])
        await backend.coordination.park(parked, _job(parked, "w").key)
        for run_id, counts in ((pending, (1, 0)), (parked, (0, 1))):
            before = await backend.status.get(run_id)
            committed = await self._ending_commit(backend, run_id, "a", "t1",
                                                  end=RunEnd(result=1, fields={"awaiting": []}))
            assert (committed.pending, committed.parked) == counts and committed.ended is None
            assert await backend.status.get(run_id) == before
            assert await backend.context.get_many(run_id, ["_result"]) == {}

    async def test_ends_nothing_of_a_settled_run(self, backend: Backend, run_prefix: str) -> None:
        """ends: the commit of a cancelled or failed run's last job ends nothing (only an active run ends): the
        record and the context stay as they were."""
        self._declared(backend, "ends")
        for settled in ("cancelled", "failed"):
            run_id = f"{run_prefix}-{settled}"
            await backend.status.create(RunRecord(run_id, "bp"))
            await backend.coordination.schedule(run_id, [_job(run_id, "a")])
            assert await backend.status.transition(run_id, ["running"], settled, {}) is not None
            before = await backend.status.get(run_id)
            committed = await self._ending_commit(backend, run_id, "a", "t1",
                                                  end=RunEnd(result=1, fields={"awaiting": []}))
            assert committed.pending == 0 and committed.ended is None
            assert await backend.status.get(run_id) == before
            assert await backend.context.get_many(run_id, ["_result"]) == {}

    async def test_ends_once_a_replay_or_a_conflict_ends_nothing(self, backend: Backend, run_prefix: str) -> None:
        """ends: the same commit delivered again (the same completion, as after a redelivery, and as a recovery)
        ends nothing a second time: ``ended`` is None and the record and ``_result`` are unchanged; a conflicting
        completion (another attempt's) ends nothing either."""
        self._declared(backend, "ends")
        await backend.status.create(RunRecord(run_prefix, "bp"))
        await backend.coordination.schedule(run_prefix, [_job(run_prefix, "a")])
        committed = await self._ending_commit(backend, run_prefix, "a", "t1",
                                              end=RunEnd(result="first", fields={"awaiting": []}))
        assert committed.ended is not None
        ended = await backend.status.get(run_prefix)
        for recovery in (False, True):
            again = await self._ending_commit(backend, run_prefix, "a", "t1", recovery=recovery,
                                              end=RunEnd(result="again", fields={"awaiting": [{"x": 1}]}))
            assert again.conflict is None and again.pending == 0 and again.ended is None
            assert await backend.status.get(run_prefix) == ended
            assert await backend.context.get_many(run_prefix, ["_result"]) == {"_result": "first"}

        conflicting = run_prefix + "-c"  # the first attempt committed without the end (a worker not using it)
        await backend.status.create(RunRecord(conflicting, "bp"))
        await backend.coordination.schedule(conflicting, [_job(conflicting, "a")])
        await backend.coordination.commit(Transition(conflicting, _job(conflicting, "a").key,
                                                     completion=Completion("a", output="t1", token="t1"),
                                                     finish=True, owner="w1"))
        before = await backend.status.get(conflicting)
        committed = await self._ending_commit(backend, conflicting, "a", "t2",
                                              end=RunEnd(result="t2", fields={"awaiting": []}))
        assert committed.conflict is not None and committed.conflict.token == "t1" and committed.ended is None
        assert await backend.status.get(conflicting) == before
        assert await backend.context.get_many(conflicting, ["_result"]) == {}

    async def test_ends_a_worker_stopped_after_the_ending_commit_leaves_the_run_as_one_delivery_would(
            self, backend: Backend, tmp_path: Path) -> None:
        """ends: a worker that dies right after the commit of a run's last job (the graph's only terminal node)
        leaves the run completed with its result, the end written once: the job's redelivery (if its delivery
        was not acked with the commit) is only acked. The engine ends a run so without any status transition."""
        self._declared(backend, "ends")
        client = Client(backend, contract_app)
        run_id = await client.start("contract-diamond", {"log": str(tmp_path / "log"), "value": 1})
        engine = Engine(contract_app, backend, options=EngineOptions(lease_seconds=5))
        dying = Engine(contract_app, backend, options=EngineOptions(lease_seconds=5),
                       fault=_interrupt_at("after_commit"))
        calls = Counter[str]()
        for method in ("transition", "transition_with_context"):
            setattr(backend.status, method, _counting(getattr(backend.status, method), calls, method))
        handled: list[str] = []
        while "e" not in handled:
            for delivery in await receive(backend, 1):
                handled.append(delivery.job.node_id)
                if delivery.job.node_id == "e":
                    with pytest.raises(_Interrupted):
                        await dying.handle(delivery)
                else:
                    await engine.handle(delivery)
        record = await backend.status.get(run_id)
        assert record is not None and record.status == "completed" and record.awaiting == []
        assert not calls  # the commit ended the run
        if not backend.capabilities.acks:  # the redelivery of the last job is only acked
            await asyncio.sleep(self.visibility_timeout + 0.5)
            for delivery in await receive(backend, 1):
                await engine.handle(delivery)
        else:
            await asyncio.sleep(self.visibility_timeout + 0.5)
            assert await receive(backend, 1, timeout=min(1.0, self.visibility_timeout / 2)) == []
        result = await client.wait(run_id, timeout=10)
        assert result.status == "completed" and result.output == result.outputs["j"] == result.outputs["e"]
        assert result.outputs["j"]["received"] == {p: result.outputs[p] for p in ("p1", "p2", "p3")}
        assert await backend.status.get(run_id) == record
        assert not calls


def vars_of(record: RunRecord) -> dict[str, Any]:
    """A record's fields by name."""
    return {name: getattr(record, name) for name in RunRecord.__dataclass_fields__}


def _counting(method: Callable[..., Awaitable[Any]], calls: Counter[str], name: str) -> Callable[..., Awaitable[Any]]:
    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return await method(*args, **kwargs)

    return counted


class PresenceContract(_Base):
    """Worker presence (``flowcraft.presence``): built on the context store alone, plus the queue's optional
    ``register_worker``/``unregister_worker`` hooks (no-ops unless the queue shows workers in its own tooling)."""

    async def test_published_blueprints_and_heartbeats_serve_a_client_without_the_app(
            self, backend: Backend, run_prefix: str) -> None:
        """A worker's published blueprint and heartbeat are read back by a client without the app, which starts
        a run of that version; once the worker retires, the blueprint is refused at start."""
        flow = Flow(f"{run_prefix}-bp", version="3")
        flow.node("a", lambda ctx: 1)
        app = App(flows=[flow])
        presence = WorkerPresence(backend, app, worker_id=f"{run_prefix}-w", concurrency=2, interval=1.0)
        await presence.start()
        await presence.beat(state="ready", in_flight=1, handled=2, failed=0)  # registers with the queue too
        client = Client(backend)  # not closed here: the fixture closes the backend
        [info] = [found for found in await client.workers() if found.worker_id == f"{run_prefix}-w"]
        assert (info.in_flight, info.handled, info.state, info.concurrency) == (1, 2, "ready", 2)
        run_id = await client.start(flow.id, {"x": 1})
        record = await backend.status.get(run_id)
        assert record is not None and (record.version, record.blueprint_hash) == ("3", app.content_hash(flow.id))
        assert [pending.job.node_id for pending in await backend.coordination.jobs(run_id)] == ["a"]
        await presence.retire()  # unregisters from the queue too
        assert all(found.worker_id != f"{run_prefix}-w" for found in await client.workers())
        with pytest.raises(ConfigError, match="no live worker has published blueprint"):
            await Client(backend).start(flow.id)


class BackendContract(QueueContract, ContextContract, StatusContract, CoordinationContract, WorkflowContract,
                      ReconcilerContract, RecoveryContract, CrashContract, CapabilitiesContract, PresenceContract):
    """Everything a backend must pass."""
