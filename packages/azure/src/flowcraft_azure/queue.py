"""Azure Storage Queue (azure-storage-queue, aio): visibility timeouts, update_message heartbeats, delays,
a poison (dead-letter) queue with the reason.

* A message's text is the job's JSON (``Job.to_dict``), base64-encoded by default (``message_encoding``:
  what Azure Functions' queue trigger and Storage Explorer expect) or plain; a receiver reads both.
* ``Delivery.deliveries`` is the message's ``dequeue_count``. ``release`` keeps the message: one
  ``update_message`` makes it visible again after the delay and records in the message (``_flowcraft_base``)
  how many dequeues it had then, so the poison check counts only receives since the last release (a worker
  died each time), never durable sleeps or backoff waits.
* ``extend`` = ``update_message`` with a new visibility timeout (its new pop receipt is kept in the receipt).
* Azure queues have no long polling: an empty receive pauses ``poll_interval``, doubling up to
  ``max_poll_interval``; a job this process enqueues ends the pause at once.
* Delays are visibility timeouts, at most 7 days; the engine releases a job that is still early again, so
  longer sleeps are chained.
* ``dead_letter`` sends an envelope ``{"reason", "queue", "message_id", "deliveries", "job"}`` to
  ``<queue>-dlq`` and deletes the original; ``dead_letters`` peeks at it (up to 32, Azure's peek limit).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self
from xml.sax.saxutils import escape

from flowcraft.errors import FlowcraftError
from flowcraft.spi import DeadLetter, Delivery, Job, Queue
from flowcraft_azure._clients import (
    AzureClients,
    Fixed,
    MessageTooLargeError,
    Shared,
    Source,
    dumps,
    log,
    status_code,
    unreachable,
)
from flowcraft_azure.options import MAX_MESSAGE_BYTES, MAX_MESSAGES_PER_RECEIVE, MAX_VISIBILITY_SECONDS, AzureOptions

if TYPE_CHECKING:
    from azure.storage.queue.aio import QueueClient

#: The longest delay of one hop (a visibility timeout); longer sleeps are chained by the engine.
MAX_DELAY_SECONDS = MAX_VISIBILITY_SECONDS
#: The field of a released message's JSON holding its dequeue count at the release.
BASE_FIELD = "_flowcraft_base"
#: Error codes of a message that is gone, or was received again elsewhere (its pop receipt no longer matches).
_GONE_CODES = frozenset({"MessageNotFound", "PopReceiptMismatch", "QueueNotFound"})
_REASON_CHARS = 4000


@dataclass(slots=True)
class AzureReceipt:
    """What ``Delivery.receipt`` holds: the message id and its latest pop receipt (changed by each update)."""

    message_id: str
    pop_receipt: str
    content: str
    base: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)


class AzureQueue(Queue):
    name = "azure"
    Options = AzureOptions

    def __init__(
        self,
        queue_client: QueueClient | None = None,
        dead_letter_queue_client: QueueClient | None = None,
        *,
        queue_name: str | None = None,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float = 30.0,
        max_dequeue_count: int = 10,
        message_encoding: str = "base64",
        message_ttl_seconds: int = -1,
        poll_interval: float = 0.05,
        max_poll_interval: float = 1.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        source: Source[QueueClient] | None = None,
        dead_letter_source: Source[QueueClient] | None = None,
    ) -> None:
        if source is None:
            if queue_client is None:
                raise FlowcraftError("pass queue_client=... (an azure.storage.queue.aio.QueueClient) or build "
                                     "the queue from config")
            source = Fixed(queue_client)
            if dead_letter_source is None:
                dead_letter_source = Fixed(dead_letter_queue_client or _sibling(queue_client, dead_letter_queue_name))
        assert dead_letter_source is not None
        self._source = source
        self._dead_source = dead_letter_source
        self.queue_name = queue_name or getattr(queue_client, "queue_name", "flowcraft-queue")
        self.dead_letter_queue_name = dead_letter_queue_name or f"{self.queue_name}-dlq"
        self.visibility_timeout = float(visibility_timeout)
        self.max_dequeue_count = max_dequeue_count
        self.base64 = message_encoding == "base64"
        self.message_ttl_seconds = message_ttl_seconds
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.max_message_bytes = max_message_bytes
        self._pause = poll_interval
        self._wake: asyncio.Event | None = None  # set when this process enqueues: no poll pause to wait out
        self._wake_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = AzureOptions.parse(options)
        return cls.build(parsed, AzureClients.shared(shared, parsed))

    @classmethod
    def build(cls, o: AzureOptions, clients: AzureClients) -> Self:
        """The queue its options describe, on the backend's ``clients``."""
        o.require_storage()
        return cls(queue_name=o.queue_name, dead_letter_queue_name=o.dlq_name,
                   visibility_timeout=o.visibility_timeout, max_dequeue_count=o.max_dequeue_count,
                   message_encoding=o.message_encoding, message_ttl_seconds=o.message_ttl_seconds,
                   poll_interval=o.poll_interval, max_poll_interval=o.max_poll_interval,
                   source=Shared(clients, lambda: clients.queue(o.queue_name)),
                   dead_letter_source=Shared(clients, lambda: clients.queue(o.dlq_name)))

    async def setup(self) -> None:
        """Create the queue and its dead-letter queue unless they exist."""
        from azure.core.exceptions import ResourceExistsError

        for client in (await self._source.get(), await self._dead_source.get()):
            try:
                await client.create_queue()
                log.info("created Azure queue %s", client.queue_name)
            except ResourceExistsError:
                pass

    async def close(self) -> None:
        await self._source.close()
        await self._dead_source.close()

    # ------------------------------------------------------------------------------------------ Queue
    async def enqueue(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        if not jobs:
            return
        client = await self._source.get()
        visibility = _delay(delay) or None
        texts = [self._encode(job.to_dict(), job) for job in jobs]
        try:
            await asyncio.gather(*(client.send_message(text, visibility_timeout=visibility,
                                                       time_to_live=self.message_ttl_seconds) for text in texts))
        except Exception as exc:
            raise unreachable(exc, self._server()) or exc from None
        if visibility is None:
            self._event().set()

    def _server(self) -> str:
        return f"Azure Storage Queue {self.queue_name!r}"

    def _event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._wake is None or self._wake_loop is not loop:
            self._wake, self._wake_loop = asyncio.Event(), loop
        return self._wake

    async def dequeue(self, max_jobs: int, wait: float) -> list[Delivery]:
        if max_jobs <= 0:
            return []
        client = await self._source.get()
        deadline = time.monotonic() + max(0.0, wait)
        wake = self._event()
        while True:
            wake.clear()  # what is enqueued from here on wakes the pause below
            count = min(MAX_MESSAGES_PER_RECEIVE, max_jobs)
            pager = client.receive_messages(messages_per_page=count, max_messages=count,
                                            visibility_timeout=max(1, _seconds(self.visibility_timeout)))
            try:
                messages = [message async for message in pager]
            except Exception as exc:
                raise unreachable(exc, self._server()) or exc from None
            out: list[Delivery] = []
            for message in messages:
                delivery = await self._delivery(message)
                if delivery is not None:
                    out.append(delivery)
            if messages:
                self._pause = self.poll_interval
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if not messages:
                # Azure queues have no long polling: pause (doubling), unless this process enqueues meanwhile
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(self._pause, remaining))
                self._pause = self.poll_interval if wake.is_set() else min(self.max_poll_interval, self._pause * 2)

    async def _delivery(self, message: Any) -> Delivery | None:
        content = str(message.content or "")
        dequeues = int(message.dequeue_count or 1)
        receipt = AzureReceipt(message.id, message.pop_receipt, content)
        try:
            data = decode(content)
            job = Job.from_dict(data)
            receipt.base = int(data.get(BASE_FIELD, 0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = f"unreadable message {message.id}: {type(exc).__name__}: {exc}"
            log.warning("dead-lettering %s", reason)
            await self._to_dead_letter(receipt, None, reason, dequeues)
            return None
        if dequeues - receipt.base > self.max_dequeue_count:
            reason = (f"received {dequeues - receipt.base} times without being handled (max_dequeue_count="
                      f"{self.max_dequeue_count}): its workers died or lost it each time")
            log.warning("dead-lettering job %s of run %s: %s", job.key, job.run_id, reason)
            await self._to_dead_letter(receipt, job, reason, dequeues)
            return None
        return Delivery(job, receipt, deliveries=dequeues)

    async def ack(self, delivery: Delivery) -> None:
        receipt = _receipt(delivery)
        client = await self._source.get()
        async with receipt.lock:
            await _ignore_gone(client.delete_message(receipt.message_id, receipt.pop_receipt), receipt, "delete")

    async def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        receipt = _receipt(delivery)
        data = delivery.job.to_dict()
        data[BASE_FIELD] = delivery.deliveries
        content = self._encode(data, delivery.job)
        await self._update(receipt, _delay(delay), content)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        await self._update(_receipt(delivery), max(1, _seconds(seconds)), None)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._to_dead_letter(_receipt(delivery), delivery.job, reason, delivery.deliveries)

    async def depth(self) -> int:
        """Jobs not yet deleted, as Azure estimates them (``approximate_message_count``): Azure does not tell
        visible messages from invisible ones, so delayed jobs and those in flight are counted too."""
        client = await self._source.get()
        properties = await client.get_queue_properties()
        return int(properties.approximate_message_count or 0)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Peek at the dead-letter queue (nothing is removed; Azure peeks at most 32 messages)."""
        client = await self._dead_source.get()
        messages = await client.peek_messages(max_messages=max(1, min(MAX_MESSAGES_PER_RECEIVE, limit)))
        return [_dead_letter(message) for message in messages][:limit]

    async def delete_dead_letters(self, ids: Sequence[str]) -> int:
        """Remove dead letters by Azure message id. Azure deletes only with a pop receipt, so the dead-letter
        queue is received (hidden for a moment) until every id was found or a receive brings nothing; the
        others are made visible again at once. (Peeks see at most 32 messages: ``--all`` replays 32 a time.)"""
        wanted = {str(i) for i in ids}
        if not wanted:
            return 0
        client = await self._dead_source.get()
        removed, others = 0, []
        while wanted:
            batch = [message async for message in client.receive_messages(
                messages_per_page=MAX_MESSAGES_PER_RECEIVE, max_messages=MAX_MESSAGES_PER_RECEIVE,
                visibility_timeout=30)]
            if not batch:
                break
            for message in batch:
                if message.id in wanted:
                    await client.delete_message(message)
                    wanted.discard(message.id)
                    removed += 1
                else:
                    others.append(message)
        for message in others:
            await client.update_message(message, visibility_timeout=0)
        return removed

    # ------------------------------------------------------------------------------------------ internals
    def _encode(self, data: Mapping[str, Any], job: Job | None) -> str:
        text = dumps(data)
        if self.base64:
            text = base64.b64encode(text.encode("utf-8")).decode("ascii")
            size = len(text)
        else:
            size = len(escape(text).encode("utf-8"))
        if size > self.max_message_bytes:
            what = f"job {job.key!r} of run {job.run_id!r}" if job is not None else "a dead letter"
            raise MessageTooLargeError(
                f"{what} is {size / 1024:.0f} KB as a queue message; an Azure Storage Queue message holds at "
                f"most {self.max_message_bytes / 1024:.0f} KB",
                hint="pass large data through the context (or a blob store), not as node input")
        return text

    async def _update(self, receipt: AzureReceipt, visibility: int, content: str | None) -> None:
        client = await self._source.get()
        async with receipt.lock:
            try:
                updated = await client.update_message(receipt.message_id, receipt.pop_receipt,
                                                      visibility_timeout=visibility, content=content)
            except Exception as exc:
                if not _gone(exc):
                    raise
                log.debug("message %s not updated (gone or received again): %s", receipt.message_id, exc)
                return
            receipt.pop_receipt = str(updated.pop_receipt)
            if content is not None:
                receipt.content = content

    async def _to_dead_letter(self, receipt: AzureReceipt, job: Job | None, reason: str, deliveries: int) -> None:
        envelope: dict[str, Any] = {"reason": reason[:_REASON_CHARS] or "unknown", "queue": self.queue_name,
                                    "message_id": receipt.message_id, "deliveries": max(1, deliveries),
                                    "job": job.to_dict() if job is not None else None}
        if job is None:
            envelope["content"] = receipt.content[:MAX_MESSAGE_BYTES // 2]
        try:
            text = self._encode(envelope, None)
        except MessageTooLargeError:  # a job near the limit: keep its identity, drop its input
            assert job is not None
            envelope["job"] = {k: v for k, v in job.to_dict().items() if k not in ("input", "payload")}
            envelope["truncated"] = True
            text = self._encode(envelope, None)
        dead = await self._dead_source.get()
        await dead.send_message(text, time_to_live=self.message_ttl_seconds)
        client = await self._source.get()
        async with receipt.lock:
            await _ignore_gone(client.delete_message(receipt.message_id, receipt.pop_receipt), receipt, "delete")


def decode(content: str) -> dict[str, Any]:
    """The JSON object a message's text holds, plain or base64 (base64 text never starts with ``{`` or ``[``)."""
    text = content.strip()
    if not text.startswith(("{", "[")):
        try:
            text = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"neither JSON nor base64-encoded JSON ({exc})") from None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"a job is a JSON object, got {type(data).__name__}")
    return data


