"""In-process backend: what ``FlowRuntime`` uses and what the engine's unit tests run against.

Every method body runs without awaiting in its critical section, so under one event loop each call is
atomic, like a Lua script or a SQL transaction on the real backends.

The four components live in one process, so ``memory_backend`` (the ``memory`` preset's factory) wires them
together and they take every fast path (``Capabilities``): a commit writes the context with the completion
record, drops the lease, puts the jobs it fires on the queue, acks the committed delivery and hands fired jobs
straight to the committing worker; a receive reads the run record and takes the lease; a run's result is
written with its final status; a run's record, first jobs and their queueing are one step (``starts``); the
commit that leaves nothing pending ends the run (``ends``). A component built alone takes none of them (the
engine then does each step itself).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from flowcraft.options import NoOptions, QueueOptions, parse_options
from flowcraft.spi import (
    ACTIVE_STATUSES,
    Backend,
    Begin,
    Committed,
    Completion,
    ContextStore,
    DeadLetter,
    Delivery,
    Job,
    JobState,
    LeaseTables,
    Queue,
    RunRecord,
    StatusStore,
    TablesCoordinationStore,
    Transition,
    apply_transition,
    ends_the_run,
    split_hand_over,
)

T = TypeVar("T")


@dataclass(slots=True)
class _Message:
    """A job delivered at least once: what the in-flight map keeps (by token, with its visibility deadline)."""

    job: Job
    deliveries: int = 0
    token: int = 0
    deadline: float = 0.0


class MemoryQueue(Queue):
    """Ready deque + delayed heap + in-flight map with visibility deadlines. A job never delivered waits as it
    is (no message object of its own until its first delivery).

    Once ``prefetch_with`` wired the backend's status and coordination stores (``memory_backend`` does),
    ``receive`` reads each delivery's run record and takes its lease in the same call (``prefetches_status``)."""

    name = "memory"
    Options = QueueOptions

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> MemoryQueue:
        return cls(parse_options(QueueOptions, options).visibility_timeout)

    def __init__(self, visibility_timeout: float = 30.0) -> None:
        self.visibility_timeout = visibility_timeout
        self._ready: deque[Job | _Message] = deque()
        self._delayed: list[tuple[float, int, Job | _Message]] = []
        self._inflight: dict[int, _Message] = {}
        self._dead: list[DeadLetter] = []
        self._dead_ids = 0
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # the coordination store weakly: it holds this queue, and a reference cycle would keep a dropped backend
        # (every run it kept) alive until the cyclic garbage collector's next full pass
        self._prefetch: tuple[MemoryStatusStore, weakref.ref[MemoryCoordinationStore]] | None = None

    def prefetch_with(self, status: MemoryStatusStore, coordination: MemoryCoordinationStore) -> None:
        """Read run records from ``status`` and take leases in ``coordination`` on ``receive``: stores of the same
        process (``memory_backend`` wires them)."""
        self._prefetch = (status, weakref.ref(coordination))

    @property
    def prefetches_status(self) -> bool:
        return self._prefetch is not None

    async def enqueue(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        self.put(jobs, delay)

    def put(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        """``enqueue`` without awaiting: what ``MemoryCoordinationStore`` calls inside its atomic section."""
        if delay > 0:
            due = time.monotonic() + delay
            for job in jobs:
                heapq.heappush(self._delayed, (due, next(self._seq), job))
        else:
            self._ready.extend(jobs)
        self._wakeup.set()

    def _deliver(self, waiting: Job | _Message, now: float) -> Delivery:
        """Put a job or a message in flight (invisible until its visibility deadline) as a new delivery."""
        message = waiting if type(waiting) is _Message else _Message(waiting)  # type: ignore[arg-type]  # a Job
        message.deliveries += 1
        message.token = token = next(self._seq)
        message.deadline = now + self.visibility_timeout
        self._inflight[token] = message
        delivery = Delivery(message.job, token)  # (positionally: a class called with a keyword costs a dict)
        delivery.deliveries = message.deliveries
        return delivery

    def hand(self, job: Job) -> Delivery:
        """A job delivered at once, without passing the ready list: in flight as ``dequeue`` leaves a message
        (``MemoryCoordinationStore`` hands fired jobs to the committing worker so)."""
        return self._deliver(job, time.monotonic())

    def remove(self, receipt: Any) -> None:
        """``ack`` without awaiting."""
        self._inflight.pop(receipt, None)

    async def receive(self, max_jobs: int, wait: float, owner: str, lease_seconds: float) -> list[Delivery]:
        deliveries = await self.dequeue(max_jobs, wait)
        if self._prefetch is None:
            return deliveries
        status, coordination_ref = self._prefetch
        coordination = coordination_ref()
        if coordination is None:  # the backend was dropped
            return deliveries
        for delivery in deliveries:  # no await from the dequeue on: one atomic step, as one round trip would be
            coordination.prefetch(delivery, status, owner, lease_seconds)
        return deliveries

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            self._ready.append(heapq.heappop(self._delayed)[2])
        if self._inflight:
            expired = [token for token, message in self._inflight.items() if message.deadline <= now]
            for token in expired:
                self._ready.append(self._inflight.pop(token))

    def _next_deadline(self) -> float | None:
        deadlines = [message.deadline for message in self._inflight.values()]
        if self._delayed:
            deadlines.append(self._delayed[0][0])
        return min(deadlines) if deadlines else None

    async def dequeue(self, max_jobs: int, wait: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # an asyncio.Event belongs to the loop that first waited on it
            self._loop, self._wakeup = loop, asyncio.Event()
        end = time.monotonic() + wait
        while True:
            now = time.monotonic()
            self._promote(now)
            if self._ready:
                out: list[Delivery] = []
                while self._ready and len(out) < max_jobs:
                    out.append(self._deliver(self._ready.popleft(), now))
                return out
            remaining = end - now
            if remaining <= 0:
                return []
            deadline = self._next_deadline()
            timeout = remaining if deadline is None else max(0.0, min(remaining, deadline - now))
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    async def ack(self, delivery: Delivery) -> None:
        self.remove(delivery.receipt)

    async def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        message = self._inflight.pop(delivery.receipt, None)
        if message is None:
            return
        if delay > 0:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), message))
        else:
            self._ready.append(message)
        self._wakeup.set()

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        message = self._inflight.get(delivery.receipt)
        if message is not None:
            message.deadline = time.monotonic() + seconds

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._inflight.pop(delivery.receipt, None)
        self._dead_ids += 1
        self._dead.append(DeadLetter(delivery.job, reason=reason, id=str(self._dead_ids), dead_at=time.time()))

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self._dead[:limit]

    async def delete_dead_letters(self, ids: Sequence[str]) -> int:
        wanted = set(ids)
        kept = [letter for letter in self._dead if letter.id not in wanted]
        removed, self._dead = len(self._dead) - len(kept), kept
        return removed

    def size(self) -> int:
        """Messages not yet acknowledged (ready, delayed or in flight)."""
        return len(self._ready) + len(self._delayed) + len(self._inflight)

    async def depth(self) -> int:
        """Jobs waiting to be delivered: ready, delayed or with an expired lease (not those in flight)."""
        now = time.monotonic()
        expired = sum(1 for message in self._inflight.values() if message.deadline <= now)
        return len(self._ready) + len(self._delayed) + expired


