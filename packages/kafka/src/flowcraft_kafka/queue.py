"""KafkaQueue: jobs as records of a topic, read by a consumer group (confluent-kafka).

How at-least-once delivery works without per-message visibility (README "Delivery"):

* One background thread per queue owns the consumers and keeps polling while nodes run, so the worker stays
  in its group; records are fetched ahead into a buffer of ``max_buffered`` (beyond it the partitions are
  paused, and polling goes on). ``dequeue`` hands records out from that buffer: several records of one
  partition are in flight at once, so a slow node never blocks other runs (no head-of-line blocking).
* A job is finished by ``ack``, ``release`` (a copy was produced first) or ``dead_letter`` (the dead letter
  was produced first). Offsets are committed only *below the lowest unfinished record* of each partition:
  a restart or a rebalance redelivers everything not finished, nothing is skipped.
* Rebalances: when a partition is revoked its finished prefix is committed, its buffered records are dropped
  and its records still in the workers' hands no longer move the committed offset (the new owner receives
  them again). A worker that dies loses its partitions after ``session_timeout_ms``.
* Within one consumer a record not acked nor extended for ``visibility_timeout`` seconds is handed out again
  (``Delivery.deliveries`` + 1), like a visibility timeout. A live but stuck consumer (a node that hangs
  while the process heartbeats its group) keeps its partitions: the run is then covered by the coordination
  lease (another worker's ``begin`` takes the job once the lease expires) and by the reconciler, which
  re-enqueues the pending jobs of a run with no live lease.
* Delays (retry backoff, sleeps, a job given back for later) go to the delay topic with the due time in a
  header; a forwarder (consumer group ``<group_id>-delay``, in the same thread) holds them until due,
  produces them to the jobs topic and only then commits them.
* ``dead_letter`` produces the record to the dead-letter topic with the reason in header
  ``flowcraft-reason``; a record that is not a job goes there too, and its partition moves on.
* Successors without waiting: in a task that committed a transition of a job this consumer holds
  (``finishing``, called by the preset's ``KafkaCoordinationStore.commit``), ``enqueue`` hands the records to
  the producer and returns; the job's ``ack`` then returns at once and its record is finished only when every
  one of them is confirmed (acks=all), or handed out again if one is refused. Anywhere else ``enqueue`` waits.
* ``receive`` (with ``prefetch_with``, as the preset wires it) reads the run records of a batch in one Redis
  pipeline while the leases are taken (``prefetches_status``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Self

from flowcraft.errors import FlowcraftError, ServerUnreachableError, StoreLimitError
from flowcraft.spi import DeadLetter, Delivery, Job, PrefetchingQueue, parse_options
from flowcraft_kafka.options import KafkaOptions

log = logging.getLogger("flowcraft.kafka")

DUE_HEADER = "flowcraft-due"
DELIVERIES_HEADER = "flowcraft-deliveries"
REASON_HEADER = "flowcraft-reason"
SOURCE_HEADER = "flowcraft-source"
#: a record of the dead-letter topic that marks the dead letter ``<partition>:<offset>`` handled
HANDLED_HEADER = "flowcraft-handled"

TP = tuple[str, int]


class MessageTooLargeError(StoreLimitError):
    """A job does not fit in one Kafka record (``max_message_bytes``)."""


@dataclass(frozen=True, slots=True)
class KafkaReceipt:
    """What ``Delivery.receipt`` holds: the record's place and this delivery's token."""

    topic: str
    partition: int
    offset: int
    token: int
    value: bytes = field(repr=False)


@dataclass(slots=True)
class _Partition:
    epoch: int
    unfinished: set[int] = field(default_factory=set)
    next_offset: int | None = None
    committed: int = -1

    def position(self) -> int | None:
        if self.unfinished:
            return min(self.unfinished)
        return self.next_offset


@dataclass(slots=True)
class _Record:
    tp: TP
    offset: int
    epoch: int
    job: Job
    value: bytes
    deliveries: int
    deadline: float = 0.0
    token: int = 0


@dataclass(slots=True)
class _Successors:
    """What a task handling job ``(run_id, job_key)`` produced without waiting: ``unconfirmed`` records not yet
    confirmed by the brokers, whether one was refused, and the job's own record once acked (finished when
    nothing is unconfirmed)."""

    run_id: str
    job_key: str
    unconfirmed: int = 0
    refused: bool = False
    record: _Record | None = None


#: the task that committed transitions (``finishing``) and those jobs, the latest last; see the module docstring
_FINISHING: ContextVar[tuple[object, dict[tuple[str, str], _Successors]] | None] = ContextVar(
    "flowcraft_kafka_finishing", default=None)


def _finishing_jobs(create: bool = False) -> dict[tuple[str, str], _Successors] | None:
    """The current task's jobs (tasks it creates see their creator's context: theirs are their own)."""
    task = asyncio.current_task()
    held = _FINISHING.get()
    if held is not None and held[0] is task:
        return held[1]
    if not create:
        return None
    jobs: dict[tuple[str, str], _Successors] = {}
    _FINISHING.set((task, jobs))
    return jobs


def finishing(run_id: str, job_key: str) -> None:
    """Say that the current task committed a transition of job ``(run_id, job_key)``: the successors it
    enqueues next are produced without waiting, and the job's record is finished once they are confirmed."""
    jobs = _finishing_jobs(create=True)
    assert jobs is not None
    key = (run_id, job_key)
    jobs[key] = jobs.pop(key) if key in jobs else _Successors(run_id, job_key)


