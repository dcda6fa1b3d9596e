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

On a Redis Cluster the scripts publish with ``SPUBLISH`` (a sharded channel: the run's channel carries its queue
group's hash tag, so the message stays in that group's shard instead of being broadcast to every node over the
cluster bus) and the feed subscribes with ``SSUBSCRIBE`` on the primary of the channel's slot: one subscription
connection per primary (``_Shard``), one ``SSUBSCRIBE`` per slot of the channels joined in one loop iteration. A
shard's connection that fails wakes every waiter and reconnects (subscribing its channels again, a command per
slot); a channel the server drops (its slot moved: an unrequested ``sunsubscribe``) or refuses (``MOVED``) wakes
its waiters and is subscribed again on the slot's primary after the slot map is refreshed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError

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


def _slot(channel: bytes | str) -> int:
    return key_slot(channel.encode() if isinstance(channel, str) else channel)


def _by_slot(channels: Iterable[bytes]) -> list[list[bytes]]:
    """``channels`` grouped by hash slot (one ``SSUBSCRIBE``/``SUNSUBSCRIBE`` names channels of one slot)."""
    groups: dict[int, list[bytes]] = {}
    for channel in channels:
        groups.setdefault(_slot(channel), []).append(channel)
    return list(groups.values())


def _primary(redis: RedisCluster, channel: bytes) -> ClusterNode:
    """The primary of ``channel``'s slot in the client's slot map."""
    owners = redis.nodes_manager.slots_cache.get(_slot(channel))
    if not owners:
        raise SlotNotCoveredError(f"slot {_slot(channel)} is not covered by the cluster")
    return owners[0]


class _ShardPubSub(PubSub):
    """A subscription connection to one primary of a cluster: after a reconnect its sharded channels are
    subscribed again with one ``SSUBSCRIBE`` per slot (redis-py's one command for all of them would be refused
    with ``CROSSSLOT``)."""

    async def _resubscribe_shard_channels(self) -> None:
        for channels in _by_slot(self.shard_channels):
            await self.ssubscribe(*channels)


