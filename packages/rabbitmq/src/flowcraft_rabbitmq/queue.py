"""RabbitMQ queue (aio-pika): a quorum queue with publisher confirms, prefetch, manual acks, delay queues
and a dead-letter queue.

Topology for ``queue_name`` = Q (``flowcraft setup --backend rabbitmq`` declares it, idempotently):

* ``Q``: quorum queue, durable, ``x-delivery-limit`` = ``delivery_limit``, ``x-dead-letter-exchange`` = ``Q.dlx``.
  A job is a persistent message whose body is the job's JSON (``Job.to_dict``), published with
  ``mandatory`` and awaited until the broker confirms it.
* ``Q.dlx`` (fanout) -> ``Q.dlq`` (classic, durable): jobs dead-lettered by the engine, with the reason in
  the header ``flowcraft-reason``, and messages the broker dead-lettered after ``delivery_limit`` deliveries.
* ``Q.delay.<ms>`` for ms = 10 * 2^k (k = 0..23, 10 ms to 23.3 h): classic durable queues with
  ``x-message-ttl`` = ms that dead-letter to ``Q`` through the default exchange. A delayed job goes to the
  largest ladder queue not longer than its delay, with its due time in the header ``flowcraft-due`` (epoch
  milliseconds); a message that comes back early is sent on to the next ladder queue (one hop per binary digit of the
  delay), so one TTL per queue means no head-of-line blocking.

RabbitMQ has no visibility timeout: an unacknowledged message returns to the queue when its channel or
connection closes (a worker that dies loses nothing). This queue adds one in the worker process: a received
job not acked, released or extended within ``visibility_timeout`` is handed back (``basic.nack`` with
requeue), and ``extend`` (the engine's heartbeat) pushes that deadline on. A worker that is alive but stuck
keeps its messages while its event loop heartbeats; the coordination lease (Redis) keeps a second worker
from running the job meanwhile, and the reconciler re-enqueues a run whose lease expired.

``Delivery.deliveries`` = deliveries carried by an earlier copy (header ``flowcraft-deliveries``, set when
a job is released through a delay queue) + the quorum queue's ``x-delivery-count`` + 1.

Hand-over (``hand_over_with``, wired by the preset's factory): a finishing commit may hand fired jobs straight to
the worker that committed (``CoordinationStore.continues``). They never reach the broker: they wait in a Redis
sorted set beside the coordination state (``flowcraft_redis.handover.Handover``), scored by a visibility
deadline, and their deliveries carry a ``HandedReceipt``. ``ack`` removes such a job from the set, ``extend``
moves its deadline, ``release`` and ``dead_letter`` publish it (to the queue, a delay queue or the dead-letter
exchange, confirmed) and then remove it. Every consuming queue sweeps the set every ``Handover.sweep_interval``
(min(1 s, visibility / 4)): the jobs whose deadline passed (a dead or stalled worker's) are claimed, published to
the queue with confirms, then removed, so they come back without the reconciler.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed
from aiormq.abc import DeliveredMessage

from flowcraft.errors import ConfigError, StoreLimitError
from flowcraft.spi import DeadLetter, Delivery, Job, PrefetchingQueue
from flowcraft_rabbitmq._amqp import (
    TRANSIENT,
    AmqpLink,
    NotRoutableError,
    backoff,
    headers_int,
    log,
    one_line,
    precondition,
)
from flowcraft_rabbitmq.options import RabbitMqOptions
from flowcraft_redis.handover import SWEEP_BATCH, HandedReceipt, Handover, decode_member

DELIVERIES_HEADER = "flowcraft-deliveries"
DUE_HEADER = "flowcraft-due"
REASON_HEADER = "flowcraft-reason"
SOURCE_HEADER = "flowcraft-source-queue"
#: a dead letter's id (``DeadLetter.id``), set when Flowcraft dead-letters a message
DEAD_LETTER_ID_HEADER = "flowcraft-dead-letter-id"
#: the delay ladder, in milliseconds: 10 ms * 2^k
DELAY_LADDER_MS: tuple[int, ...] = tuple(10 * 2 ** k for k in range(24))
#: a job due within this many seconds is delivered at once (the engine gives back one due later than 10 ms)
ON_TIME = 0.01
_PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
#: seconds ``close`` waits for the acks asked for to be handed to the connection
SETTLE_ON_CLOSE = 5.0


_RELEASE_FALLBACK: tuple[type[Exception], ...] = (ConfigError, *TRANSIENT)


class MessageTooLargeError(StoreLimitError):
    """A job does not fit in one RabbitMQ message (``max_message_bytes``)."""


def delay_route(queue_name: str, delay: float) -> str:
    """The queue a job due in ``delay`` seconds is published to: the main queue when (almost) due, else the
    longest ladder queue not longer than the delay."""
    if delay <= ON_TIME:
        return queue_name
    ms = delay * 1000
    rung = DELAY_LADDER_MS[0]
    for candidate in DELAY_LADDER_MS:
        if candidate > ms:
            break
        rung = candidate
    return f"{queue_name}.delay.{rung}"


def encode_job(job: Job, limit: int) -> bytes:
    """A job's message body: its JSON, UTF-8; refused (StoreLimitError) beyond ``limit`` bytes."""
    body = json.dumps(job.to_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    if len(body) > limit:
        raise MessageTooLargeError(
            f"job {job.key!r} of run {job.run_id!r} is {len(body) / 1024:.0f} KiB; a message holds at most "
            f"{limit / 1024:.0f} KiB (option max_message_bytes)",
            hint="pass large data through the context (or a blob store), not as node input")
    return body


def decode_job(body: bytes) -> Job:
    """The job in a message body; ValueError (with the reason) when it is not one."""
    try:
        data = json.loads(body.decode("utf-8", "surrogatepass"))
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        job = Job.from_dict(data)
        for name in ("run_id", "blueprint_id", "node_id"):
            if not isinstance(getattr(job, name), str):
                raise ValueError(f"{name} is not a string")
        return job
    except (UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"not a Flowcraft job ({what})") from None


def deliveries_of(headers: Mapping[str, Any] | None, redelivered: bool) -> int:
    """How many times this job was delivered, counting this delivery (see the module docstring)."""
    headers = dict(headers or {})
    carried = headers_int(headers, DELIVERIES_HEADER)
    if "x-delivery-count" in headers:
        return carried + headers_int(headers, "x-delivery-count") + 1
    return carried + (2 if redelivered else 1)


def due_header(due: float) -> int:
    """The due time in the header: whole epoch milliseconds (an AMQP float is single precision)."""
    return int(due * 1000) + 1


def due_of(headers: Mapping[str, Any]) -> float | None:
    value = headers_int(headers, DUE_HEADER)
    return value / 1000 if value else None


def _properties(headers: dict[str, Any]) -> aiormq.spec.Basic.Properties:
    """A job message's properties: persistent, JSON, a fresh message id, the headers."""
    return aiormq.spec.Basic.Properties(content_type="application/json", delivery_mode=_PERSISTENT,
                                        headers=headers, message_id=uuid.uuid4().hex)


@dataclass(eq=False)
class RabbitMqReceipt:
    """What ``Delivery.receipt`` holds: the delivered message (aiormq's: its channel acks it by delivery tag),
    the consumer channel it came on, and the local visibility timer."""

    message: DeliveredMessage
    generation: int
    body: bytes
    deliveries: int
    tag: int
    settled: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)



