"""The worker loop: dequeue, handle concurrently, heartbeat, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, cast

from flowcraft.engine.core import Engine
from flowcraft.errors import ConfigError, ServerUnreachableError
from flowcraft.spi import Delivery

if TYPE_CHECKING:
    from flowcraft.presence import WorkerPresence

log = logging.getLogger("flowcraft.worker")

UNREACHABLE_GRACE = 30.0  # seconds a worker keeps trying a server it has not reached before it gives up
RELEASE_TIMEOUT = 10.0  # seconds cancelled jobs get to hand their deliveries back at shutdown


class Worker:
    """Runs ``Engine.handle`` for delivered jobs with at most ``concurrency`` at a time.

    ``stop()`` stops dequeuing, lets in-flight jobs finish within ``grace`` seconds (``flowcraft worker
    --shutdown-timeout``) and then cancels the rest, which hands their deliveries back to the queue, so
    nothing is lost on SIGTERM and the worker exits in bounded time even with a sync node stuck.

    ``ready`` is set once the worker has reached its stores and its first receive from the queue returned (it
    is consuming); ``flowcraft worker`` says "ready" then, writes ``--ready-file`` and answers ``/readyz``.
    With ``presence`` (``flowcraft.presence.WorkerPresence``) it also publishes its blueprints and heartbeats
    its entry in the list of live workers (``flowcraft workers``) until it stops.
    """

    def __init__(self, engine: Engine, concurrency: int = 16, poll_wait: float = 1.0, grace: float = 10.0,
                 *, presence: WorkerPresence | None = None) -> None:
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
        self._room = asyncio.Event()
        self._room.set()
        engine.taker = self  # takes the jobs a commit hands over (Capabilities.continues)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def in_flight(self) -> int:
        """Jobs being handled now (with those handed over to run next in a handling's task)."""
        return len(self._tasks) + len(self._next)

    @property
    def state(self) -> str:
        return "stopping" if self.stopping else "ready" if self.ready.is_set() else "starting"

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        presence: asyncio.Task[None] | None = None
        unreachable_since: float | None = None
        try:
            await self._connect()
            while not self._stopping.is_set():
                await self._room.wait()
                free = self.concurrency - len(self._tasks)
                if free <= 0:  # a handed-over job took the slot a finished task freed: wait for the next
                    self._room.clear()
                    continue
                try:
                    deliveries = await self._dequeue(free)
                    unreachable_since = None
                    if not self.ready.is_set():  # reached every store and consuming: ready
                        presence = await self._became_ready()
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
            await self._drain()
            for delivery in (*self._tasks.values(), *self._next.values()):  # tasks cancelled before they started:
                self.engine.unclaim(delivery)  # nothing ended their claims
            helpers: tuple[asyncio.Task[None] | None, ...] = (heartbeat, presence)
            for helper in helpers:
                if helper is not None:
                    helper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper
            if self.presence is not None and self.presence.started:
                await self.presence.retire()
            if self.engine.taker is self:  # stopped: it takes nothing more (and the engine does not keep it alive)
                self.engine.taker = None

    def room(self) -> int:
        """How many more jobs can start now, counting the slot of a job that is committing (it ends right after
        its commit hands over its successors); none while stopping."""
        return 0 if self._stopping.is_set() else self.concurrency - len(self._tasks) + 1

    def take(self, delivery: Delivery, after: Delivery | None = None) -> None:
        """Start handling a delivery: one received, or one a commit handed over (``after``: the delivery whose
        handling committed). The first job a handling's commit hands over runs next in that handling's task, in
        the slot it leaves (``room`` counts it), without a task of its own; the others get one each."""
        self.engine.claim(delivery)  # at once: a delivery of the same job taken before this one starts waits
        if after is not None and id(after) in self._running and id(after) not in self._next:
            self._next[id(after)] = delivery
            return
        handling: list[asyncio.Task[None]] = []  # the task, for its coroutine (no asyncio.current_task call)
        task = asyncio.create_task(self._handle(delivery, handling))
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

    async def _became_ready(self) -> asyncio.Task[None] | None:
        self.ready.set()
        presence = self.presence
        if presence is None:
            return None
        try:
            await presence.beat(state="ready", in_flight=self.in_flight, handled=self.handled, failed=self.failed)
        except Exception as error:  # tried again every interval
            log.warning("worker presence heartbeat failed: %s", error)
        return asyncio.create_task(presence.run(lambda: (self.state, self.in_flight, self.handled, self.failed)))

    async def _dequeue(self, count: int) -> list[Delivery]:
        stop = asyncio.create_task(self._stopping.wait())
        engine = self.engine
        engine.watch_ends()  # what a receive prefetched is stale for jobs whose handling ends meanwhile
        receive = asyncio.create_task(
            engine.queue.receive(count, self.poll_wait, engine.worker_id, engine.options.lease_seconds))
        done, _ = await asyncio.wait({stop, receive}, return_when=asyncio.FIRST_COMPLETED)
        if receive in done:
            stop.cancel()
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
                    return
                self._tasks[task] = delivery = handed
        finally:
            self._tasks.pop(task, None)
            self._room.set()

    async def _heartbeat_loop(self) -> None:
        interval = max(0.05, self.engine.options.lease_seconds / 3)
        while True:
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
