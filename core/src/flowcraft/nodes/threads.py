"""The threads sync nodes run in: a bounded pool that nodes stuck past their timeout cannot exhaust.

Python cannot stop a thread, so a sync node that times out (or whose run is cancelled, or whose worker
shuts down) keeps running until it returns; its caller is told at once and ``ctx.cancelled`` turns true,
so a cooperative node stops at its next check. Its thread is *written off*: it no longer counts toward the
``size`` threads that serve sync nodes, and the pool starts a replacement, as long as at most
``max_written_off`` threads are written off at once. Past that cap new sync nodes wait for a thread (a
warning says why). A written-off thread that returns serves again. The threads are daemon threads, so a
stuck node never keeps the worker process from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flowcraft.nodes")

DEFAULT_SIZE = 32
DEFAULT_MAX_WRITTEN_OFF = 64


class _Call:
    __slots__ = ("args", "func", "future", "loop", "state")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future[Any]) -> None:
        self.func = func
        self.args = args
        self.loop = loop
        self.future = future
        self.state = "queued"  # -> running -> done, or queued -> dropped, or running -> written_off


class SyncNodePool:
    def __init__(self, size: int = DEFAULT_SIZE, max_written_off: int = DEFAULT_MAX_WRITTEN_OFF) -> None:
        self.size = max(1, size)
        self.max_written_off = max(0, max_written_off)
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._queued = 0
        self._written_off = 0
        self._warned = False

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def written_off(self) -> int:
        return self._written_off

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` in a pool thread; cancelling the caller writes off a call that already started."""
        loop = asyncio.get_running_loop()
        call = _Call(func, args, loop, loop.create_future())
        with self._lock:
            self._queued += 1
            self._calls.put(call)
            self._grow()
        try:
            return await call.future  # cancelling the caller cancels it, so a late result is dropped
        except asyncio.CancelledError:
            with self._lock:
                if call.state == "queued":
                    call.state = "dropped"
                elif call.state == "running":
                    call.state = "written_off"
                    self._written_off += 1
                    self._grow()
            raise

    def _grow(self) -> None:
        """Start a thread for queued work if the serving threads are below ``size`` (lock held)."""
        serving = self._threads - self._written_off
        if self._queued <= self._idle or serving >= self.size:
            return
        if self._written_off > self.max_written_off:
            if not self._warned:
                self._warned = True
                log.warning("%d sync nodes are still running past their timeout or cancellation; new sync nodes "
                            "wait for a thread (at most %d threads are written off)", self._written_off,
                            self.max_written_off)
            return
        self._threads += 1
        self._idle += 1
        threading.Thread(target=self._serve, name=f"flowcraft-sync-node-{self._threads}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            with self._lock:
                self._queued -= 1
                if call.state == "dropped":
                    continue
                self._idle -= 1
                call.state = "running"
            try:
                outcome: tuple[bool, Any] = (True, call.func(*call.args))
            except BaseException as exc:  # a node's failure of any kind is its caller's to judge
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for the result
                call.loop.call_soon_threadsafe(_settle, call.future, outcome)
            with self._lock:
                if call.state == "written_off":
                    self._written_off -= 1
                    self._warned = False
                call.state = "done"
                if self._threads - self._written_off > self.size:
                    self._threads -= 1  # a replacement took this thread's place meanwhile
                    return
                self._idle += 1
                self._grow()


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


_pool: SyncNodePool | None = None


def sync_node_pool() -> SyncNodePool:
    """The process-wide pool sync nodes run in."""
    global _pool
    if _pool is None:
        _pool = SyncNodePool()
    return _pool