class MemoryContextStore(ContextStore):
    name = "memory"
    Options = NoOptions

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}

    async def get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        data = self._data.get(run_id, {})
        return {k: data[k] for k in keys if k in data}

    async def get_all(self, run_id: str) -> dict[str, Any]:
        return dict(self._data.get(run_id, {}))

    async def apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        self.write(run_id, updates, deletes)

    def write(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        """``apply`` without awaiting: what ``MemoryCoordinationStore`` calls inside its atomic section."""
        data = self._data.get(run_id)
        if data is None:
            data = self._data[run_id] = {}
        data.update(updates)
        for key in deletes:
            data.pop(key, None)

    async def delete_run(self, run_id: str) -> None:
        self._data.pop(run_id, None)


class MemoryStatusStore(StatusStore):
    """Given the backend's ``MemoryContextStore`` (``memory_backend`` passes it), ``transition_with_context``
    writes context values with a transition (``writes_context``)."""

    name = "memory"
    Options = NoOptions
    notifies = True

    def __init__(self, context: MemoryContextStore | None = None) -> None:
        self._context = context
        self._records: dict[str, RunRecord] = {}
        self._changed: dict[str, list[asyncio.Future[None]]] = {}  # run id -> who waits for its next change
        self._snapshots: dict[str, RunRecord] = {}  # run id -> a copy of its record as it is now (``snapshot``)

    def _notify(self, run_id: str) -> None:
        self._snapshots.pop(run_id, None)
        waiters = self._changed.pop(run_id, None)
        if waiters is not None:
            for waiter in waiters:
                _wake(waiter)

    async def create(self, record: RunRecord) -> bool:
        return self.insert(record)

    def insert(self, record: RunRecord) -> bool:
        """``create`` without awaiting: what ``MemoryCoordinationStore.start`` calls inside its atomic section."""
        if record.run_id in self._records:
            return False
        now = time.time()
        record.created_at = record.created_at or now
        record.updated_at = now
        self._records[record.run_id] = _copy(record)
        self._notify(record.run_id)
        return True

    async def get(self, run_id: str) -> RunRecord | None:
        record = self._records.get(run_id)
        return None if record is None else _copy(record)

    def snapshot(self, run_id: str) -> RunRecord | None:
        """The run's record as ``get`` returns it, one copy shared by every caller until the record changes: what
        the queue's prefetch and the coordination store's hand-over give the engine with each job (which only
        reads it), instead of a copy per job."""
        snapshot = self._snapshots.get(run_id)
        if snapshot is None:
            record = self._records.get(run_id)
            if record is None:
                return None
            snapshot = self._snapshots[run_id] = _copy(record)
        return snapshot

    async def delete(self, run_id: str) -> bool:
        removed = self._records.pop(run_id, None) is not None
        self._notify(run_id)
        return removed

    async def transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        return self._transition(run_id, from_statuses, to_status, changes)

    def _transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any],
        context: Mapping[str, Any] | None = None,
    ) -> RunRecord | None:
        record = self._records.get(run_id)
        if record is None or record.status not in from_statuses:
            return None
        if context is not None and self._context is not None:
            self._context.write(run_id, context)
        for key, value in changes.items():
            setattr(record, key, value)
        record.status = to_status  # type: ignore[assignment]  # validated by the engine
        record.updated_at = time.time()
        self._notify(run_id)
        return _copy(record)

    @property
    def writes_context(self) -> bool:
        return self._context is not None

    async def _transition_writing_context(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any],
        context: Mapping[str, Any],
    ) -> RunRecord | None:
        return self._transition(run_id, from_statuses, to_status, changes, context)

    async def stalled(
        self, older_than: float, limit: int = 100, *, after: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        found = sorted((r for r in self._records.values() if r.status in ACTIVE_STATUSES
                        and r.updated_at < older_than and (after is None or (r.updated_at, r.run_id) > after)),
                       key=lambda r: (r.updated_at, r.run_id))
        return [_copy(r) for r in found[:limit]]

    async def wait_for_change(self, run_id: str, timeout: float) -> None:
        """Returns at the run's next change, or after ``timeout``: a future and a timer per wait (no task, event
        or ``wait_for`` of its own: a client may wait on hundreds of runs at once)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiters = self._changed.get(run_id)
        if waiters is None:
            self._changed[run_id] = [waiter]
        else:
            waiters.append(waiter)
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            waiters = self._changed.get(run_id)
            if waiters is not None and waiter in waiters:  # timed out (or cancelled): no longer waiting
                waiters.remove(waiter)
                if not waiters:
                    del self._changed[run_id]

    async def list(
        self, status: str | None = None, blueprint_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[RunRecord], str | None]:
        records = sorted(self._records.values(), key=lambda r: (r.created_at, r.run_id), reverse=True)
        selected = [
            r for r in records
            if (status is None or r.status == status) and (blueprint_id is None or r.blueprint_id == blueprint_id)
        ]
        start = int(cursor) if cursor else 0
        page = selected[start : start + limit]
        next_cursor = str(start + limit) if start + limit < len(selected) else None
        return [_copy(r) for r in page], next_cursor


def _copy(record: RunRecord) -> RunRecord:
    """``RunRecord.copy`` without ``dataclasses.replace`` (which inspects the fields on every call): what the store
    keeps and hands out (a run's start, each status read and transition)."""
    return RunRecord(record.run_id, record.blueprint_id, status=record.status, version=record.version,
                     blueprint_hash=record.blueprint_hash, input=record.input, created_at=record.created_at,
                     updated_at=record.updated_at, errors=list(record.errors), awaiting=list(record.awaiting),
                     parent=dict(record.parent) if record.parent is not None else None)


_BEGIN_PENDING = Begin(lease=True, state="pending", completion=None)
_DONE: tuple[JobState, Job | None] = ("done", None)  # every done job's entry: one tuple, not one per executed node


@dataclass(slots=True)
class _RunCoordination:
    jobs: dict[str, tuple[JobState, Job | None]] = field(default_factory=dict)
    completions: dict[str, Completion] = field(default_factory=dict)
    arrivals: dict[str, dict[str, tuple[bool, Any]]] = field(default_factory=dict)
    arrival_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)
    pending: int = 0
    parked: int = 0
    activity: float | None = None  # None until the run's first write (a read creates no activity)


class MemoryCoordinationStore(TablesCoordinationStore):
    """The tables themselves (``LeaseTables``): every method body runs without awaiting, so under one event loop
    ``atomically`` is just calling the function, and every ``CoordinationStore`` method is the derived one.

    Given the backend's ``MemoryContextStore`` (``memory_backend`` and the ``memory`` preset pass it), a commit
    writes the completion's context updates with its record (``applies_context``): one atomic step instead of
    the engine's record, context, arrivals sequence (docs/architecture.md §3.5).

    Given the backend's ``MemoryQueue`` too, a commit puts the jobs it fires on it (``dispatches``) and acks the
    committed delivery when jobs remain pending (``acks``); given its ``MemoryStatusStore`` as well, it hands
    fired jobs due now straight to the committing worker, in flight on the queue with their run record read and
    lease taken (``continues``), it starts runs in one step (``starts``) and, when that status store writes the
    context too, a commit given ``Transition.end`` that leaves nothing pending or parked ends the run with it,
    acking the committed delivery (``ends``)."""

    name = "memory"
    Options = NoOptions

    def __init__(self, context: MemoryContextStore | None = None, *, queue: MemoryQueue | None = None,
                 status: MemoryStatusStore | None = None) -> None:
        super().__init__(applies_context=context is not None)
        self._context = context
        self._queue = queue
        self._status = status if queue is not None else None
        self._runs: dict[str, _RunCoordination] = {}

    def _run(self, run_id: str) -> _RunCoordination:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _RunCoordination()
        return run

    async def atomically(self, run_id: str, fn: Callable[[LeaseTables], T]) -> T:
        return fn(self)

    @property
    def releases_lease(self) -> bool:
        return True

    @property
    def dispatches(self) -> bool:
        return self._queue is not None

    @property
    def acks(self) -> bool:
        return self._queue is not None

    @property
    def continues(self) -> bool:
        return self._status is not None

    @property
    def starts(self) -> bool:
        return self._status is not None

    @property
    def ends(self) -> bool:
        return self._status is not None and self._status.writes_context

    async def start(self, record: RunRecord, jobs: Sequence[Job]) -> bool:
        """The record, the jobs and their queueing in one step (no await in between: atomic under the loop)."""
        status, queue = self._status, self._queue
        if status is None or queue is None:
            raise NotImplementedError("this memory coordination store was built without the status store and queue")
        if not status.insert(record):
            return False
        run_id = record.run_id
        inserted = [job for job in jobs if self.insert_job(run_id, job.key, "pending", job)]
        self.touch(run_id)
        _put_due(queue, inserted, time.time())
        return True

    async def commit(self, transition: Transition) -> Committed:
        """The derived commit; one that finishes the job also drops its owner's lease (``releases_lease``), and
        with the queue wired: acks, dispatches and hands over; with the status store too: ends the run (see the
        class). No await from the rules to the end: one atomic step under the loop."""
        queue = self._queue
        committed = apply_transition(self, transition, applies_context=self._applies_context,
                                     hand_over=None if queue is None else partial(self._dispatch, queue, transition))
        if committed.conflict is not None or not transition.finish:
            return committed
        if transition.owner is not None:
            run = self._run(transition.run_id)
            holder = run.leases.get(transition.job_key)
            if holder is not None and holder[0] == transition.owner:
                del run.leases[transition.job_key]
        end, status = transition.end, self._status
        if end is not None and status is not None and status.writes_context and ends_the_run(transition, committed):
            # the end as ``transition_with_context`` makes it: only from an active status, so once (a replay of
            # this commit, or one of a cancelled or failed run, finds the record settled and ends nothing)
            ended = status._transition(transition.run_id, end.FROM_STATUSES, end.TO_STATUS, end.fields,
                                       {end.RESULT_KEY: end.result})
            if ended is not None:
                committed = committed.with_end(ended)
        if queue is not None and transition.receipt is not None and (committed.pending > 0
                                                                     or committed.ended is not None):
            queue.remove(transition.receipt)
        return committed

    def _dispatch(self, queue: MemoryQueue, transition: Transition, fired: list[Job]) -> tuple[Delivery, ...]:
        """Put fired jobs on the queue (a job due later with its delay), those ``split_hand_over`` picks handed to
        the owner instead; return the handed deliveries."""
        now = time.time()
        status = self._status
        handed, queued = split_hand_over(transition, fired, now) if status is not None else ([], fired)
        deliveries: list[Delivery] = []
        for job in handed:  # (split_hand_over hands jobs only to an owner)
            delivery = queue.hand(job)
            self.prefetch(delivery, status, transition.owner, transition.lease_seconds)  # type: ignore[arg-type]
            deliveries.append(delivery)
        _put_due(queue, queued, now)
        return tuple(deliveries)

    def prefetch(self, delivery: Delivery, status: MemoryStatusStore, owner: str, lease_seconds: float) -> None:
        """Fill in ``delivery``'s run record and take its lease for ``owner`` (what a prefetching receive and a
        hand-over do); neither when the run has no record (the engine reads it itself and dead-letters), no lease when
        the run has settled (the engine acks its job)."""
        job = delivery.job
        record = status.snapshot(job.run_id)
        if record is not None:
            delivery.record = record
            if record.status in ACTIVE_STATUSES:  # a settled run's job is only acked: no lease for it to hold
                delivery.begin = self._take_lease(job, owner, lease_seconds)

    async def begin(self, job: Job, owner: str, lease_seconds: float) -> Begin:
        return self._take_lease(job, owner, lease_seconds)

    def _take_lease(self, job: Job, owner: str, lease_seconds: float) -> Begin:
        """``spi.take_lease`` over this store's own tables, with one run lookup and one clock read: what ``begin``,
        a prefetching receive and a hand-over do for every job."""
        run, key, now = self._run(job.run_id), job.key, time.time()
        entry = run.jobs.get(key)
        state = None if entry is None else entry[0]
        holder = run.leases.get(key)
        if holder is not None and holder[0] != owner and holder[1] > now:
            return Begin(lease=False, state=state, completion=None)
        run.leases[key] = (owner, now + lease_seconds)
        run.activity = now
        completion = run.completions.get(key)
        if state == "pending" and completion is None:
            return _BEGIN_PENDING  # most jobs: one shared (frozen) answer
        return Begin(lease=True, state=state, completion=completion)

    # -- LeaseTables -------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return time.time()

    def job_state(self, run_id: str, key: str) -> JobState | None:
        entry = self._run(run_id).jobs.get(key)
        return None if entry is None else entry[0]

    def job(self, run_id: str, key: str) -> Job | None:
        entry = self._run(run_id).jobs.get(key)
        return None if entry is None else entry[1]

    def insert_job(self, run_id: str, key: str, state: JobState, job: Job | None) -> bool:
        run = self._run(run_id)
        if key in run.jobs:
            return False
        run.jobs[key] = (state, job)
        if state == "pending":
            run.pending += 1
        elif state == "parked":
            run.parked += 1
        return True

    def set_job_state(self, run_id: str, key: str, state: JobState, job: Job | None = None) -> None:
        run = self._run(run_id)
        old_state, old_job = run.jobs[key]
        if old_state == "pending" and state == "done":  # most calls: a job finishing
            run.pending -= 1
            run.jobs[key] = _DONE
            return
        self._count(run, old_state, -1)
        # a done job's document is never read again (``jobs`` lists pending and parked ones; a recovery reads only
        # pending ones): drop it rather than keep a Job per executed node alive
        run.jobs[key] = _DONE if state == "done" else (state, old_job if job is None else job)
        self._count(run, state, +1)

    @staticmethod
    def _count(run: _RunCoordination, state: JobState, delta: int) -> None:
        if state == "pending":
            run.pending += delta
        elif state == "parked":
            run.parked += delta

    def completion(self, run_id: str, key: str) -> Completion | None:
        return self._run(run_id).completions.get(key)

    def put_completion(self, run_id: str, key: str, completion: Completion) -> None:
        self._run(run_id).completions[key] = completion

    def add_arrival(self, run_id: str, target: str, member: str, arrived: bool, contribution: Any) -> tuple[int, int]:
        run = self._run(run_id)
        members = run.arrivals.setdefault(target, {})
        counts = run.arrival_counts.get(target, (0, 0))
        if member not in members:
            members[member] = (arrived, contribution)
            counts = (counts[0] + 1, counts[1] + int(arrived))
            run.arrival_counts[target] = counts
        return counts

    def arrivals(self, run_id: str, target: str) -> dict[str, tuple[bool, Any]]:
        return dict(self._run(run_id).arrivals.get(target, {}))

    def counts(self, run_id: str) -> tuple[int, int]:
        run = self._run(run_id)
        return run.pending, run.parked

    def touch(self, run_id: str) -> None:
        self._run(run_id).activity = time.time()

    def apply_context(self, run_id: str, completion: Completion) -> None:
        if self._context is None:
            raise NotImplementedError("this memory coordination store was built without the context store")
        self._context.write(run_id, completion.context_updates, completion.context_deletes)

    def lease(self, run_id: str, key: str) -> tuple[str, float] | None:
        return self._run(run_id).leases.get(key)

    def put_lease(self, run_id: str, key: str, owner: str, expires_at: float) -> None:
        self._run(run_id).leases[key] = (owner, expires_at)

    def drop_lease(self, run_id: str, key: str) -> None:
        self._run(run_id).leases.pop(key, None)

    def jobs_in_state(self, run_id: str, state: JobState) -> list[tuple[Job, float | None]]:
        run = self._run(run_id)
        return [(job, run.leases[key][1] if key in run.leases else None)
                for key, (job_state, job) in run.jobs.items() if job_state == state and job is not None]

    def last_activity(self, run_id: str) -> float | None:
        run = self._runs.get(run_id)
        return None if run is None else run.activity

    def forget_run(self, run_id: str) -> None:
        self._runs.pop(run_id, None)


def _put_due(queue: MemoryQueue, jobs: Sequence[Job], now: float) -> None:
    """Put jobs on the queue: those due now at once, a job due later with its delay."""
    ready = [job for job in jobs if job.due_at is None or job.due_at <= now]
    if ready:
        queue.put(ready)
    for job in jobs:
        if job.due_at is not None and job.due_at > now:
            queue.put([job], job.due_at - now)


def _wake(waiter: asyncio.Future[None]) -> None:
    """End a ``wait_for_change``; not one left behind by an event loop that was closed while it waited."""
    if not waiter.done() and not waiter.get_loop().is_closed():
        waiter.set_result(None)


def memory_backend(visibility_timeout: float = 30.0) -> Backend:
    """The four memory components wired together, taking every fast path (see the module docstring)."""
    context, queue = MemoryContextStore(), MemoryQueue(visibility_timeout)
    status = MemoryStatusStore(context)
    coordination = MemoryCoordinationStore(context, queue=queue, status=status)
    queue.prefetch_with(status, coordination)
    return Backend(queue=queue, context=context, status=status, coordination=coordination, name="memory")


def build_backend(options: Mapping[str, Any]) -> Backend:
    """The ``memory`` preset: ``memory_backend`` with the queue's options (already validated)."""
    return memory_backend(parse_options(QueueOptions, options).visibility_timeout)
