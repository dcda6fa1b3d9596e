"""Run-record change notifications: the status-transition script publishes on the run's channel, and one
pub/sub connection per status store wakes the processes waiting on that run (``StatusStore.wait_for_change``).

A change can come between a caller's read of a record and its wait; a subscription can miss what happened
before it was confirmed, or while its connection was down. So the first wait on a run returns as soon as the
run's channel is subscribed (the caller reads the record again, now covered), a message that arrives while
nobody waits stays news until the next wait on that run takes it, and a reconnect wakes every waiter. A caller
that subscribes before its first read (``watch``, ``StatusStore.watch``) needs no second read: its first wait
already waits for a message. The channels first watched or waited on in one loop iteration (a client waiting on
many runs at once) are subscribed in one SUBSCRIBE. A run nobody waited on for ``LINGER_SECONDS`` is
unsubscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from flowcraft_redis._client import RedisClient

log = logging.getLogger(__name__)

LINGER_SECONDS = 10.0  # a run nobody waited on this long is unsubscribed
_RETRY_SECONDS = 0.2  # between attempts to read from a connection that failed
_CLOSE_SECONDS = 1.0  # the longest ``close`` waits for the reader to end


class _Watch:
    __slots__ = ("changed", "covered", "last_wait", "subscribed", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.changed = asyncio.Event()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        #: a wait or a watch returned once the subscription was confirmed (a wait from then on waits for a change)
        self.covered = False
        self.last_wait = time.monotonic()
        self.waiters = 0


class ChangeFeed:
    """The subscriptions of one status store: channel -> who waits on it (see the module docstring)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._pubsub: PubSub | None = None
        #: on one Redis, the pool of the subscription's own connection (see ``_new_pubsub``)
        self._pool: ConnectionPool | None = None
        self._reader: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watches: dict[bytes, _Watch] = {}
        self._pruned = time.monotonic()
        #: the channels the waits of this loop iteration subscribe to, in one SUBSCRIBE (``_subscribe``)
        self._joining: tuple[set[bytes], asyncio.Future[None]] | None = None
        self._senders: set[asyncio.Task[None]] = set()

    async def watch(self, channel: str, timeout: float) -> None:
        """Subscribe to ``channel`` (unless it is) and return once that is confirmed, or after ``timeout``: from
        then on a message on it ends the next ``wait`` at once (until then, the next ``wait`` returns at the
        confirmation, as a first one does)."""
        watch = await self._watch(channel)
        if not watch.subscribed.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(watch.subscribed)
        watch.covered = watch.subscribed.done()

    async def wait(self, channel: str, timeout: float) -> None:
        """Return when ``channel`` got a message (now or since the last wait on it), on a first subscription,
        or after ``timeout``."""
        watch = await self._watch(channel)
        if not watch.covered:
            # the first wait returns once subscribed, even when the confirmation came before this wait looked (a
            # change between the caller's read and the confirmation has no message): the caller reads again,
            # covered from here on
            if not watch.subscribed.done():
                with contextlib.suppress(TimeoutError):  # (asyncio.timeout: 3.11's wait_for can swallow a cancel)
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(watch.subscribed)
            watch.covered = watch.subscribed.done()
            return
        watch.waiters += 1
        try:
            async with asyncio.timeout(timeout):
                await watch.changed.wait()
        except TimeoutError:
            pass
        finally:
            watch.waiters -= 1
            watch.last_wait = time.monotonic()
        watch.changed.clear()
        await self._prune()

    async def _watch(self, channel: str) -> _Watch:
        """The channel's watch, subscribing to it (the confirmation may still be on its way) when there is none."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests): connections of the old one are unusable
            self._loop, self._pubsub, self._pool, self._reader, self._watches = loop, None, None, None, {}
            self._joining, self._senders = None, set()
        key = channel.encode()
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(loop)  # before subscribing: the reader may see the reply first
            try:
                await self._subscribe(key)
            except BaseException:
                del self._watches[key]
                raise
        return watch

    async def _subscribe(self, key: bytes) -> None:
        """Subscribe to ``key``'s channel together with the other channels first waited on in this loop
        iteration: one SUBSCRIBE, sent by a task of its own once they all joined (a client waiting on many runs
        at once sends one command, not one per run)."""
        joining = self._joining
        if joining is None:
            joining = self._joining = (set(), asyncio.get_running_loop().create_future())
            sender = asyncio.get_running_loop().create_task(self._send_subscribe(joining))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        joining[0].add(key)
        await asyncio.shield(joining[1])

    async def _send_subscribe(self, joining: tuple[set[bytes], asyncio.Future[None]]) -> None:
        """Runs after the waits that joined ``joining`` in the iteration that created it."""
        if self._joining is joining:
            self._joining = None  # a wait from now on starts the next SUBSCRIBE
        keys, sent = joining
        try:
            if self._pubsub is None:
                self._pubsub = self._new_pubsub()
            await self._pubsub.subscribe(*keys)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.get_running_loop().create_task(self._read(self._pubsub))
        except BaseException as error:  # the joined waits raise it (a cancel: as a failed subscription)
            sent.set_exception(error if isinstance(error, Exception) else RedisError("the subscription was cancelled"))
            sent.exception()  # retrieved: no warning when no wait is left to raise it
            if not isinstance(error, Exception):
                raise
            return
        sent.set_result(None)

    def _new_pubsub(self) -> PubSub:
        """On one Redis, a subscription on a connection of its own pool, without redis-py's retry: another
        component's ``aclose`` of the shared client does not close it under the reader, and a read that fails
        comes back to ``_read`` (which wakes every waiter and reads again, reconnecting) instead of being retried
        on a reconnected connection inside redis-py, where a close's cancel could be lost (seen: a benchmark's
        client close hung on the reader). A Redis Cluster client's subscription is its own."""
        redis = self._redis
        if not isinstance(redis, Redis):
            return redis.pubsub()
        shared = redis.connection_pool
        kwargs = {**shared.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        self._pool = ConnectionPool(connection_class=shared.connection_class, **kwargs)
        return Redis(connection_pool=self._pool).pubsub()

    async def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned < LINGER_SECONDS / 2 or self._pubsub is None:
            return
        self._pruned = now
        idle = [key for key, watch in self._watches.items()
                if watch.waiters == 0 and now - watch.last_wait > LINGER_SECONDS]
        if idle:
            for key in idle:
                del self._watches[key]
            with contextlib.suppress(RedisError):
                await self._pubsub.unsubscribe(*idle)

    async def _read(self, pubsub: PubSub) -> None:
        while self._pubsub is pubsub:
            try:
                message = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as error:
                log.debug("change feed: %s; waiters fall back to their timeouts until it reconnects", error)
                self._wake_all()  # what changed while it was down is unknown
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            if message is None:
                continue
            watch = self._watches.get(message["channel"])
            if watch is None:
                continue
            if message["type"] == "subscribe":
                if not watch.subscribed.done():
                    watch.subscribed.set_result(None)
                else:  # subscribed again after a reconnect: changes in between were missed
                    watch.changed.set()
            elif message["type"] == "message":
                watch.changed.set()

    def _wake_all(self) -> None:
        for watch in self._watches.values():
            watch.changed.set()

    async def close(self) -> None:
        """Stop reading and close the subscription's connection: the reader is cancelled and the subscription
        closed before the reader is awaited, at most ``_CLOSE_SECONDS`` (a close never hangs on it), then the
        subscription's own pool (``_new_pubsub``)."""
        pubsub, reader, pool = self._pubsub, self._reader, self._pool
        self._pubsub = self._reader = self._pool = None
        self._watches = {}
        if reader is not None:
            reader.cancel()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        if reader is not None:
            await asyncio.wait({reader}, timeout=_CLOSE_SECONDS)
            if reader.done() and not reader.cancelled():
                reader.exception()  # retrieved: the reader's last error is of no interest once closed
        if pool is not None:  # last: whatever the reader reconnected is closed too
            with contextlib.suppress(RedisError, OSError):
                await pool.disconnect()
