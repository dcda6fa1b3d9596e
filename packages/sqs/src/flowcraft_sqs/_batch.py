"""Coalesce concurrent single requests into batch calls (SQS SendMessageBatch / DeleteMessageBatch,
DynamoDB BatchGetItem / BatchWriteItem).

By default no timer and no added latency: a request goes out at once when no batch of its kind is in flight;
while one is, new requests gather and leave together (up to ``max_entries`` and ``max_bytes`` per call) when
it returns. Under load that fills batches; when idle every request is sent immediately. With ``linger`` and
``expect``, a batch that is not full waits up to ``linger`` seconds for more entries while ``expect()`` says
more are coming (the queue's deletes: other received messages not yet settled).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_ENTRIES = 10


@dataclass(slots=True)
class Entry:
    """One request: the batch entry (without ``Id``), its payload size and the caller's future."""

    request: dict[str, Any]
    size: int = 0
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


#: Sends one batch; returns, per entry, a result or an exception.
BatchCall = Callable[[list[Entry]], Awaitable[Sequence[Any]]]


class Coalescer:
    def __init__(self, call: BatchCall, max_bytes: int | None = None, max_entries: int = MAX_ENTRIES, *,
                 linger: float = 0.0, expect: Callable[[], bool] | None = None) -> None:
        self._call = call
        self._linger = linger
        self._expect = expect
        self._arrived: asyncio.Event | None = None
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._waiting: list[Entry] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, requests: Sequence[tuple[dict[str, Any], int]]) -> list[Any]:
        entries = [Entry(request, size) for request, size in requests]
        self._waiting.extend(entries)
        if self._arrived is not None:
            self._arrived.set()
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return list(await asyncio.gather(*(e.future for e in entries)))

    async def _drain(self) -> None:
        await self._gather()
        while self._waiting:
            entries, self._waiting = self._waiting, []
            await asyncio.gather(*(self._send(chunk) for chunk in self._chunks(entries)))

    async def _gather(self) -> None:
        """Wait up to ``linger`` for a fuller batch while ``expect()`` says more entries are coming."""
        expect = self._expect
        if self._linger <= 0 or expect is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger
        arrived = self._arrived = asyncio.Event()
        try:
            while len(self._waiting) < self._max_entries and expect():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), remaining)
        finally:
            self._arrived = None

    def _chunks(self, entries: list[Entry]) -> list[list[Entry]]:
        chunks: list[list[Entry]] = []
        current: list[Entry] = []
        size = 0
        for entry in entries:
            too_big = self._max_bytes is not None and current and size + entry.size > self._max_bytes
            if len(current) >= self._max_entries or too_big:
                chunks.append(current)
                current, size = [], 0
            current.append(entry)
            size += entry.size
        if current:
            chunks.append(current)
        return chunks

    async def _send(self, chunk: list[Entry]) -> None:
        try:
            results = await self._call(chunk)
        except Exception as exc:  # handed to every waiting caller
            for entry in chunk:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        except BaseException:
            for entry in chunk:
                entry.future.cancel()
            raise
        for entry, result in zip(chunk, results, strict=True):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)
