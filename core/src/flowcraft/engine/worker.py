"""The worker loop: dequeue, handle concurrently, heartbeat, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from flowcraft.engine.core import Engine
from flowcraft.errors import ConfigError, ServerUnreachableError
from flowcraft.spi import Delivery

log = logging.getLogger("flowcraft.worker")

UNREACHABLE_GRACE = 30.0  # seconds a worker keeps trying a server it has not reached before it gives up
RELEASE_TIMEOUT = 10.0  # seconds cancelled jobs get to hand their deliveries back at shutdown


class Worker:
    """Runs ``Engine.handle`` for delivered jobs with at most ``concurrency`` at a time.

    ``stop()`` stops dequeuing, lets in-flight jobs finish within ``grace`` seconds (``flowcraft worker
    --shutdown-timeout``) and then cancels the rest, which hands their deliveries back to the queue, so
    nothing is lost on SIGTERM and the worker exits in bounded time even with a sync node stuck.
    """

    def __init__(self, engine: Engine, concurrency: int = 16, poll_wait: float = 1.0, grace: float = 10.0) -> None:
        self.engine = engine
        self.concurrency = max(1, concurrency)
        self.poll_wait = poll_wait
        self.grace = grace
        self.handled = 0
        self.failed = 0
        self._stopping = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], Delivery] = {}
        self._room = asyncio.Event()
        self._room.set()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        unreachable_since: float | None = None
        try:
            while not self._stopping.is_set():
                await self._room.wait()
                free = self.concurrency - len(self._tasks)
                try:
                    deliveries = await self._dequeue(free)
                    unreachable_since = None
                except ServerUnreachableError as error:
                    # a server restarting, or not up yet when this worker started: keep trying a while, so
                    # a worker restarted beside its server lives on, but a wrong URL still ends the worker
                    now = time.monotonic()
                    if unreachable_since is None:
                        unreachable_since = now
                        log.warning("%s; trying again for up to %gs", error, UNREACHABLE_GRACE)
                    elif now - unreachable_since > UNREACHABLE_GRACE:
                        raise
                    deliveries = []
                    await asyncio.sleep(0.5)
                except ConfigError:
                    raise  # retrying cannot fix the configuration
                except Exception:
                    log.exception("dequeue failed; retrying")
                    deliveries = []
                    await asyncio.sleep(0.5)
                for delivery in deliveries:
                    task = asyncio.create_task(self._handle(delivery))
                    self._tasks[task] = delivery
                if len(self._tasks) >= self.concurrency:
                    self._room.clear()
        finally:
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _dequeue(self, count: int) -> list[Delivery]:
        stop = asyncio.create_task(self._stopping.wait())
        engine = self.engine
        receive = asyncio.create_task(
            engine.queue.receive(count, self.poll_wait, engine.worker_id, engine.options.lease_seconds))
        done, _ = await asyncio.wait({stop, receive}, return_when=asyncio.FIRST_COMPLETED)
        if receive in done:
            stop.cancel()
            return receive.result()
        # stopping: let an in-progress receive finish so no message is left invisible, then hand it back
        deliveries = await receive
        for delivery in deliveries:
            await self.engine.queue.release(delivery)
        return []

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self.engine.handle(delivery)
            self.handled += 1
        except BaseException as error:
            task = asyncio.current_task()
            if isinstance(error, asyncio.CancelledError) and task is not None and task.cancelling() > 0:
                with contextlib.suppress(Exception):  # this worker is stopping: the job goes back at once
                    await self.engine.queue.release(delivery)
                return
            # anything else, even a SystemExit or a stray CancelledError from code the engine called, is
            # this job's problem: the worker lives on; the engine bounds how often a job comes back
            self.failed += 1
            log.exception("job %s of run %s failed unexpectedly; it will be redelivered",
                          delivery.job.key, delivery.job.run_id)
            with contextlib.suppress(Exception):
                await self.engine.queue.release(delivery, 1.0)
        finally:
            self._tasks.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
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
