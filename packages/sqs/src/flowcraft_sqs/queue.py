"""Amazon SQS queue: long polling, batch receive/send/delete, visibility heartbeats, delays, dead letters.

* A message body is the job's JSON (``Job.to_dict``); ``Delivery.deliveries`` is ``ApproximateReceiveCount``
  plus the deliveries carried over from earlier copies (attribute ``flowcraft-deliveries``).
* ``ack`` = DeleteMessageBatch of the deletes of concurrent jobs: a batch that is not full waits up to
  ``DELETE_LINGER`` (10 ms) while other received messages are still unsettled (their acks come soon).
* ``extend`` = ChangeMessageVisibility. ``release`` of a standard queue sends a fresh copy (DelaySeconds,
  at most 900 s) carrying the delivery count, then deletes the received one: SQS's receive count restarts,
  so the redrive policy only catches messages whose consumers died (crash loops), never long sleeps
  (re-delay chaining: the engine releases a job that is still early until its ``due_at``). FIFO queues
  have no per-message delay; there ``release`` changes the visibility instead.
* ``dead_letter`` sends the body with the reason (attribute ``flowcraft-reason``) to the dead-letter queue
  and deletes the original; ``dead_letters`` peeks at it (VisibilityTimeout=0, nothing is deleted).
* ``receive`` (once ``prefetch_with`` wired the DynamoDB stores, as the ``sqs`` preset does) takes each job's
  lease (``begin``), which returns the job's run record too while the run item can tell it
  (``DynamoDbCoordinationStore.begin_prefetch``); the other records are read in one BatchGetItem
  (``prefetches_status``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

from flowcraft.errors import FlowcraftError
from flowcraft.spi import Begin, DeadLetter, Delivery, Job, PrefetchingQueue, RunRecord
from flowcraft_sqs._aws import (
    MAX_DELAY_SECONDS,
    MAX_VISIBILITY_SECONDS,
    AwsClients,
    ClientSource,
    MessageTooLargeError,
    SqsOptions,
    backoff,
    dumps,
    error_code,
    is_client_error,
    log,
    source_of,
)
from flowcraft_sqs._batch import Coalescer, Entry

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

    from flowcraft_sqs.coordination import DynamoDbCoordinationStore
    from flowcraft_sqs.status import DynamoDbStatusStore

DELIVERIES_ATTRIBUTE = "flowcraft-deliveries"
REASON_ATTRIBUTE = "flowcraft-reason"
SOURCE_ATTRIBUTE = "flowcraft-source-queue"
_GONE = ("ReceiptHandleIsInvalid", "AWS.SimpleQueueService.MessageNotInflight", "MessageNotInflight",
         "InvalidParameterValue", "AWS.SimpleQueueService.NonExistentQueue")
#: how long a batch of deletes that is not full waits while other received messages are unsettled (seconds)
DELETE_LINGER = 0.01
MAX_UNSETTLED = 4096  # receipt handles remembered as unsettled (beyond: forgotten, the wait is only a heuristic)
_MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


@dataclass(frozen=True, slots=True)
class SqsReceipt:
    """What ``Delivery.receipt`` holds for an SQS message."""

    handle: str
    message_id: str
    body: str


class SqsQueue(PrefetchingQueue):
    name = "sqs"
    Options = SqsOptions
    records_after_leases: ClassVar[bool] = True  # a lease brings its record while the run item can tell it

    def __init__(
        self,
        client: SQSClient | None = None,
        queue_url: str | None = None,
        *,
        queue_name: str = "flowcraft-queue",
        dead_letter_queue_url: str | None = None,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float = 30.0,
        wait_time_seconds: int = 20,
        fifo: bool = False,
        max_receive_count: int = 10,
        max_message_bytes: int = 256 * 1024,
        message_retention_seconds: int = 14 * 24 * 3600,
        source: ClientSource[SQSClient] | None = None,
    ) -> None:
        self._source = source_of(client, source)
        self.queue_url = queue_url
        self.fifo = fifo
        self.queue_name = queue_name + (".fifo" if fifo and not queue_name.endswith(".fifo") else "")
        base = self.queue_name.removesuffix(".fifo")
        self.dead_letter_queue_name = dead_letter_queue_name or (f"{base}-dlq.fifo" if fifo else f"{base}-dlq")
        self.dead_letter_queue_url = dead_letter_queue_url
        self.visibility_timeout = float(visibility_timeout)
        self.wait_time_seconds = int(wait_time_seconds)
        self.max_receive_count = max_receive_count
        self.max_message_bytes = max_message_bytes
        self.message_retention_seconds = message_retention_seconds
        self._url: str | None = queue_url
        self._dlq_url: str | None = dead_letter_queue_url
        self._sender = Coalescer(self._send_batch, max_bytes=max_message_bytes)
        # receipt handles of received messages not yet acked, released or dead-lettered: while there are
        # some, a delete waits up to DELETE_LINGER for theirs (an ack is off the run's path: its successors
        # were sent already)
        self._unsettled: set[str] = set()
        self._deleter = Coalescer(self._delete_batch, linger=DELETE_LINGER, expect=lambda: bool(self._unsettled))

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = SqsOptions.parse(options)
        return cls.build(parsed, AwsClients.shared(shared, parsed))

    @classmethod
    def build(cls, o: SqsOptions, clients: AwsClients) -> Self:
        """The queue its options describe, on the backend's ``clients``."""
        return cls(
            queue_url=o.queue_url, queue_name=o.main_queue_name, dead_letter_queue_url=o.dead_letter_queue_url,
            dead_letter_queue_name=o.dlq_name, visibility_timeout=o.visibility_timeout,
            wait_time_seconds=o.wait_time_seconds, fifo=o.fifo, max_receive_count=o.max_receive_count,
            max_message_bytes=o.max_message_bytes, message_retention_seconds=o.message_retention_seconds,
            source=clients.source("sqs"),
        )

    async def setup(self) -> None:
        from flowcraft_sqs.provisioning import ensure_queue, queue_arn, redrive_policy

        client = await self._source.get()
        retention = str(self.message_retention_seconds)
        if self.dead_letter_queue_url:
            dlq_url = self.dead_letter_queue_url
        else:
            dlq_url = await ensure_queue(client, self.dead_letter_queue_name,
                                         {"MessageRetentionPeriod": retention}, fifo=self.fifo)
        attributes = {
            "VisibilityTimeout": str(_seconds(self.visibility_timeout, MAX_VISIBILITY_SECONDS)),
            "ReceiveMessageWaitTimeSeconds": str(self.wait_time_seconds),
            "MessageRetentionPeriod": retention,
            "RedrivePolicy": redrive_policy(await queue_arn(client, dlq_url), self.max_receive_count),
        }
        self._url = await ensure_queue(client, self.queue_name, attributes, fifo=self.fifo)
        self._dlq_url = dlq_url

    async def close(self) -> None:
        await self._source.close()

    # ------------------------------------------------------------------------------------------ urls
    async def _main(self) -> tuple[Any, str]:
        client = await self._source.get()
        if self._url is None:
            self._url = await self._lookup(client, self.queue_name)
        return client, self._url

    async def _dead(self) -> tuple[Any, str]:
        client, url = await self._main()
        if self._dlq_url is None:
            response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
            policy = response.get("Attributes", {}).get("RedrivePolicy")
            name = self.dead_letter_queue_name
            if policy:
                name = str(json.loads(policy)["deadLetterTargetArn"]).rsplit(":", 1)[-1]
            self._dlq_url = await self._lookup(client, name)
        return client, self._dlq_url

    @staticmethod
    async def _lookup(client: SQSClient, name: str) -> str:
        try:
            return str((await client.get_queue_url(QueueName=name))["QueueUrl"])
        except Exception as exc:
            if error_code(exc) in _MISSING_QUEUE:
                raise FlowcraftError(f"SQS queue {name!r} does not exist",
                                     hint="run `flowcraft setup --backend sqs` (or create it)") from None
            raise

    # ------------------------------------------------------------------------------------------ prefetch
    async def _take_lease(self, job: Job, owner: str, lease_seconds: float) -> tuple[Begin, RunRecord | None]:
        """The job's lease, which brings its record where the run item can tell it
        (``DynamoDbCoordinationStore.begin_prefetch``, ``DynamoDbStatusStore.record_of``)."""
        status, coordination = cast("tuple[DynamoDbStatusStore, DynamoDbCoordinationStore]", self._prefetch)
        begin, item = await coordination.begin_prefetch(job, owner, lease_seconds)
        return begin, None if item is None else status.record_of(item)

    # ------------------------------------------------------------------------------------------ Queue
    async def enqueue(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        if not jobs:
            return
        await self._sender.submit([self._entry(dumps(job.to_dict(), "job"), job, delay) for job in jobs])

    async def dequeue(self, max_jobs: int, wait: float) -> list[Delivery]:
        if max_jobs <= 0:
            return []
        client, url = await self._main()
        wait_seconds = 0 if wait <= 0 else min(self.wait_time_seconds, max(1, math.ceil(wait - 1e-6)))
        out: list[Delivery] = []
        first = True
        while len(out) < max_jobs:
            count = min(10, max_jobs - len(out))
            response = await client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=count, WaitTimeSeconds=wait_seconds if first else 0,
                VisibilityTimeout=_seconds(self.visibility_timeout, MAX_VISIBILITY_SECONDS),
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=[DELIVERIES_ATTRIBUTE],
            )
            messages = response.get("Messages", [])
            for message in messages:
                delivery = await self._delivery(message)
                if delivery is not None:
                    out.append(delivery)
            if len(messages) < count:
                break
            first = False
        return out

    async def _delivery(self, message: Mapping[str, Any]) -> Delivery | None:
        receipt = SqsReceipt(message["ReceiptHandle"], message.get("MessageId", ""), message.get("Body", ""))
        received = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        carried_text = message.get("MessageAttributes", {}).get(DELIVERIES_ATTRIBUTE, {}).get("StringValue")
        carried = int(carried_text) if carried_text and carried_text.isdigit() else 0
        try:
            job = Job.from_dict(json.loads(receipt.body))
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"unreadable message {receipt.message_id}: {type(exc).__name__}: {exc}"
            log.warning("dead-lettering %s", reason)
            await self._to_dead_letter(receipt, None, reason, carried + received)
            return None
        if len(self._unsettled) >= MAX_UNSETTLED:  # deliveries a consumer never settled: forget them
            self._unsettled.clear()
        self._unsettled.add(receipt.handle)
        return Delivery(job, receipt, deliveries=carried + received)

    async def ack(self, delivery: Delivery) -> None:
        await self._delete(_receipt(delivery))

    async def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        receipt = _receipt(delivery)
        if self.fifo:
            self._unsettled.discard(receipt.handle)
            await self._change_visibility(receipt, _seconds(delay, MAX_DELAY_SECONDS))
            return
        await self._sender.submit([self._entry(receipt.body, delivery.job, delay, carried=delivery.deliveries)])
        await self._delete(receipt)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        await self._change_visibility(_receipt(delivery), _seconds(seconds, MAX_VISIBILITY_SECONDS))

    async def depth(self) -> int:
        """Jobs waiting to be delivered, as SQS estimates them: ApproximateNumberOfMessages (visible) plus
        ApproximateNumberOfMessagesDelayed (delay and retry backoff); those in flight (NotVisible) are left out."""
        client, url = await self._main()
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
        response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        attributes = response.get("Attributes", {})
        return sum(int(attributes.get(name, 0)) for name in names)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._to_dead_letter(_receipt(delivery), delivery.job, reason, delivery.deliveries)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Peek at the dead-letter queue (receive with VisibilityTimeout=0; nothing is deleted). SQS has no
        real peek, so this is best effort: it stops when a receive brings nothing new."""
        client, url = await self._dead()
        seen: dict[str, DeadLetter] = {}
        quiet = 0
        while len(seen) < limit and quiet < 3:
            response = await client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0 if seen else 1, VisibilityTimeout=0,
                MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"],
            )
            fresh = 0
            for message in response.get("Messages", []):
                message_id = message.get("MessageId", "")
                if message_id in seen:
                    continue
                fresh += 1
                seen[message_id] = _dead_letter(message)
            quiet = 0 if fresh else quiet + 1
        return list(seen.values())[:limit]

    async def delete_dead_letters(self, ids: Sequence[str]) -> int:
        """Remove dead letters by SQS message id. SQS deletes only by receipt handle, so the dead-letter queue
        is received (hidden for a moment) until every id was found or a receive brings nothing; the others are
        made visible again at once."""
        wanted = {str(i) for i in ids}
        if not wanted:
            return 0
        client, url = await self._dead()
        removed, quiet, others = 0, 0, []
        while wanted and quiet < 3:
            response = await client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                                    VisibilityTimeout=30)
            messages = response.get("Messages", [])
            quiet = 0 if messages else quiet + 1
            for message in messages:
                if message.get("MessageId") in wanted:
                    await client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    wanted.discard(message["MessageId"])
                    removed += 1
                else:
                    others.append(message["ReceiptHandle"])
        for handle in others:
            await client.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)
        return removed

    # ------------------------------------------------------------------------------------------ internals
    def _entry(self, body: str, job: Job, delay: float, carried: int = 0) -> tuple[dict[str, Any], int]:
        request: dict[str, Any] = {"MessageBody": body}
        size = len(body.encode("utf-8"))
        if carried:
            request["MessageAttributes"] = {
                DELIVERIES_ATTRIBUTE: {"DataType": "Number", "StringValue": str(carried)}}
            size += len(DELIVERIES_ATTRIBUTE) + len("Number") + len(str(carried))
        if self.fifo:
            request["MessageGroupId"] = _group(job)
            request["MessageDeduplicationId"] = uuid.uuid4().hex
        elif delay > 0:
            request["DelaySeconds"] = _seconds(delay, MAX_DELAY_SECONDS)
        if size > self.max_message_bytes:
            raise MessageTooLargeError(
                f"job {job.key!r} of run {job.run_id!r} is {size / 1024:.0f} KB; an SQS message holds at most "
                f"{self.max_message_bytes / 1024:.0f} KB",
                hint="pass large data through the context (or a blob store), not as node input",
            )
        return request, size

    async def _send_batch(self, entries: list[Entry]) -> list[Any]:
        client, url = await self._main()
        results: list[Any] = [None] * len(entries)
        pending = list(range(len(entries)))
        for attempt in range(5):
            response = await client.send_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), **entries[i].request} for i in pending])
            for ok in response.get("Successful", []):
                results[int(ok["Id"])] = ok.get("MessageId")
            retry = []
            for failed in response.get("Failed", []):
                index = int(failed["Id"])
                if failed.get("SenderFault") or attempt == 4:
                    results[index] = FlowcraftError(
                        f"SQS refused a message: {failed.get('Code')}: {failed.get('Message', '')}")
                else:
                    retry.append(index)
            if not retry:
                break
            pending = retry
            await asyncio.sleep(backoff(attempt))
        return results

    async def _delete_batch(self, entries: list[Entry]) -> list[Any]:
        client, url = await self._main()
        results: list[Any] = [None] * len(entries)
        pending = list(range(len(entries)))
        for attempt in range(5):
            response = await client.delete_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), **entries[i].request} for i in pending])
            retry = []
            for failed in response.get("Failed", []):
                index = int(failed["Id"])
                code = str(failed.get("Code", ""))
                if code in _GONE:
                    continue  # already deleted, or its receipt expired: the message is redelivered anyway
                if failed.get("SenderFault") or attempt == 4:
                    results[index] = FlowcraftError(f"SQS could not delete a message: {code}: "
                                                    f"{failed.get('Message', '')}")
                else:
                    retry.append(index)
            if not retry:
                break
            pending = retry
            await asyncio.sleep(backoff(attempt))
        return results

    async def _change_visibility(self, receipt: SqsReceipt, seconds: int) -> None:
        client, url = await self._main()
        try:
            await client.change_message_visibility(QueueUrl=url, ReceiptHandle=receipt.handle,
                                                   VisibilityTimeout=seconds)
        except Exception as exc:
            if not is_client_error(exc, *_GONE):
                raise
            log.debug("visibility of message %s not changed: %s", receipt.message_id, error_code(exc))

    async def _to_dead_letter(self, receipt: SqsReceipt, job: Job | None, reason: str, deliveries: int) -> None:
        client, dlq = await self._dead()
        request: dict[str, Any] = {
            "QueueUrl": dlq, "MessageBody": receipt.body or "{}",
            "MessageAttributes": {
                REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:4000] or "unknown"},
                SOURCE_ATTRIBUTE: {"DataType": "String", "StringValue": self.queue_name},
                DELIVERIES_ATTRIBUTE: {"DataType": "Number", "StringValue": str(max(1, deliveries))},
            },
        }
        if self.fifo:
            request["MessageGroupId"] = _group(job) if job else "unreadable"
            request["MessageDeduplicationId"] = uuid.uuid4().hex
        await client.send_message(**request)
        await self._delete(receipt)

    async def _delete(self, receipt: SqsReceipt) -> None:
        self._unsettled.discard(receipt.handle)
        await self._deleter.submit([({"ReceiptHandle": receipt.handle}, 0)])


def _receipt(delivery: Delivery) -> SqsReceipt:
    receipt = delivery.receipt
    if not isinstance(receipt, SqsReceipt):
        raise TypeError("this delivery was not received from an SqsQueue")
    return receipt


def _seconds(value: float, cap: int) -> int:
    """Whole seconds for SQS, rounded up (never early), within [0, cap]."""
    return max(0, min(cap, math.ceil(value - 1e-6)))


def _group(job: Job) -> str:
    """FIFO message group per job (so a run's parallel branches and sleeps never block each other)."""
    return hashlib.sha256(f"{job.run_id}\0{job.key}".encode("utf-8", "surrogatepass")).hexdigest()[:64]


def _dead_letter(message: Mapping[str, Any]) -> DeadLetter:
    attributes = message.get("MessageAttributes", {})
    reason = attributes.get(REASON_ATTRIBUTE, {}).get("StringValue")
    if reason is None:
        reason = "moved by the queue's redrive policy: received maxReceiveCount times without being handled"
    try:
        job: Job | None = Job.from_dict(json.loads(message.get("Body", "")))
    except (ValueError, KeyError, TypeError):
        job = None
    return DeadLetter(job, reason=str(reason), raw=message, id=str(message.get("MessageId", "")))