class _Shard:
    """On a cluster, the subscription to one primary: its connection's own pool (without redis-py's retry, as on
    one Redis: ``ChangeFeed._new_pubsub``) and the task reading it."""

    __slots__ = ("following", "name", "pool", "pubsub", "reader")

    def __init__(self, name: str, pool: ConnectionPool) -> None:
        self.name = name
        self.pool = pool
        self.pubsub = _ShardPubSub(connection_pool=pool)
        self.reader: asyncio.Task[None] | None = None
        #: a ``ChangeFeed._follow`` of this shard's channels runs
        self.following = False


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
        #: on a Redis Cluster, the subscription to each primary (``ClusterNode.name``) that has channels
        self._shards: dict[str, _Shard] = {}
        #: on a cluster, the tasks that subscribe again channels whose slot moved (``_follow``)
        self._followers: set[asyncio.Task[None]] = set()

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
            self._joining, self._senders, self._shards, self._followers = None, set(), {}, set()
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
            if isinstance(self._redis, RedisCluster):
                await self._ssubscribe(self._redis, keys)
            else:
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
        if now - self._pruned < LINGER_SECONDS / 2 or (self._pubsub is None and not self._shards):
            return
        self._pruned = now
        idle = [key for key, watch in self._watches.items()
                if watch.waiters == 0 and now - watch.last_wait > LINGER_SECONDS]
        if idle:
            for key in idle:
                del self._watches[key]
            with contextlib.suppress(RedisError, OSError):
                if self._pubsub is not None:
                    await self._pubsub.unsubscribe(*idle)
                for shard in list(self._shards.values()):
                    held = [key for key in idle if key in shard.pubsub.shard_channels]
                    for channels in _by_slot(held):
                        await shard.pubsub.sunsubscribe(*channels)

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

    async def _ssubscribe(self, redis: RedisCluster, keys: Iterable[bytes]) -> None:
        """On a cluster: ``keys`` subscribed on the primaries of their slots, one ``SSUBSCRIBE`` per slot."""
        if not redis.nodes_manager.slots_cache:
            await redis.initialize()
        by_node: dict[str, list[bytes]] = {}
        for key in keys:
            node = _primary(redis, key)
            by_node.setdefault(node.name, []).append(key)
            if node.name not in self._shards:
                self._shards[node.name] = _Shard(node.name, ConnectionPool(
                    connection_class=node.connection_class,
                    **{**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}))
        for name, held in by_node.items():
            shard = self._shards[name]
            for channels in _by_slot(held):
                await shard.pubsub.ssubscribe(*channels)
            if shard.reader is None or shard.reader.done():
                shard.reader = asyncio.get_running_loop().create_task(self._read_shard(shard))

    async def _read_shard(self, shard: _Shard) -> None:
        """``_read`` for one primary of a cluster; a channel the primary no longer serves (its slot moved: an
        unrequested ``sunsubscribe``, or a ``MOVED`` refusal of an ``SSUBSCRIBE``) is followed (``_follow``)."""
        pubsub = shard.pubsub
        while self._shards.get(shard.name) is shard:
            try:
                message = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as error:
                log.debug("change feed (%s): %s; waiters fall back to their timeouts until it reconnects",
                          shard.name, error)
                self._wake_all()  # what changed while it was down is unknown
                await asyncio.sleep(_RETRY_SECONDS)
                if not shard.following:  # a refused SSUBSCRIBE (MOVED: the slot map is stale) or a lost primary
                    shard.following = True  # (a failover): its channels go where the slot map puts them now
                    self._start_follow(None, shard)
                continue
            if message is None:
                continue
            kind = message["type"]
            watch = self._watches.get(message["channel"])
            if watch is None:
                continue
            if kind == "smessage":
                watch.changed.set()
            elif kind == "ssubscribe":
                if not watch.subscribed.done():
                    watch.subscribed.set_result(None)
                else:  # subscribed again after a reconnect or a move: changes in between were missed
                    watch.changed.set()
            elif kind == "sunsubscribe":  # not asked for (an idle one is no longer watched): its slot moved
                watch.changed.set()
                pubsub.shard_channels.pop(message["channel"], None)  # not to be subscribed here again
                self._start_follow([message["channel"]])

    def _start_follow(self, keys: list[bytes] | None, shard: _Shard | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self._follow(keys, shard))
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def _follow(self, keys: list[bytes] | None, shard: _Shard | None) -> None:
        """Refresh the cluster client's slot map, then subscribe ``keys`` (or those of ``shard``'s channels that
        another primary serves now, dropped from ``shard``) where their slots are; retried every
        ``_RETRY_SECONDS`` while any of them is still watched."""
        redis = self._redis
        assert isinstance(redis, RedisCluster)
        try:
            while True:
                try:
                    await redis.nodes_manager.initialize()
                    if shard is not None:
                        keys = [key for key in list(shard.pubsub.shard_channels)
                                if _primary(redis, key).name != shard.name]
                        for key in keys:
                            shard.pubsub.shard_channels.pop(key, None)
                        if not shard.pubsub.shard_channels and self._shards.get(shard.name) is shard:
                            del self._shards[shard.name]  # nothing left there (a primary gone): stop reading it
                            await self._close(shard.pubsub, shard.reader, shard.pool)
                        shard.following, shard = False, None
                    keys = [key for key in keys or () if key in self._watches]
                    if keys:
                        await self._ssubscribe(redis, keys)
                    return
                except (RedisError, RedisClusterException, OSError) as error:
                    log.debug("change feed: following moved channels: %s; retrying", error)
                    await asyncio.sleep(_RETRY_SECONDS)
        finally:
            if shard is not None:
                shard.following = False

    def _wake_all(self) -> None:
        for watch in self._watches.values():
            watch.changed.set()

    async def close(self) -> None:
        """Stop reading and close the subscription's connection: the reader is cancelled and the subscription
        closed before the reader is awaited, at most ``_CLOSE_SECONDS`` (a close never hangs on it), then the
        subscription's own pool (``_new_pubsub``)."""
        for follower in self._followers:
            follower.cancel()
        shards, self._shards, self._followers = list(self._shards.values()), {}, set()
        for shard in shards:
            await self._close(shard.pubsub, shard.reader, shard.pool)
        pubsub, reader, pool = self._pubsub, self._reader, self._pool
        self._pubsub = self._reader = self._pool = None
        self._watches = {}
        await self._close(pubsub, reader, pool)

    @staticmethod
    async def _close(pubsub: PubSub | None, reader: asyncio.Task[None] | None, pool: ConnectionPool | None) -> None:
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
