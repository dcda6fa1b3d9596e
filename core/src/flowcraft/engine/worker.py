"""The worker loop: dequeue, handle concurrently, heartbeat, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from flowcraft.engine.core import Engine
from flowcraft.errors import ConfigError, ServerUnreachableError
from flowcraft.presence import WAITING, cancel_requested
from flowcraft.spi import Delivery

if TYPE_CHECKING:
    from flowcraft.presence import WorkerPresence

log = logging.getLogger("flowcraft.worker")

UNREACHABLE_GRACE = 30.0  # seconds a worker keeps trying a server it has not reached before it gives up
RELEASE_TIMEOUT = 10.0  # seconds cancelled jobs get to hand their deliveries back at shutdown
BACKLOG_WAIT = 1.0  # seconds a job may wait in a backlog for a slot (at most a quarter lease) before it goes back
BACKLOG_SLOTS = 4  # the default backlog, in jobs per slot (concurrent commits each see the same free places)


class Worker:
    """Runs ``Engine.handle`` for delivered jobs with at most ``concurrency`` at a time.

    ``stop()`` stops dequeuing, lets in-flight jobs finish within ``grace`` seconds (``flowcraft worker
    --shutdown-timeout``) and then cancels the rest, which hands their deliveries back to the queue, so
    nothing is lost on SIGTERM and the worker exits in bounded time even with a sync node stuck.

    ``ready`` is set once the worker has reached its stores and its first receive from the queue returned (it
    is consuming); ``flowcraft worker`` says "ready" then, writes ``--ready-file`` and answers ``/readyz``.
    With ``presence`` (``flowcraft.presence.WorkerPresence``) it also publishes its blueprints and heartbeats
    its entry in the list of live workers (``flowcraft workers``) until it stops, and takes no jobs while a live
    worker of another coordination protocol blocks it (``WorkerPresence.must_wait``, decided when it starts and at
    each presence heartbeat; its state is then ``waiting``): it receives nothing, takes no handed-over jobs, gives
    its backlog back to the queue and lets the jobs it is handling finish and commit, until the blockers are gone
    or it stops.

    Jobs a commit hands over (``Capabilities.continues``) when every slot is taken wait in a **backlog** of at
    most ``backlog`` jobs (default: ``BACKLOG_SLOTS`` per slot) and start, oldest first, as slots free up, before
    anything new is received: a fan-out stays with the worker that fired it instead of going through the queue. A job
    that waited ``BACKLOG_WAIT`` seconds (at most a quarter of the lease) goes back to the queue with its lease
    released, for any worker; a stopping worker gives its backlog back at once. A worker that dies holding a
    backlog loses nothing: those jobs are in the queue's in-flight set, as any received job, and come back when
    their visibility lapses.
    """

    def __init__(self, engine: Engine, concurrency: int = 16, poll_wait: float = 1.0, grace: float = 10.0,
                 *, presence: WorkerPresence | None = None, backlog: int | None = None) -> None:
        self.engine = engine
        self.presence = presence
        self.ready = asyncio.Event()
        self.concurrency = max(1, concurrency)
        self.poll_wait = poll_wait
        self.grace = grace
        self.handled = 0
        self.failed = 0
        self._stopping = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], Delivery] = {}
        self._running: set[int] = set()  # ids of the deliveries this worker's tasks are handling now
        self._next: dict[int, Delivery] = {}  # id of a delivery being handled -> the handed-over one to run next
        self.backlog = BACKLOG_SLOTS * self.concurrency if backlog is None else max(0, backlog)
        self._waiting: deque[tuple[float, Delivery]] = deque()  # (since, delivery): taken, waiting for a slot
        self._expiry: asyncio.TimerHandle | None = None  # gives back the backlog's oldest when it waited too long
        self._giving_back: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop ``run`` runs in (asking for it costs a syscall)
        self._stop_waiter: asyncio.Task[Any] | None = None  # done once stopping: what each receive races against
        engine.taker = self  # takes the jobs a commit hands over (Capabilities.continues)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def in_flight(self) -> int:
        """Jobs being handled now (with those handed over to run next in a handling's task)."""
        return len(self._tasks) + len(self._next) + len(self._waiting)

    @property
    def waiting(self) -> bool:
        """Whether it takes no jobs because a live worker of another coordination protocol blocks it."""
        return self.presence is not None and self.presence.must_wait

    @property
    def state(self) -> str:
        return ("stopping" if self.stopping else WAITING if self.waiting else "ready" if self.ready.is_set()
                else "starting")

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        presence: asyncio.Task[None] | None = None
        unreachable_since: float | None = None
        try:
            await self._connect()
            if self.presence is not None and self.presence.started:  # heartbeats (and protocol checks) from now on
                presence = asyncio.create_task(self.presence.run(self._snapshot))
            while not self._stopping.is_set():
                if self.presence is not None and self.waiting:
                    await self._wait_for_other_protocols(self.presence)
                    continue
                await self._room.wait()
                free = self.concurrency - len(self._tasks)
                if free > 0 and self._waiting:  # the backlog goes first
                    self._start(self._waiting.popleft()[1])
                    continue
                if free <= 0:  # a handed-over job took the slot a finished task freed: wait for the next
                    self._room.clear()
                    continue
                try:
                    deliveries = await self._dequeue(free)
                    unreachable_since = None
                    if not self.ready.is_set():  # reached every store and consuming: ready
                        await self._became_ready()
                except ServerUnreachableError as error:
                    unreachable_since = await _unreachable(error, unreachable_since)
                    deliveries = []
                except ConfigError:
                    raise  # retrying cannot fix the configuration
                except Exception:
                    log.exception("dequeue failed; retrying")
                    deliveries = []
                    await asyncio.sleep(0.5)
                for delivery in deliveries:
                    self.take(delivery)
        finally:
            self._stopping.set()  # (also when a ConfigError ends it): nothing more is taken or started from the backlog
            await self._give_back_backlog()
            await self._drain()
            for delivery in (*self._tasks.values(), *self._next.values()):  # tasks cancelled before they started:
                self.engine.unclaim(delivery)  # nothing ended their claims
            helpers: tuple[asyncio.Task[Any] | None, ...] = (heartbeat, presence, self._stop_waiter)
            self._stop_waiter = None
            for helper in helpers:
                if helper is not None:
                    helper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper
            if self.presence is not None and self.presence.started:
                await self.presence.retire()
            if self.engine.taker is self:  # stopped: it takes nothing more (and the engine does not keep it alive)
                self.engine.taker = None
            self._loop = None

    def room(self) -> int:
        """How many more handed-over jobs this worker takes now: free slots, counting the slot of a job that is
        committing (it ends right after its commit hands over its successors), and free places in the backlog;
        none while stopping or waiting for workers of another coordination protocol."""
        if self._stopping.is_set() or self.waiting:
            return 0
        return self.concurrency - len(self._tasks) + 1 + self.backlog - len(self._waiting)

    def take(self, delivery: Delivery, after: Delivery | None = None) -> None:
        """Start handling a delivery: one received, or one a commit handed over (``after``: the delivery whose
        handling committed). The first job a handling's commit hands over runs next in that handling's task, in
        the slot it leaves (``room`` counts it), without a task of its own; the others get one each while slots are
        free, and wait in the backlog for one after that."""
        # claim at once: a delivery of the same job taken before this one starts waits
        claimed = self.engine.claim(delivery)
        if after is not None and id(after) in self._running and id(after) not in self._next:
            self._next[id(after)] = delivery
            return
        if claimed and len(self._tasks) >= self.concurrency:  # (not claimed: its handling bounces it at once)
            self._waiting.append((time.monotonic(), delivery))
            if self._expiry is None:
                self._expiry = asyncio.get_running_loop().call_later(self._max_wait(), self._expire)
            return
        self._start(delivery)

    def _start(self, delivery: Delivery) -> None:
        handling: list[asyncio.Task[None]] = []  # the task, for its coroutine (no asyncio.current_task call)
        loop = self._loop
        task = (loop or asyncio.get_running_loop()).create_task(self._handle(delivery, handling))
        handling.append(task)
        self._tasks[task] = delivery
        if len(self._tasks) >= self.concurrency:
            self._room.clear()

    async def _connect(self) -> None:
        """Reach the status and coordination stores (a read each) and, with presence, publish the blueprints
        and the worker's first entry (a context write): a worker only says it is ready once all answered.
        A server not up yet is waited for, up to ``UNREACHABLE_GRACE`` seconds, as in the receive loop."""
        engine = self.engine
        probe = "_flowcraft.probe"
        unreachable_since: float | None = None
        while not self._stopping.is_set():
            try:
                await engine.status.get(probe)
                await engine.coordination.activity(probe)
                if self.presence is not None:
                    await self.presence.start()
                return
            except ServerUnreachableError as error:
                unreachable_since = await _unreachable(error, unreachable_since)

    def _snapshot(self) -> tuple[str, int, int, int]:
        return self.state, self.in_flight, self.handled, self.failed

    async def _became_ready(self) -> None:
        self.ready.set()
        if self.presence is None:
            return
        try:  # says "ready" now rather than at the next heartbeat
            await self.presence.beat(state=self.state, in_flight=self.in_flight, handled=self.handled,
                                     failed=self.failed)
        except Exception as error:  # tried again every interval
            log.warning("worker presence heartbeat failed: %s", error)

    def _stop_waiter_task(self) -> asyncio.Task[Any]:
        """Done once the worker is stopping: one waiter for every receive and wait of the run (``run`` cancels it)."""
        stop = self._stop_waiter
        if stop is None or stop.done():
            stop = self._stop_waiter = (self._loop or asyncio.get_running_loop()).create_task(self._stopping.wait())
        return stop

    async def _wait_for_other_protocols(self, presence: WorkerPresence) -> None:
        """Take nothing until no live worker of another coordination protocol blocks this one (presence checks
        at each heartbeat) or the worker stops: the backlog goes back to the queue at once, the jobs being handled
        finish and commit."""
        await self._give_back_backlog()
        stop = self._stop_waiter_task()
        go_on = asyncio.create_task(presence.may_go_on())
        try:
            await asyncio.wait((stop, go_on), return_when=asyncio.FIRST_COMPLETED)
        finally:
            go_on.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await go_on

    async def _dequeue(self, count: int) -> list[Delivery]:
        loop = self._loop or asyncio.get_running_loop()
        stop = self._stop_waiter_task()
        engine = self.engine
        engine.watch_ends()  # what a receive prefetched is stale for jobs whose handling ends meanwhile
        receive = loop.create_task(
            engine.queue.receive(count, self.poll_wait, engine.worker_id, engine.options.lease_seconds))
        done, _ = await asyncio.wait((stop, receive), return_when=asyncio.FIRST_COMPLETED)
        if receive in done:
            return self.engine.fresh(receive.result())
        # stopping: let an in-progress receive finish so no message is left invisible, then hand it back
        deliveries = await receive
        for delivery in deliveries:
            await self.engine.queue.release(delivery)
        return []

    async def _handle(self, delivery: Delivery, handling: list[asyncio.Task[None]]) -> None:
        """Handle a delivery, then the one its commit handed over to run in this task (``take``), and so on;
        ``handling`` holds the task this runs in (still empty if a task factory started it eagerly)."""
        task = handling[0] if handling else cast("asyncio.Task[None]", asyncio.current_task())
        try:
            while True:
                self._running.add(id(delivery))
                try:
                    self.engine.caller_task = task
                    await self.engine.handle(delivery)
                    self.handled += 1
                except BaseException as error:
                    if isinstance(error, asyncio.CancelledError) and task.cancelling() > 0:
                        with contextlib.suppress(Exception):  # this worker is stopping: the job goes back at once
                            await self.engine.queue.release(delivery)
                        handed = self._next.pop(id(delivery), None)
                        if handed is not None:  # and the job handed over to run next
                            self.engine.unclaim(handed)
                            with contextlib.suppress(Exception):
                                await self.engine.queue.release(handed)
                        return
                    # anything else, even a SystemExit or a stray CancelledError from code the engine called, is
                    # this job's problem: the worker lives on; the engine bounds how often a job comes back
                    self.failed += 1
                    log.exception("job %s of run %s failed unexpectedly; it will be redelivered",
                                  delivery.job.key, delivery.job.run_id)
                    with contextlib.suppress(Exception):
                        await self.engine.queue.release(delivery, 1.0)
                finally:
                    self._running.discard(id(delivery))
                handed = self._next.pop(id(delivery), None)
                if handed is None:
                    if not self._waiting or self._stopping.is_set():
                        return
                    handed = self._waiting.popleft()[1]  # the backlog's oldest, in the slot this one leaves
                self._tasks[task] = delivery = handed
        finally:
            self._tasks.pop(task, None)
            self._room.set()

    def _max_wait(self) -> float:
        return min(BACKLOG_WAIT, self.engine.options.lease_seconds / 4)

    def _expire(self) -> None:
        """Give back the backlog's jobs that waited too long (another worker may be idle); then wait for the next."""
        self._expiry = None
        now, limit = time.monotonic(), self._max_wait()
        while self._waiting and now - self._waiting[0][0] >= limit:
            self._start_giving_back(self._waiting.popleft()[1])
        if self._waiting:
            self._expiry = asyncio.get_running_loop().call_later(self._waiting[0][0] + limit - now, self._expire)

    def _start_giving_back(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._give_back(delivery))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, delivery: Delivery) -> None:
        """Hand a backlog job back to the queue, unstarted: its lease (taken for this worker by the commit or the
        receive) released first, so the worker that gets it next need not wait for it to expire."""
        engine, job = self.engine, delivery.job
        try:
            if delivery.begin is not None and delivery.begin.lease:  # claimed by this delivery: no handling here has it
                await engine.coordination.release(job.run_id, job.key, engine.worker_id)
            await engine.queue.release(delivery)
        except Exception as error:  # still in the queue's in-flight set: it comes back when its visibility lapses
            log.warning("could not give job %s of run %s back to the queue: %s", job.key, job.run_id, error)
        finally:
            engine.unclaim(delivery)

    async def _give_back_backlog(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for _, delivery in self._waiting:
            self._start_giving_back(delivery)
        self._waiting.clear()
        if self._giving_back:
            await asyncio.wait(set(self._giving_back), timeout=RELEASE_TIMEOUT)

    async def _heartbeat_loop(self) -> None:
        interval = max(0.05, self.engine.options.lease_seconds / 3)
        while not cancel_requested():
            await asyncio.sleep(interval)
            await self.engine.heartbeat()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, still_running = await asyncio.wait(set(self._tasks), timeout=self.grace)
        if not still_running:
            return
        log.warning("%d jobs still running after the %gs shutdown timeout; giving them back to the queue",
                    len(still_running), self.grace)
        for task in still_running:
            task.cancel()  # a sync node's thread is written off (flowcraft.nodes.threads), so this is quick
        _, stuck = await asyncio.wait(still_running, timeout=RELEASE_TIMEOUT)
        if stuck:
            log.error("%d jobs did not stop within %gs of being cancelled; exiting anyway (they come back "
                      "after the lease)", len(stuck), RELEASE_TIMEOUT)


async def _unreachable(error: ServerUnreachableError, since: float | None) -> float:
    """A server restarting, or not up yet when this worker started: keep trying a while (returns since when), so a
    worker restarted beside its server lives on, but a wrong URL still ends the worker (re-raises ``error``)."""
    now = time.monotonic()
    if since is None:
        log.warning("%s; trying again for up to %gs", error, UNREACHABLE_GRACE)
        since = now
    elif now - since > UNREACHABLE_GRACE:
        raise error
    await asyncio.sleep(0.5)
    return since
