"""One AMQP connection per queue object (aio-pika), opened on first use, reopened with backoff.

Before the broker was ever reached, connecting is tried for ``connect_timeout`` seconds (a broker restarting),
then reported as one clear line (ServerUnreachableError; a refused login is a ConfigError at once, which no
retry can fix). Once reached, losing the broker (a restart) makes every
operation reconnect with exponential backoff for ``reconnect_seconds`` before it fails.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelClosed,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    ProbableAuthenticationError,
    PublishError,
)

from flowcraft.config import redact_text
from flowcraft.errors import ConfigError, FlowcraftError, ServerUnreachableError

log = logging.getLogger("flowcraft.rabbitmq")


class _QuietConnectFailures(logging.Filter):
    """aiormq logs every failed connection attempt at ERROR; the link reports a broker it cannot reach once,
    itself (with the password masked), so those lines would only repeat it while the broker restarts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


logging.getLogger("aiormq.connection").addFilter(_QuietConnectFailures())

#: errors after which the operation is tried again on a fresh connection/channel
TRANSIENT: tuple[type[Exception], ...] = (
    AMQPConnectionError, ChannelInvalidStateError, ConnectionError, OSError, asyncio.TimeoutError, RuntimeError)


_CONNECT_ERRORS: tuple[type[Exception], ...] = (AMQPError, *TRANSIENT)
_PUBLISH_RETRY: tuple[type[Exception], ...] = (DeliveryError, ChannelClosed, *TRANSIENT)


class NotRoutableError(FlowcraftError):
    """The broker could not route a mandatory message: its queue does not exist."""


def one_line(exc: BaseException) -> str:
    return redact_text(" ".join(str(exc).split()) or type(exc).__name__)


def alive(conn: AbstractConnection) -> bool:
    """Open and connected: aio-pika's ``is_closed`` only says whether ``close()`` was called, while
    ``connected`` is cleared when the broker goes away (a robust connection sets it again on reconnecting)."""
    connected = getattr(conn, "connected", None)
    return not conn.is_closed and (not isinstance(connected, asyncio.Event) or connected.is_set())


def backoff(attempt: int) -> float:
    return float(min(2.0, 0.05 * 2.0 ** attempt) * (0.5 + random.random() / 2))