async def _ignore_gone(call: Any, receipt: AzureReceipt, what: str) -> None:
    try:
        await call
    except Exception as exc:
        if not _gone(exc):
            raise
        log.debug("%s of message %s skipped (gone or received again): %s", what, receipt.message_id, exc)


def _gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the message is gone or was received again (404, or 400 PopReceiptMismatch)."""
    code = status_code(exc)
    if code == 404:
        return True
    error = getattr(exc, "error_code", None)
    return code == 400 and str(getattr(error, "value", error)) in _GONE_CODES


def _receipt(delivery: Delivery) -> AzureReceipt:
    receipt = delivery.receipt
    if not isinstance(receipt, AzureReceipt):
        raise TypeError("this delivery was not received from an AzureQueue")
    return receipt


def _seconds(value: float) -> int:
    """Whole seconds for Azure, rounded up (never early), within [0, 7 days]."""
    return max(0, min(MAX_VISIBILITY_SECONDS, math.ceil(value - 1e-6)))


def _delay(value: float) -> int:
    """A delay in whole seconds, rounded up, capped at one hop (``MAX_DELAY_SECONDS``)."""
    return min(MAX_DELAY_SECONDS, _seconds(value))


def _sibling(client: QueueClient, name: str | None) -> QueueClient:
    """The dead-letter queue client next to ``client``: same account, endpoint and credential."""
    from azure.storage.queue.aio import QueueClient

    dlq = name or f"{client.queue_name}-dlq"
    base = client.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[0]
    return QueueClient.from_queue_url(f"{base}/{dlq}", credential=client.credential)


def _dead_letter(message: Any) -> DeadLetter:
    content = str(message.content or "")
    try:
        envelope = decode(content)
    except ValueError:
        return DeadLetter(None, reason="moved to the dead-letter queue by another tool (not a Flowcraft "
                                       "envelope)", raw=content, id=str(message.id or ""))
    if "reason" not in envelope:
        try:
            job: Job | None = Job.from_dict(envelope)
        except (KeyError, TypeError, ValueError):
            job = None
        return DeadLetter(job, reason="moved to the dead-letter queue by another tool", raw=envelope,
                          id=str(message.id or ""))
    try:
        job = Job.from_dict(envelope["job"]) if envelope.get("job") else None
    except (KeyError, TypeError, ValueError):
        job = None
    return DeadLetter(job, reason=str(envelope["reason"]), raw=envelope, id=str(message.id or ""))