class RabbitMqQueue(PrefetchingQueue):
    """Jobs in a RabbitMQ quorum queue (see the module docstring)."""

    name = "rabbitmq"
    Options = RabbitMqOptions

    def __init__(self, amqp: str | AbstractConnection | AmqpLink = "amqp://guest:guest@127.0.0.1:5672/", *,
                 queue_name: str = "flowcraft-jobs", visibility_timeout: float = 30.0, prefetch: int = 0,
                 delivery_limit: int = 20, max_message_bytes: int = 128 * 1024 * 1024,
                 connect_timeout: float = 10.0, reconnect_seconds: float = 60.0) -> None:
        if isinstance(amqp, AmqpLink):
            self.link = amqp
        elif isinstance(amqp, str):
            self.link = AmqpLink(amqp, connect_timeout=connect_timeout, reconnect_seconds=reconnect_seconds)
        else:
            self.link = AmqpLink(connection=amqp, connect_timeout=connect_timeout,
                                 reconnect_seconds=reconnect_seconds)
        self.queue_name = queue_name
        self.dead_letter_exchange = f"{queue_name}.dlx"
        self.dead_letter_queue = f"{queue_name}.dlq"
        self.visibility_timeout = float(visibility_timeout)
        self.prefetch = prefetch
        self.delivery_limit = delivery_limit
        self.max_message_bytes = max_message_bytes
        self._buffer: collections.deque[tuple[int, DeliveredMessage]] = collections.deque()
        #: futures ``dequeue`` waits on, resolved by the next arrival (cheaper than ``wait_for`` on an Event:
        #: no task and no timeout context per wait)
        self._waiters: list[asyncio.Future[None]] = []
        self._consumer: asyncio.Task[None] | None = None
        self._consumer_error: BaseException | None = None
        self._generation = 0  # of the consumer channel
        self._outstanding: set[RabbitMqReceipt] = set()
        #: delivery tags of the consumer channel whose ack or nack is not sent yet, ascending (the broker counts
        #: them against the prefetch, so there are at most ``prefetch`` of them)
        self._unsettled: dict[int, None] = {}
        #: acks and nacks waiting for the settler task, in the order they were asked for
        self._settling: list[tuple[RabbitMqReceipt, bool | None]] = []
        self._settler: asyncio.Task[None] | None = None
        #: ack and nack frames sent (one ``multiple`` ack may settle several deliveries)
        self.settle_frames = 0
        self._declared: set[str] = set()
        self._closed = False
        #: the in-flight set of the jobs commits hand to this process's worker (None: no hand-over)
        self.handover: Handover | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        return cls.build(RabbitMqOptions.parse(options))

    @classmethod
    def build(cls, o: RabbitMqOptions) -> Self:
        return cls(o.amqp_url, queue_name=o.queue_name, visibility_timeout=o.visibility_timeout, prefetch=o.prefetch,
                   delivery_limit=o.delivery_limit, max_message_bytes=o.max_message_bytes,
                   connect_timeout=o.connect_timeout, reconnect_seconds=o.reconnect_seconds)

    def __repr__(self) -> str:
        return f"RabbitMqQueue({self.link!r}, queue_name={self.queue_name!r})"

    def hand_over_with(self, handover: Handover) -> None:
        """Serve the deliveries of jobs handed over into ``handover``'s set (and sweep it while consuming); the
        coordination store's commits write that set (``RedisCoordinationStore(dispatcher=handover)``)."""
        self.handover = handover

    # ------------------------------------------------------------------------------------------ setup
    def main_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum", "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.dead_letter_exchange}

    def delay_arguments(self, ms: int) -> dict[str, Any]:
        return {"x-queue-type": "classic", "x-message-ttl": ms, "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.queue_name}

    async def setup(self) -> None:
        """Declare the exchange and queues (idempotent: declaring what exists with the same settings changes
        nothing; other settings are a ConfigError naming the queue)."""
        channel = await self.link.channel()
        what = self.queue_name
        try:
            what = self.dead_letter_exchange
            exchange = await channel.declare_exchange(what, aio_pika.ExchangeType.FANOUT, durable=True)
            what = self.dead_letter_queue
            dlq = await channel.declare_queue(what, durable=True, arguments={"x-queue-type": "classic"})
            await dlq.bind(exchange, routing_key="")
            what = self.queue_name
            await channel.declare_queue(what, durable=True, arguments=self.main_arguments())
            for ms in DELAY_LADDER_MS:
                what = f"{self.queue_name}.delay.{ms}"
                await channel.declare_queue(what, durable=True, arguments=self.delay_arguments(ms))
                self._declared.add(what)
        except ChannelPreconditionFailed as exc:
            raise precondition(exc, f"RabbitMQ queue or exchange {what!r}") from None
        finally:
            if not channel.is_closed:
                await channel.close()
        log.info("declared RabbitMQ queue %s with its dead-letter and delay queues", self.queue_name)

    async def _declare_delay(self, name: str) -> None:
        """Declare a ladder queue a publish found missing (a topology set up before it was needed)."""
        ms = int(name.rsplit(".", 1)[-1])
        channel = await self.link.channel()
        try:
            await channel.declare_queue(name, durable=True, arguments=self.delay_arguments(ms))
        except ChannelPreconditionFailed as exc:
            raise precondition(exc, f"RabbitMQ queue {name!r}") from None
        finally:
            if not channel.is_closed:
                await channel.close()
        self._declared.add(name)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping: its error no longer matters
                await self._sweeper
            self._sweeper = None
        if self.handover is not None:  # the removals asked for go out (a lost one only brings a job back)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.handover.flush(), SETTLE_ON_CLOSE)
        settler = self._settler
        if settler is not None:  # the acks asked for go out before the connection closes
            done, _ = await asyncio.wait({settler}, timeout=SETTLE_ON_CLOSE)
            if not done:  # a connection whose writer is gone: the broker redelivers what was not acked
                settler.cancel()
            elif not settler.cancelled() and (error := settler.exception()) is not None:
                log.debug("settling deliveries: %s", one_line(error))
        if self._consumer is not None:
            self._consumer.cancel()
            try:
                await self._consumer
            except (asyncio.CancelledError, Exception) as exc:  # stopping: its error no longer matters
                log.debug("consumer stopped: %s", one_line(exc))
            self._consumer = None
        for receipt in list(self._outstanding):
            if receipt.timer is not None:
                receipt.timer.cancel()
        self._outstanding.clear()
        self._buffer.clear()
        await self.link.close()  # unacknowledged messages go back to the queue

    # ------------------------------------------------------------------------------------------ publish
    async def _publish(self, routing_key: str, body: bytes, headers: dict[str, Any], *, exchange: str = "") -> None:
        try:
            await self.link.publish(exchange, routing_key, body, _properties(headers))
        except NotRoutableError:
            if exchange or routing_key == self.queue_name or routing_key in self._declared:
                raise ConfigError(f"RabbitMQ queue {self.queue_name!r} (or its dead-letter exchange) does not "
                                  f"exist on {self.link.where}",
                                  hint="run `flowcraft setup --backend rabbitmq` (or create it)") from None
            await self._declare_delay(routing_key)
            await self.link.publish(exchange, routing_key, body, _properties(headers))

    async def _send(self, body: bytes, delay: float, carried: int) -> None:
        headers: dict[str, Any] = {}
        if carried:
            headers[DELIVERIES_HEADER] = carried
        route = delay_route(self.queue_name, delay)
        if route != self.queue_name:
            headers[DUE_HEADER] = due_header(time.time() + delay)
        await self._publish(route, body, headers)

    async def enqueue(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        bodies = [encode_job(job, self.max_message_bytes) for job in jobs]
        if len(bodies) == 1:  # the common case (a chain's next node): no task to gather
            await self._send(bodies[0], delay, 0)
            return
        await asyncio.gather(*(self._send(body, delay, 0) for body in bodies))

    # ------------------------------------------------------------------------------------------ consume
    def _raise_consumer_error(self) -> None:
        """Report why the consumer stopped, once: the next ``dequeue`` starts it again (a broker that was
        restarting may be back; a worker gives up on a ConfigError itself)."""
        error, self._consumer_error = self._consumer_error, None
        if error is not None:
            raise error

    def _start_consumer(self, max_jobs: int) -> None:
        if self._consumer is None or self._consumer.done():
            self._raise_consumer_error()
            if self.prefetch <= 0:
                self.prefetch = max(1, min(max_jobs, 65535))
            self._consumer = asyncio.create_task(self._consume(), name=f"flowcraft-rabbitmq-consumer-{self.queue_name}")
        if self.handover is not None and (self._sweeper is None or self._sweeper.done()) and not self._closed:
            self._sweeper = asyncio.create_task(self._sweep_loop(self.handover),
                                                name=f"flowcraft-rabbitmq-sweeper-{self.queue_name}")

    async def _sweep_loop(self, handover: Handover) -> None:
        """While consuming: every ``handover.sweep_interval``, put the handed jobs whose visibility lapsed back on
        the queue (``sweep_handed``)."""
        failures = 0
        while not self._closed:
            await asyncio.sleep(handover.sweep_interval if not failures else backoff(failures))
            try:
                while await self.sweep_handed(handover) >= SWEEP_BATCH:
                    pass
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the broker away: the jobs stay in the set for the next sweep
                if failures == 0:
                    log.warning("sweeping the handed jobs of %s failed (%s); retrying", self.queue_name,
                                one_line(exc))
                failures += 1

    async def sweep_handed(self, handover: Handover) -> int:
        """One sweep: claim the handed jobs whose visibility deadline passed, publish each to the queue (its one
        delivery carried in ``flowcraft-deliveries``) with confirms, then remove them from the set; returns how
        many were claimed. A job that could not be published stays claimed until the claim lapses."""
        members = await handover.sweep(SWEEP_BATCH)
        if not members:
            return 0
        log.info("%d handed jobs of %s passed their visibility timeout: back to the queue", len(members),
                 self.queue_name)

        async def publish(member: bytes) -> bytes:
            try:
                body = decode_member(member)[1]
            except ValueError as exc:  # not written by a commit: keep it where it can be read
                await self._publish("", member, self._dead_headers(f"unreadable handed job: {exc}", 1),
                                    exchange=self.dead_letter_exchange)
                return member
            await self._send(body, 0.0, 1)
            return member

        published = await asyncio.gather(*(publish(member) for member in members), return_exceptions=True)
        done = [m for m in published if isinstance(m, bytes)]
        await handover.remove(done)
        failed = [m for m in published if isinstance(m, BaseException)]
        if failed:
            raise failed[0]
        return len(members)

    async def _consume(self) -> None:
        """Keep one consumer channel open on the queue, reopening it (with backoff) when it closes."""
        attempt = 0
        while not self._closed:
            lost = asyncio.Event()
            channel = None
            try:
                channel = await self.link.channel()
                self._generation += 1
                generation = self._generation
                self._unsettled.clear()
                channel.close_callbacks.add(lambda *_, lost=lost: lost.set())
                # consumed on the aiormq channel under aio-pika's: aio-pika would wrap each delivery in an
                # IncomingMessage (~30 locked attribute sets) and run the callback in a task of its own
                raw = await channel.get_underlay_channel()
                await raw.basic_qos(prefetch_count=self.prefetch)

                async def arrived(message: DeliveredMessage, generation: int = generation) -> None:
                    if generation == self._generation:
                        self._unsettled[message.delivery_tag or 0] = None
                    self._buffer.append((generation, message))
                    self._wake()

                await raw.basic_consume(self.queue_name, arrived, no_ack=False)
                attempt = 0
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except ChannelNotFoundEntity:
                self._consumer_error = ConfigError(
                    f"RabbitMQ queue {self.queue_name!r} does not exist on {self.link.where}",
                    hint="run `flowcraft setup --backend rabbitmq` (or create it)")
                self._wake()
                return
            except ConfigError as exc:  # a refused login, a broker unreachable for too long
                self._consumer_error = exc
                self._wake()
                return
            except Exception as exc:
                if attempt == 0:
                    log.warning("RabbitMQ consumer of %s lost (%s); reconnecting", self.queue_name, one_line(exc))
            finally:
                self._generation += 1  # whatever this channel delivered can no longer be acked
                if channel is not None and not channel.is_closed:
                    try:
                        await channel.close()
                    except Exception as exc:
                        log.debug("closing the consumer channel: %s", one_line(exc))
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_arrival(self, seconds: float) -> None:
        """Until ``_wake`` (a message arrived, the consumer stopped) or ``seconds`` passed."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def dequeue(self, max_jobs: int, wait: float) -> list[Delivery]:
        if max_jobs <= 0:
            return []
        self._start_consumer(max_jobs)
        deadline = time.monotonic() + max(0.0, wait)
        out: list[Delivery] = []
        while len(out) < max_jobs:
            self._raise_consumer_error()
            if not self._buffer:
                if out:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await self._wait_arrival(remaining)
                continue
            generation, message = self._buffer.popleft()
            if generation != self._generation:
                continue  # its channel closed: the broker delivers it again
            delivery = await self._accept(generation, message)
            if delivery is not None:
                out.append(delivery)
        return out

    async def _accept(self, generation: int, message: DeliveredMessage) -> Delivery | None:
        properties = message.header.properties
        headers = dict(properties.headers or {})
        deliveries = deliveries_of(headers, bool(message.redelivered))
        due = due_of(headers)
        receipt = RabbitMqReceipt(message, generation, message.body, deliveries, message.delivery_tag or 0)
        if due is not None and due - time.time() > ON_TIME:
            try:  # early: on to the next ladder queue, keeping the deliveries so far
                await self._send(message.body, due - time.time(), deliveries - 1)
            except Exception as exc:
                log.warning("could not delay a message further (%s); it comes back", one_line(exc))
                await self._settle(receipt, requeue=True)
                return None
            await self._settle(receipt)
            return None
        try:
            job = decode_job(message.body)
        except ValueError as exc:
            reason = f"unreadable message {properties.message_id or receipt.tag}: {exc}"
            log.warning("dead-lettering %s", reason)
            try:
                await self._to_dead_letter(receipt, reason)
            except Exception as error:
                log.warning("could not dead-letter an unreadable message (%s); it comes back", one_line(error))
                await self._settle(receipt, requeue=True)
            return None
        self._outstanding.add(receipt)
        self._arm(receipt, self.visibility_timeout)
        return Delivery(job, receipt, deliveries=deliveries)

    # ------------------------------------------------------------------------------------------ settle
    def _arm(self, receipt: RabbitMqReceipt, seconds: float) -> None:
        if receipt.timer is not None:
            receipt.timer.cancel()
        loop = asyncio.get_running_loop()
        receipt.timer = loop.call_later(max(0.0, seconds), self._expired, receipt)

    def _expired(self, receipt: RabbitMqReceipt) -> None:
        if not receipt.settled:
            log.debug("visibility timeout of a delivery passed without a heartbeat: handing it back")
            asyncio.get_running_loop().create_task(self._settle(receipt, requeue=True))

    async def _settle(self, receipt: RabbitMqReceipt, *, requeue: bool | None = None) -> bool:
        """Ack (``requeue`` None) or nack the message once; False when it was settled before or its channel
        is gone (the broker then delivers it again by itself).

        The frame is sent by the settler task, right after the callbacks of this event-loop iteration, with
        the other acks and nacks asked for meanwhile, in order: acks whose every lower delivery tag of the
        channel is settled become one ``basic.ack(multiple=True)`` (see ``_send_acks``). Like the single acks
        before, the frame is not awaited onto the socket: frames go out in order, and closing the consumer
        channel (an RPC behind them in the same queue) flushes them before the connection; ``close`` waits
        for the settler."""
        if receipt.settled:
            return False
        receipt.settled = True
        self._outstanding.discard(receipt)
        if receipt.timer is not None:
            receipt.timer.cancel()
            receipt.timer = None
        if receipt.generation != self._generation:
            return False
        self._settling.append((receipt, requeue))
        if self._settler is None:
            self._settler = asyncio.get_running_loop().create_task(self._settle_all())
        return True

    async def _settle_all(self) -> None:
        try:
            while self._settling:
                batch, self._settling = self._settling, []
                acks: list[RabbitMqReceipt] = []
                for receipt, requeue in batch:
                    if receipt.generation != self._generation:
                        continue  # its channel closed: the broker delivers it again
                    if requeue is None:
                        acks.append(receipt)
                        continue
                    await self._send_acks(acks)  # the acks asked for before it go first
                    acks = []
                    self._unsettled.pop(receipt.tag, None)
                    await self._send_frame(receipt.message.channel.basic_nack(receipt.tag, requeue=requeue,
                                                                                wait=False))
                await self._send_acks(acks)
        finally:
            self._settler = None

    async def _send_acks(self, acks: Sequence[RabbitMqReceipt]) -> None:
        """Ack these deliveries of the current channel: one ``multiple`` ack for those below the lowest delivery
        tag still unsettled (every tag under it is settled already or acked by this frame; nacks are sent
        before, in order), one ack each for the others."""
        if not acks:
            return
        channel = acks[0].message.channel
        tags = sorted(receipt.tag for receipt in acks)
        mine = set(tags)
        lowest = next((tag for tag in self._unsettled if tag not in mine), None)
        below = tags if lowest is None else [tag for tag in tags if tag < lowest]
        for tag in tags:
            self._unsettled.pop(tag, None)
        if len(below) > 1:
            await self._send_frame(channel.basic_ack(below[-1], multiple=True, wait=False))
            tags = tags[len(below):]
        for tag in tags:
            await self._send_frame(channel.basic_ack(tag, wait=False))

    async def _send_frame(self, frame: Awaitable[None]) -> None:
        self.settle_frames += 1
        try:
            await frame
        except Exception as exc:  # the channel closed meanwhile: the broker redelivers the message
            log.debug("could not settle a delivery: %s", one_line(exc))

    async def ack(self, delivery: Delivery) -> None:
        receipt = delivery.receipt
        if isinstance(receipt, HandedReceipt):
            if not receipt.settled:
                receipt.settled = True
                self._handover().ack(receipt)
            return
        await self._settle(_receipt(delivery))

    def _handover(self) -> Handover:
        if self.handover is None:
            raise TypeError("a handed delivery, but this RabbitMqQueue has no hand-over (hand_over_with)")
        return self.handover

    async def _release_handed(self, delivery: Delivery, receipt: HandedReceipt, delay: float) -> None:
        """Publish a handed job to the queue (a delay queue), confirmed, then remove it from the set; if the
        publish fails it stays there and comes back through a sweep when its visibility lapses."""
        if receipt.settled:
            return
        receipt.settled = True
        try:
            await self._send(receipt.body, max(0.0, delay), delivery.deliveries)
        except _RELEASE_FALLBACK as exc:
            log.warning("could not release handed job %s (%s); it comes back after its visibility timeout",
                        delivery.job.key, one_line(exc))
            return
        await self._handover().remove([receipt.member])

    async def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        if isinstance(delivery.receipt, HandedReceipt):
            await self._release_handed(delivery, delivery.receipt, delay)
            return
        receipt = _receipt(delivery)
        if receipt.settled or receipt.generation != self._generation:
            return  # already handed back (visibility timer, closed channel)
        if delay <= ON_TIME:
            await self._settle(receipt, requeue=True)
            return
        try:
            await self._send(receipt.body, delay, delivery.deliveries)
        except _RELEASE_FALLBACK as exc:
            log.warning("could not delay job %s (%s); handing it back now", delivery.job.key, one_line(exc))
            await self._settle(receipt, requeue=True)
            return
        await self._settle(receipt)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        if isinstance(delivery.receipt, HandedReceipt):
            if not delivery.receipt.settled:
                await self._handover().extend(delivery.receipt, seconds)
            return
        receipt = _receipt(delivery)
        if not receipt.settled:
            self._arm(receipt, seconds)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        handed = delivery.receipt
        if isinstance(handed, HandedReceipt):  # to the dead-letter exchange, confirmed, then out of the set
            if handed.settled:
                return
            await self._publish("", handed.body, self._dead_headers(reason, delivery.deliveries),
                                exchange=self.dead_letter_exchange)
            handed.settled = True
            await self._handover().remove([handed.member])
            return
        receipt = _receipt(delivery)
        if receipt.settled:
            return  # handed back already: its next delivery is dead-lettered again
        await self._to_dead_letter(receipt, reason)

    def _dead_headers(self, reason: str, deliveries: int) -> dict[str, Any]:
        return {REASON_HEADER: reason[:16000] or "unknown", SOURCE_HEADER: self.queue_name,
                DELIVERIES_HEADER: max(1, deliveries), DEAD_LETTER_ID_HEADER: uuid.uuid4().hex}

    async def _to_dead_letter(self, receipt: RabbitMqReceipt, reason: str) -> None:
        await self._publish("", receipt.body, self._dead_headers(reason, receipt.deliveries),
                            exchange=self.dead_letter_exchange)
        await self._settle(receipt)

    async def depth(self) -> int:
        """Jobs waiting to be delivered: the ready messages of the main queue (a passive declare's
        message_count; unacknowledged ones, in flight, are left out) plus those waiting in the delay queues."""
        channel = await self.link.channel()
        total = 0
        try:
            for name in (self.queue_name, *(f"{self.queue_name}.delay.{ms}" for ms in DELAY_LADDER_MS)):
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except ChannelNotFoundEntity:
                    if name == self.queue_name:
                        raise ConfigError(f"RabbitMQ queue {name!r} does not exist on {self.link.where}",
                                          hint="run `flowcraft setup --backend rabbitmq`") from None
                    channel = await self.link.channel()  # a missing delay queue closed the channel
                    continue
                total += int(queue.declaration_result.message_count or 0)
        finally:
            if not channel.is_closed:
                await channel.close()
        return total

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read the dead-letter queue without removing anything: messages taken unacknowledged on a channel
        of their own go back, in order, when it closes."""
        channel = await self.link.channel()
        letters: list[DeadLetter] = []
        try:
            queue = await channel.get_queue(self.dead_letter_queue, ensure=False)
            while len(letters) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(_dead_letter(message))
        except ChannelNotFoundEntity:
            raise ConfigError(f"RabbitMQ queue {self.dead_letter_queue!r} does not exist on {self.link.where}",
                              hint="run `flowcraft setup --backend rabbitmq`") from None
        finally:
            if not channel.is_closed:
                await channel.close()
        return letters

    async def delete_dead_letters(self, ids: Sequence[str]) -> int:
        """Remove dead letters by id: the dead-letter queue is read on a channel of its own, the messages asked
        for are acknowledged (removed), the others go back, in order, when the channel closes."""
        wanted = collections.Counter(str(i) for i in ids)
        if not wanted:
            return 0
        channel = await self.link.channel()
        removed = 0
        try:
            queue = await channel.get_queue(self.dead_letter_queue, ensure=False)
            while sum(wanted.values()) > 0:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letter_id = _dead_letter(message).id
                if wanted[letter_id] > 0:
                    await message.ack()
                    wanted[letter_id] -= 1
                    removed += 1
        except ChannelNotFoundEntity:
            raise ConfigError(f"RabbitMQ queue {self.dead_letter_queue!r} does not exist on {self.link.where}",
                              hint="run `flowcraft setup --backend rabbitmq`") from None
        finally:
            if not channel.is_closed:
                await channel.close()
        return removed


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _receipt(delivery: Delivery) -> RabbitMqReceipt:
    receipt = delivery.receipt
    if not isinstance(receipt, RabbitMqReceipt):
        raise TypeError("this delivery was not received from a RabbitMqQueue")
    return receipt


def _dead_letter(message: AbstractIncomingMessage) -> DeadLetter:
    headers = dict(message.headers or {})
    reason = headers.get(REASON_HEADER)
    if reason is None:
        why = headers.get("x-first-death-reason", "delivery_limit")
        why = why.decode() if isinstance(why, bytes) else str(why)
        reason = (f"dead-lettered by the broker ({why}): delivered more often than the queue's x-delivery-limit "
                  "without being acknowledged" if why == "delivery_limit" else f"dead-lettered by the broker ({why})")
    elif isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    try:
        job: Job | None = decode_job(message.body)
    except ValueError:
        job = None
    letter_id = headers.get(DEAD_LETTER_ID_HEADER) or message.message_id
    if isinstance(letter_id, bytes):
        letter_id = letter_id.decode("utf-8", "replace")
    if not letter_id:  # dead-lettered by the broker: the body and its first death identify it
        death = repr(headers.get("x-first-death-queue")) + repr(headers.get("x-death"))
        letter_id = hashlib.sha256(message.body + death.encode()).hexdigest()[:32]
    return DeadLetter(job, reason=str(reason), raw={"body": message.body, "headers": headers}, id=str(letter_id))