class AmqpLink:
    """The connection and a publisher-confirm channel; ``generation`` counts (re)connections."""

    def __init__(self, url: str | None = None, *, connection: AbstractConnection | None = None,
                 connect_timeout: float = 10.0, reconnect_seconds: float = 60.0) -> None:
        if url is None and connection is None:
            raise ValueError("AmqpLink needs an amqp_url or a connection")
        self.url = url
        self._given = connection
        self._conn: AbstractConnection | None = connection
        self._publisher: AbstractChannel | None = None
        #: the publisher channel's aiormq channel, published on directly (see ``publish``)
        self._raw: aiormq.Channel | None = None
        self.connect_timeout = connect_timeout
        self.reconnect_seconds = reconnect_seconds
        self.generation = 0
        self._reached = connection is not None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AmqpLink({redact_text(self.url or '<connection>')!r})"

    @property
    def where(self) -> str:
        return redact_text(self.url) if self.url else "the given connection"

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def connection(self) -> AbstractConnection:
        conn = self._conn
        if conn is not None and alive(conn):
            return conn
        async with self._guard():
            conn = self._conn
            if conn is not None and alive(conn):
                return conn
            if self._closed:
                raise FlowcraftError("the RabbitMQ queue was closed")
            if conn is not None and self._given is None:
                try:  # a connection the broker dropped: release what is left of it
                    await conn.close()
                except Exception as exc:
                    log.debug("closing a lost AMQP connection: %s", one_line(exc))
            self._publisher = None
            self._raw = None
            self._conn = await (self._wait_given() if self._given is not None else self._connect())
            self.generation += 1
            self._reached = True
            return self._conn

    async def _connect(self) -> AbstractConnection:
        assert self.url is not None
        deadline: float | None = None
        first = 0.0
        attempt = 0
        while True:
            try:
                return await aio_pika.connect(self.url, timeout=self.connect_timeout,
                                              client_properties={"connection_name": "flowcraft"})
            except ProbableAuthenticationError as exc:
                raise ConfigError(f"RabbitMQ at {self.where} refused the login: {one_line(exc)}",
                                  hint="check the user, password and virtual host in the amqp_url option") from None
            except _CONNECT_ERRORS as exc:
                # never reached: keep trying for connect_timeout (a broker restarting), then one clear line
                first = first or time.monotonic()
                if not self._reached and time.monotonic() - first >= self.connect_timeout:
                    raise ServerUnreachableError(
                        f"cannot connect to RabbitMQ at {self.where}: {one_line(exc)}",
                        hint="check that the broker runs and is reachable from here, and the amqp_url option "
                             "(FLOWCRAFT_OPT_AMQP_URL or [options] amqp_url)") from None
                if self._reached:
                    deadline = self._check_deadline(deadline, exc)
                if attempt == 0:
                    log.warning("cannot reach RabbitMQ at %s (%s); trying again", self.where, one_line(exc))
                await asyncio.sleep(backoff(attempt))
                attempt += 1

    async def _wait_given(self) -> AbstractConnection:
        """A connection the caller passed in: a robust one reconnects by itself, so wait for it."""
        assert self._given is not None
        deadline: float | None = None
        attempt = 0
        while not alive(self._given):
            deadline = self._check_deadline(deadline, ConnectionError("the given AMQP connection is closed"))
            await asyncio.sleep(backoff(attempt))
            attempt += 1
        return self._given

    def _check_deadline(self, deadline: float | None, exc: BaseException) -> float:
        now = time.monotonic()
        if deadline is None:
            return now + self.reconnect_seconds
        if now >= deadline:
            raise ServerUnreachableError(f"RabbitMQ at {self.where} unreachable for {self.reconnect_seconds:g}s: "
                                         f"{one_line(exc)}")
        return deadline

    async def channel(self, *, confirms: bool = False) -> AbstractChannel:
        """A new channel (its owner closes it)."""
        conn = await self.connection()
        return await conn.channel(publisher_confirms=confirms, on_return_raises=confirms)

    async def _raw_publisher(self) -> aiormq.Channel:
        channel = self._publisher
        raw = self._raw
        if channel is None or channel.is_closed or raw is None:
            channel = self._publisher = await self.channel(confirms=True)
            underlay = await channel.get_underlay_channel()
            assert isinstance(underlay, aiormq.Channel)  # what aio-pika runs on (publish's wait=False is its own)
            raw = self._raw = underlay
        return raw

    async def publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: aiormq.spec.Basic.Properties) -> None:
        """Publish with ``mandatory`` and wait for the broker's confirm; reconnects and retries on a lost
        connection (a message whose confirm was lost may then be published twice: at-least-once).

        Published on the aiormq channel under aio-pika's (publisher confirms, ``on_return_raises``): what
        aio-pika's ``Exchange.publish`` adds per message (a locked ``Message``, its properties copied into
        another object) was a tenth of the worker's CPU for each job, and aiormq raises the same errors
        (aio-pika's exceptions are aiormq's)."""
        deadline: float | None = None
        attempt = 0
        while True:
            try:
                raw = await self._raw_publisher()
                # wait=False: the channel's lock is not held until the writer drained the frame (the confirm,
                # awaited, comes after it anyway), so concurrent publishes do not queue behind each other
                await raw.basic_publish(body, exchange=exchange, routing_key=routing_key, properties=properties,
                                        mandatory=True, timeout=self.connect_timeout + 20, wait=False)
                return
            except PublishError as exc:
                raise NotRoutableError(f"RabbitMQ could not route a message to {routing_key!r}: "
                                       f"{one_line(exc)}") from None
            except ChannelNotFoundEntity as exc:
                self._publisher = self._raw = None
                raise NotRoutableError(f"RabbitMQ has no exchange {exchange!r}: {one_line(exc)}") from None
            except _PUBLISH_RETRY as exc:
                # a nack (broker-side failure), a closed channel or connection: try again on a fresh one
                self._publisher = self._raw = None
                if self._closed:
                    raise
                deadline = self._check_deadline(deadline, exc)
                await asyncio.sleep(backoff(attempt))
                attempt += 1

    async def close(self) -> None:
        self._closed = True
        publisher, self._publisher = self._publisher, None
        self._raw = None
        if self._given is None and self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except Exception as exc:  # closing a broken connection: nothing left to release
                log.debug("closing the AMQP connection: %s", one_line(exc))
        elif publisher is not None and not publisher.is_closed:
            try:
                await publisher.close()
            except Exception as exc:
                log.debug("closing the AMQP channel: %s", one_line(exc))


def precondition(exc: ChannelPreconditionFailed, what: str) -> ConfigError:
    return ConfigError(f"{what} exists on the broker with other settings: {one_line(exc)}",
                       hint="delete it (rabbitmqctl delete_queue NAME) or use another queue_name; "
                            "`flowcraft setup --backend rabbitmq` then creates it")


def headers_int(headers: Any, name: str) -> int:
    value = headers.get(name) if isinstance(headers, dict) else None
    try:
        return max(0, int(value)) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def headers_float(headers: Any, name: str) -> float | None:
    value = headers.get(name) if isinstance(headers, dict) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