def _finishing_now() -> _Successors | None:
    """The job whose transition the current task committed last, if any."""
    jobs = _finishing_jobs()
    return next(reversed(jobs.values())) if jobs else None



def _headers(msg: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in msg.headers() or ():
        if value is not None:
            out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def _deliveries(headers: Mapping[str, str]) -> int:
    text = headers.get(DELIVERIES_HEADER, "0")
    return int(text) if text.isdigit() else 0


class _Tracker:
    """Per-partition unfinished offsets of one consumer; what may be committed."""

    def __init__(self) -> None:
        self.parts: dict[TP, _Partition] = {}
        self.epochs = itertools.count(1)
        self.dirty = False

    def assign(self, tps: Sequence[TP]) -> None:
        for tp in tps:
            self.parts[tp] = _Partition(next(self.epochs))

    def seen(self, tp: TP, offset: int) -> int | None:
        part = self.parts.get(tp)
        if part is None:
            return None
        part.unfinished.add(offset)
        if part.next_offset is None or offset + 1 > part.next_offset:
            part.next_offset = offset + 1
        return part.epoch

    def finish(self, tp: TP, offset: int, epoch: int) -> None:
        part = self.parts.get(tp)
        if part is not None and part.epoch == epoch:
            part.unfinished.discard(offset)
            self.dirty = True

    def live(self, tp: TP, epoch: int) -> bool:
        part = self.parts.get(tp)
        return part is not None and part.epoch == epoch

    def commits(self, tps: Sequence[TP] | None = None) -> list[tuple[TP, int]]:
        out = []
        for tp in tps if tps is not None else list(self.parts):
            part = self.parts.get(tp)
            if part is None:
                continue
            position = part.position()
            if position is not None and position > part.committed:
                out.append((tp, position))
        return out

    def committed(self, done: Sequence[tuple[TP, int]]) -> None:
        for tp, position in done:
            part = self.parts.get(tp)
            if part is not None and position > part.committed:
                part.committed = position


class KafkaQueue(PrefetchingQueue):
    name = "kafka"
    Options = KafkaOptions

    def __init__(self, options: KafkaOptions) -> None:
        self.options = options
        self.topic = options.topic_name
        self.delay_topic = options.delay_topic
        self.dead_letter_topic = options.dead_letter_topic
        self.group_id = options.group_id
        self.visibility_timeout = float(options.visibility_timeout)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._consuming = False
        self._producer: Any = None
        self._producer_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._reached = False
        # consumer state (under _lock)
        self._ready: deque[_Record] = deque()
        self._inflight: dict[int, _Record] = {}
        self._tokens = itertools.count(1)
        self._main = _Tracker()
        self._delay = _Tracker()
        self._delayed: list[tuple[float, int, TP, int, int, bytes, dict[str, str]]] = []
        self._seq = itertools.count()
        self._delay_paused = False
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"KafkaQueue(bootstrap_servers={self.options.bootstrap_servers!r}, topic={self.topic!r})"

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        return cls(parse_options(KafkaOptions, options))

    # ------------------------------------------------------------------------------------------ clients
    def _config(self) -> dict[str, Any]:
        o = self.options
        conf: dict[str, Any] = {"bootstrap.servers": o.bootstrap_servers, "logger": log,
                                "error_cb": self._on_error}
        for key, value in (("security.protocol", o.security_protocol), ("sasl.mechanism", o.sasl_mechanism),
                           ("sasl.username", o.sasl_username), ("sasl.password", o.sasl_password)):
            if value:
                conf[key] = value
        return conf

    def _on_error(self, error: Any) -> None:
        log.debug("kafka client: %s", error)

    def _consumer_config(self, group: str) -> dict[str, Any]:
        session = self.options.session_timeout_ms
        return {**self._config(), "group.id": group, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "session.timeout.ms": session,
                "heartbeat.interval.ms": max(100, min(3000, session // 3)),
                "fetch.wait.max.ms": self.options.fetch_wait_max_ms, "enable.partition.eof": False}

    async def _ensure_reachable(self) -> None:
        if self._reached:
            return
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._config())
        try:
            timeout = self.options.connect_timeout
            await asyncio.get_running_loop().run_in_executor(None, lambda: admin.list_topics(timeout=timeout))
        except Exception as exc:
            raise ServerUnreachableError(
                f"Kafka at {self.options.bootstrap_servers} cannot be reached ({type(exc).__name__})",
                hint="check bootstrap_servers and that the brokers run") from None
        self._reached = True

    async def _start(self, consuming: bool) -> None:
        await self._ensure_reachable()
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._wake = loop, asyncio.Event()
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer({**self._config(), "enable.idempotence": True, "acks": "all",
                                       "linger.ms": 2, "message.timeout.ms": 30000,
                                       "message.max.bytes": max(self.options.max_message_bytes + 4096, 1000000)})
            # delivery reports are served by their own thread, as soon as they arrive
            self._producer_thread = threading.Thread(target=self._serve_producer, args=(self._producer,),
                                                     name=f"flowcraft-kafka-producer-{self.topic}", daemon=True)
            self._producer_thread.start()
        if consuming:
            self._consuming = True
        if self._consuming and (self._thread is None or not self._thread.is_alive()):  # first use, or it died
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"flowcraft-kafka-{self.topic}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------------------------------ produce
    async def _produce(self, items: Sequence[tuple[str, bytes, bytes | None, dict[str, str]]]) -> None:
        """Produce records and wait until the brokers have them all (acks=all)."""
        if not items:
            return
        await self._start(False)
        loop = asyncio.get_running_loop()
        futures = []
        for topic, value, key, headers in items:
            future: asyncio.Future[None] = loop.create_future()
            futures.append(future)
            self._send(topic, value, key, headers, self._resolver(loop, future))
        await asyncio.gather(*futures)

    @staticmethod
    def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> Any:
        def done(err: Any, msg: Any) -> None:
            def settle() -> None:
                if future.done():
                    return
                if err is not None:
                    future.set_exception(FlowcraftError(f"Kafka refused a record: {err}"))
                else:
                    future.set_result(None)
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the event loop that waited for it is closed: nobody waits any more
                pass
        return done

    def _send(self, topic: str, value: bytes, key: bytes | None, headers: Mapping[str, str], callback: Any) -> None:
        producer = self._producer
        for _ in range(100):
            try:
                producer.produce(topic, value=value, key=key, headers=list(headers.items()), on_delivery=callback)
                return
            except BufferError:
                producer.poll(0.05)
        raise FlowcraftError("Kafka producer queue stays full", hint="are the brokers reachable?")

    def _record(self, job: Job) -> bytes:
        value = json.dumps(job.to_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
        if len(value) > self.options.max_message_bytes:
            raise MessageTooLargeError(
                f"job {job.key!r} of run {job.run_id!r} is {len(value)} bytes; a record holds at most "
                f"{self.options.max_message_bytes} (max_message_bytes)",
                hint="pass large data through the context (or a blob store), not as node input")
        return value

    def _routed(self, value: bytes, key: bytes | None, delay: float,
                headers: dict[str, str]) -> tuple[str, bytes, bytes | None, dict[str, str]]:
        if delay > 0:
            return self.delay_topic, value, key, {**headers, DUE_HEADER: repr(time.time() + delay)}
        return self.topic, value, key, headers

    # ------------------------------------------------------------------------------------------ Queue
    async def enqueue(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        # no key: the partitioner spreads the jobs, so a copy the reconciler re-enqueues never depends on the
        # partition its first copy went to (nothing here needs a run's jobs in order)
        items = [self._routed(self._record(job), None, delay, {}) for job in jobs]
        successors = _finishing_now()
        if successors is not None and items and self._producer is not None and self._holds(successors):
            with self._lock:
                successors.unconfirmed += len(items)
            for topic, value, key, headers in items:
                try:
                    self._send(topic, value, key, headers, self._confirmer(successors))
                except BaseException:
                    with self._lock:
                        successors.unconfirmed -= 1
                        successors.refused = True
                    raise
            return
        await self._produce(items)

    def _holds(self, successors: _Successors) -> bool:
        """Whether a record of job ``(run_id, job_key)`` is in a worker's hands here (its ack will follow)."""
        with self._lock:
            return any(r.job.run_id == successors.run_id and r.job.key == successors.job_key
                       for r in self._inflight.values())

    def _confirmer(self, successors: _Successors) -> Any:
        """The delivery report of a successor produced without waiting: the last one finishes the acked job's
        record, or hands it out again when one was refused."""
        def done(err: Any, _: Any) -> None:
            if err is not None:
                log.warning("Kafka refused a record (%s); the job that produced it is delivered again", err)
            with self._lock:
                successors.unconfirmed -= 1
                successors.refused = successors.refused or err is not None
                if successors.unconfirmed > 0 or successors.record is None:
                    return
                record, successors.record = successors.record, None
                again = self._settle(record, successors.refused)
            if again:
                self._notify()
        return done

    def _settle(self, record: _Record, refused: bool) -> bool:
        """Finish an acked record whose successors are all confirmed, or (one was refused) put it back to be
        handed out again; True when it was put back. Under ``_lock``."""
        if not refused:
            self._main.finish(record.tp, record.offset, record.epoch)
            return False
        if not self._main.live(record.tp, record.epoch):
            return False
        record.deliveries += 1
        self._ready.appendleft(record)
        return True

    async def dequeue(self, max_jobs: int, wait: float) -> list[Delivery]:
        if max_jobs <= 0:
            return []
        await self._start(True)
        assert self._wake is not None
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            self._wake.clear()
            out = self._take(max_jobs)
            if out:
                return out
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(self._wake.wait(), min(remaining, 0.25))
            except TimeoutError:
                pass

    async def ready(self, timeout: float = 30.0) -> bool:
        """Start consuming and wait until this consumer has joined its group and holds partitions (a join
        takes a while: about half of ``session_timeout_ms`` on Tansu). True when it does within ``timeout``."""
        await self._start(True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._main.parts:
                    return True
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            await asyncio.sleep(0.05)
        return False

    def _take(self, max_jobs: int) -> list[Delivery]:
        now = time.monotonic()
        out: list[Delivery] = []
        with self._lock:
            for token, record in list(self._inflight.items()):
                if record.deadline <= now:
                    del self._inflight[token]
                    if self._main.live(record.tp, record.epoch):
                        record.deliveries += 1
                        self._ready.appendleft(record)
            while self._ready and len(out) < max_jobs:
                record = self._ready.popleft()
                if not self._main.live(record.tp, record.epoch):
                    continue
                record.token = next(self._tokens)
                record.deadline = now + self.visibility_timeout
                self._inflight[record.token] = record
                receipt = KafkaReceipt(record.tp[0], record.tp[1], record.offset, record.token, record.value)
                out.append(Delivery(record.job, receipt, deliveries=record.deliveries))
        return out

    def _finish(self, delivery: Delivery) -> _Record | None:
        receipt = _receipt(delivery)
        with self._lock:
            record = self._inflight.pop(receipt.token, None)
            if record is not None:
                self._main.finish(record.tp, record.offset, record.epoch)
            return record

    def _current(self, delivery: Delivery) -> bool:
        with self._lock:
            return _receipt(delivery).token in self._inflight

    async def ack(self, delivery: Delivery) -> None:
        jobs = _finishing_jobs()
        successors = jobs.pop((delivery.job.run_id, delivery.job.key), None) if jobs else None
        if successors is None:
            self._finish(delivery)
            return
        receipt = _receipt(delivery)
        with self._lock:
            record = self._inflight.pop(receipt.token, None)
            if record is None:
                return
            if successors.unconfirmed > 0:  # finished by the last successor's delivery report
                successors.record = record
                return
            again = self._settle(record, successors.refused)
        if again:
            self._notify()

    async def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        if not self._current(delivery):
            return  # an earlier delivery's receipt: the record was handed out again
        receipt = _receipt(delivery)
        headers = {DELIVERIES_HEADER: str(delivery.deliveries)}
        await self._produce([self._routed(receipt.value, None, delay, headers)])
        self._finish(delivery)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        receipt = _receipt(delivery)
        with self._lock:
            record = self._inflight.get(receipt.token)
            if record is not None:
                record.deadline = max(record.deadline, time.monotonic() + seconds)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        receipt = _receipt(delivery)
        await self._produce([self._dead(receipt.value, reason, receipt.topic, receipt.partition, receipt.offset,
                                        delivery.deliveries)])
        self._finish(delivery)

    def _dead(self, value: bytes, reason: str, topic: str, partition: int, offset: int,
              deliveries: int) -> tuple[str, bytes, bytes | None, dict[str, str]]:
        return self.dead_letter_topic, value, None, {
            REASON_HEADER: reason[:4000] or "unknown", SOURCE_HEADER: f"{topic}/{partition}/{offset}",
            DELIVERIES_HEADER: str(max(1, deliveries))}

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read the dead-letter topic from where the dead letters are all handled (the committed offsets of the
        consumer group ``<group_id>-dead-letters``), leaving out those marked handled (a private consumer;
        nothing is committed). ``DeadLetter.id`` is ``<partition>:<offset>``."""
        await self._ensure_reachable()
        return await asyncio.get_running_loop().run_in_executor(None, self._read_dead_letters, limit)

    async def delete_dead_letters(self, ids: Sequence[str]) -> int:
        """Mark dead letters handled (Kafka never deletes a record): a marker record naming each one is produced
        to its partition of the dead-letter topic (header ``flowcraft-handled``), then the group
        ``<group_id>-dead-letters`` commits, per partition, the offset of its first letter still unhandled, so
        reads start past what is handled. Replay (derived) produces the job to the jobs topic first."""
        wanted = {str(i) for i in ids}
        if not wanted:
            return 0
        await self._ensure_reachable()
        return await asyncio.get_running_loop().run_in_executor(None, self._handle_dead_letters, wanted)

    async def depth(self) -> int:
        """The consumer lag of the jobs and delay topics: per partition, its end offset (high watermark) minus
        the group's committed offset (the low watermark where nothing is committed yet). Offsets are committed
        only below the lowest unfinished record, so jobs in flight count too; see README "Queue depth" for
        brokers whose watermarks are wrong (Tansu)."""
        return await asyncio.get_running_loop().run_in_executor(None, self._lag)

    def _lag(self) -> int:
        from confluent_kafka import Consumer, TopicPartition

        total = 0
        for group, topic in ((self.group_id, self.topic), (f"{self.group_id}-delay", self.delay_topic)):
            consumer = Consumer(self._consumer_config(group))
            try:
                metadata = consumer.list_topics(topic, timeout=10)
                found = metadata.topics.get(topic)
                if found is None or found.error is not None:
                    continue
                partitions = [TopicPartition(topic, p) for p in found.partitions]
                for tp in consumer.committed(partitions, timeout=10):
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
                    start = tp.offset if tp.offset >= 0 else low
                    total += max(0, high - start)
            finally:
                consumer.close()
        return total

    def _dead_letter_group(self) -> str:
        return f"{self.group_id}-dead-letters"

    def _scan_dead_letters(self, limit: int | None) -> tuple[list[DeadLetter], dict[int, int], set[str]]:
        """The unhandled letters from the committed offsets on (up to ``limit``), the end offset of each
        partition, and the ids marked handled."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({**self._consumer_config(self._dead_letter_group()), "enable.auto.offset.store": False})
        try:
            metadata = consumer.list_topics(self.dead_letter_topic, timeout=10)
            topic = metadata.topics.get(self.dead_letter_topic)
            if topic is None or topic.error is not None:
                return [], {}, set()
            partitions = [TopicPartition(self.dead_letter_topic, p) for p in topic.partitions]
            committed = consumer.committed(partitions, timeout=10)
            ends: dict[int, int] = {}
            starts: list[Any] = []
            for tp in committed:
                high = consumer.get_watermark_offsets(TopicPartition(self.dead_letter_topic, tp.partition),
                                                      timeout=10)[1]
                start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                ends[tp.partition] = high
                if tp.offset < 0 or tp.offset < high:
                    starts.append(TopicPartition(self.dead_letter_topic, tp.partition, start))
            letters: list[DeadLetter] = []
            handled: set[str] = set()
            if starts:
                consumer.assign(starts)
            left = {tp.partition for tp in starts}
            deadline = time.monotonic() + 15.0
            quiet_until = time.monotonic() + 3.0  # an end offset that no record reaches (e.g. a control record)
            while left and time.monotonic() < min(deadline, quiet_until):
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                quiet_until = time.monotonic() + 3.0
                if (msg.offset() or 0) + 1 >= ends.get(msg.partition() or 0, 0):
                    left.discard(msg.partition())
                headers = _headers(msg)
                if HANDLED_HEADER in headers:
                    handled.add(headers[HANDLED_HEADER])
                    continue
                try:
                    job: Job | None = Job.from_dict(json.loads(msg.value() or b""))
                except (ValueError, KeyError, TypeError):
                    job = None
                letters.append(DeadLetter(job, reason=headers.get(REASON_HEADER, "unknown"),
                                          raw={"headers": headers, "value": msg.value(),
                                               "partition": msg.partition(), "offset": msg.offset()},
                                          id=f"{msg.partition()}:{msg.offset()}"))
            unhandled = [letter for letter in letters if letter.id not in handled]
            return (unhandled if limit is None else unhandled[:limit]), ends, handled
        finally:
            consumer.close()

    def _read_dead_letters(self, limit: int) -> list[DeadLetter]:
        return self._scan_dead_letters(limit)[0]

    def _handle_dead_letters(self, wanted: set[str]) -> int:
        from confluent_kafka import Consumer, Producer, TopicPartition

        letters, ends, _ = self._scan_dead_letters(None)
        chosen = [letter for letter in letters if letter.id in wanted]
        if chosen:
            producer = Producer({**self._config(), "enable.idempotence": True, "acks": "all"})
            for letter in chosen:
                partition = int(letter.id.split(":", 1)[0])
                producer.produce(self.dead_letter_topic, value=b"", partition=partition,
                                 headers=[(HANDLED_HEADER, letter.id)])
            if producer.flush(30) > 0:
                raise FlowcraftError("Kafka did not take the dead letters' handled markers in 30s",
                                     hint="are the brokers reachable? nothing was marked; try again")
        remaining: dict[int, int] = {}
        for letter in letters:
            if letter.id not in wanted:
                partition, offset = (int(part) for part in letter.id.split(":", 1))
                remaining[partition] = min(offset, remaining.get(partition, offset))
        offsets = [TopicPartition(self.dead_letter_topic, p, remaining.get(p, end)) for p, end in ends.items()]
        if offsets:
            consumer = Consumer(self._consumer_config(self._dead_letter_group()))
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            finally:
                consumer.close()
        return len(chosen)

    async def setup(self) -> None:
        """Create the jobs, delay and dead-letter topics (idempotent: "already exists" is fine)."""
        await self._ensure_reachable()
        await asyncio.get_running_loop().run_in_executor(None, self._create_topics)

    def _create_topics(self) -> None:
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient(self._config())
        o = self.options
        topics = [NewTopic(name, num_partitions=o.partitions, replication_factor=o.replication_factor)
                  for name in (self.topic, self.delay_topic, self.dead_letter_topic)]
        for name, future in admin.create_topics(topics, request_timeout=30).items():
            try:
                future.result(30)
            except Exception as exc:
                error = exc.args[0] if exc.args else None
                if getattr(error, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise FlowcraftError(f"cannot create Kafka topic {name!r}: {exc}") from None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._producer is not None:  # first: acked jobs whose successors are confirmed now are committed below
            await loop.run_in_executor(None, self._producer.flush, 10)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            await loop.run_in_executor(None, thread.join, 30)
        if self._producer is not None:
            producer, self._producer = self._producer, None  # its thread stops within 0.1 s
            await loop.run_in_executor(None, producer.flush, 10)

    # ------------------------------------------------------------------------------------------ the threads
    def _serve_producer(self, producer: Any) -> None:
        while self._producer is producer:
            try:
                producer.poll(0.1)
            except Exception:
                log.exception("serving Kafka delivery reports")

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass

    def _run(self) -> None:
        main: Any = None
        delay: Any = None
        last_commit = 0.0
        paused = False
        try:
            while not self._stop.is_set():
                if not self._consuming:
                    time.sleep(0.02)
                    continue
                if main is None:
                    main = self._subscribe(self.group_id, self.topic, self._main, drop_ready=True)
                    delay = self._subscribe(f"{self.group_id}-delay", self.delay_topic, self._delay, drop_ready=False)
                with self._lock:
                    room = self.options.max_buffered - len(self._ready)
                want_pause = room <= 0
                if want_pause != paused:
                    assignment = main.assignment()
                    (main.pause if want_pause else main.resume)(assignment)
                    paused = want_pause
                if room > 0:
                    first = main.poll(0.05)
                    batch = [first] if first is not None else []
                    if batch and room > 1:
                        batch += main.consume(room - 1, 0)
                    self._accept(batch)
                else:  # paused; a record fetched before the pause took effect is kept, never dropped
                    late = main.poll(0.05)
                    if late is not None:
                        self._accept([late])
                self._forward(delay)
                now = time.monotonic()
                if now - last_commit >= self.options.commit_interval_ms / 1000:
                    last_commit = now
                    self._commit(main, self._main)
                    self._commit(delay, self._delay)
        except BaseException as exc:  # surfaced by the next dequeue
            log.exception("the Kafka consumer thread stopped")
            self._error = FlowcraftError(f"the Kafka consumer stopped: {exc}")
            self._notify()
        finally:
            for consumer, tracker in ((main, self._main), (delay, self._delay)):
                if consumer is not None:
                    try:
                        self._commit(consumer, tracker)
                        consumer.close()
                    except Exception:
                        log.debug("closing a Kafka consumer", exc_info=True)

    def _subscribe(self, group: str, topic: str, tracker: _Tracker, *, drop_ready: bool) -> Any:
        from confluent_kafka import Consumer

        consumer = Consumer(self._consumer_config(group))

        def assigned(_: Any, partitions: list[Any]) -> None:
            with self._lock:
                tracker.assign([(p.topic, p.partition) for p in partitions])

        def revoked(c: Any, partitions: list[Any]) -> None:
            tps = [(p.topic, p.partition) for p in partitions]
            with self._lock:
                commits = tracker.commits(tps)
                for tp in tps:
                    tracker.parts.pop(tp, None)
                if drop_ready:
                    self._ready = deque(r for r in self._ready if r.tp not in tps)
            self._commit_offsets(c, tracker, commits)

        def lost(_: Any, partitions: list[Any]) -> None:
            with self._lock:
                for p in partitions:
                    tracker.parts.pop((p.topic, p.partition), None)

        consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked, on_lost=lost)
        return consumer

    def _accept(self, messages: Sequence[Any]) -> None:
        # decoded before taking the lock, which the event loop's dequeue and ack wait for (revocations run in
        # this thread's polls, so no partition changes hands meanwhile)
        decoded: list[tuple[Any, TP, Job | str, int]] = []
        for msg in messages:
            if msg.error() is not None:
                log.debug("kafka consumer: %s", msg.error())
                continue
            tp = (msg.topic(), msg.partition())
            try:
                job: Job | str = Job.from_dict(json.loads(msg.value() or b""))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                job = f"unreadable record {tp[0]}/{tp[1]}/{msg.offset()}: {type(exc).__name__}: {exc}"
            decoded.append((msg, tp, job, _deliveries(_headers(msg)) + 1 if isinstance(job, Job) else 1))
        unreadable: list[tuple[Any, str]] = []
        with self._lock:
            for msg, tp, job, deliveries in decoded:
                epoch = self._main.seen(tp, msg.offset())
                if epoch is None:
                    continue
                if isinstance(job, str):
                    unreadable.append((msg, job))
                    continue
                self._ready.append(_Record(tp, msg.offset(), epoch, job, msg.value() or b"", deliveries))
        for msg, reason in unreadable:
            log.warning("dead-lettering %s", reason)
            tp = (msg.topic(), msg.partition())
            with self._lock:
                part = self._main.parts.get(tp)
                epoch = part.epoch if part is not None else -1
            topic, value, key, headers = self._dead(msg.value() or b"", reason, tp[0], tp[1], msg.offset(), 1)
            self._send(topic, value, key, headers, self._finisher(self._main, tp, msg.offset(), epoch))
        if messages:
            self._notify()

    def _finisher(self, tracker: _Tracker, tp: TP, offset: int, epoch: int) -> Any:
        def done(err: Any, _: Any) -> None:
            if err is not None:
                log.warning("Kafka refused a record (%s); it is delivered again after a restart", err)
                return
            with self._lock:
                tracker.finish(tp, offset, epoch)
        return done

    def _forward(self, consumer: Any) -> None:
        """Move due records of the delay topic to the jobs topic."""
        with self._lock:
            room = self.options.max_delayed_in_memory - len(self._delayed)
        if (room <= 0) != self._delay_paused:  # the memory bound: pause the delay topic while it is reached
            (consumer.pause if room <= 0 else consumer.resume)(consumer.assignment())
            self._delay_paused = room <= 0
        if room > 0:
            messages = consumer.consume(min(room, 500), 0)
        else:  # a record fetched before the pause took effect is kept, never dropped
            messages = [m for m in [consumer.poll(0)] if m is not None]
        with self._lock:
            for msg in messages:
                if msg.error() is not None:
                    continue
                tp = (msg.topic(), msg.partition())
                epoch = self._delay.seen(tp, msg.offset())
                if epoch is None:
                    continue
                headers = _headers(msg)
                try:
                    due = float(headers.get(DUE_HEADER, "0"))
                except ValueError:
                    due = 0.0
                headers.pop(DUE_HEADER, None)
                heapq.heappush(self._delayed, (due, next(self._seq), tp, msg.offset(), epoch,
                                               msg.value() or b"", headers))
        now = time.time()
        due_now = []
        with self._lock:
            while self._delayed and self._delayed[0][0] <= now:
                item = heapq.heappop(self._delayed)
                if self._delay.live(item[2], item[4]):
                    due_now.append(item)
        for _, _, tp, offset, epoch, value, headers in due_now:
            self._send(self.topic, value, None, headers, self._finisher(self._delay, tp, offset, epoch))

    def _commit(self, consumer: Any, tracker: _Tracker) -> None:
        with self._lock:
            if not tracker.dirty:
                return
            tracker.dirty = False
            commits = tracker.commits()
        self._commit_offsets(consumer, tracker, commits)

    def _commit_offsets(self, consumer: Any, tracker: _Tracker, commits: Sequence[tuple[TP, int]]) -> None:
        if not commits:
            return
        from confluent_kafka import TopicPartition

        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in commits], asynchronous=False)
        except Exception as exc:
            log.debug("offset commit failed (retried later): %s", exc)
            with self._lock:
                tracker.dirty = True
            return
        with self._lock:
            tracker.committed(commits)


def _receipt(delivery: Delivery) -> KafkaReceipt:
    receipt = delivery.receipt
    if not isinstance(receipt, KafkaReceipt):
        raise TypeError("this delivery was not received from a KafkaQueue")
    return receipt
