"""What every Redis component uses: JSON helpers, fast command packing, the client factory, the key layout
and the auto-pipeline (one ``Batcher`` per client, shared by every component on that client).

Nothing here caches data: which components share a client and key prefix, and the fast paths that follow
from it, are wired explicitly while a backend is built (``flowcraft_redis.colocation``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import json.encoder
import weakref
import zlib
from collections import deque
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, InvalidResponse, MovedError, NoScriptError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flowcraft.config import redact_text
from flowcraft.errors import ConfigError, ServerUnreachableError

#: a client of one Redis (or a primary) or of a Redis Cluster
RedisClient = Redis | RedisCluster

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "flowcraft:"
DEFAULT_TTL = 7 * 24 * 3600

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _unencodable(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


#: ``_encoder``'s C encoder, made once (``JSONEncoder.encode`` makes one per call), without the circular-reference
#: check (a cycle ends in a RecursionError, and ``dumps`` then raises ``_encoder``'s error); None without the C
#: extension
_c_encode = (json.encoder.c_make_encoder(None, _unencodable, json.encoder.encode_basestring, None, ":", ",",  # type: ignore[attr-defined]
                                         False, False, True)
             if json.encoder.c_make_encoder is not None else None)  # type: ignore[attr-defined]


def dumps(value: Any) -> str:
    """Compact JSON (what every value in Redis is): ``_encoder.encode``'s text, from an encoder made once."""
    if _c_encode is not None:
        try:
            return "".join(_c_encode(value, 0))
        except (ValueError, TypeError, RecursionError):
            pass  # _encoder raises the usual error (or encodes what the C encoder would not)
    return _encoder.encode(value)


def loads(raw: bytes | str | None) -> Any:
    return None if raw is None else json.loads(raw)


def text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class Packed(bytes):
    """Several command arguments already in RESP form (``nargs`` of them): constant argument runs such as a
    dispatcher's keys are packed once. Only for clients made by ``make_client`` (see ``fast_packing``)."""

    nargs: int

    @classmethod
    def of(cls, *args: str | bytes | int) -> Packed:
        parts: list[bytes] = []
        for arg in args:
            raw = arg.encode() if isinstance(arg, str) else (b"%d" % arg if isinstance(arg, int) else arg)
            parts += (b"$%d\r\n" % len(raw), raw, b"\r\n")
        packed = cls(b"".join(parts))
        packed.nargs = len(args)
        return packed


def fast_packing(client: RedisClient) -> bool:
    """Whether ``client`` packs commands with ``_FastPack`` (and so understands ``Packed`` arguments)."""
    if isinstance(client, RedisCluster):
        connection_class = client.nodes_manager.connection_kwargs.get("connection_class")
    else:
        connection_class = client.connection_pool.connection_class
    return isinstance(connection_class, type) and issubclass(connection_class, _FastPack)


#: RESP bulk-string headers ``$<n>\r\n`` of the short lengths most arguments have, made once
_HEADS = 1024
_BULK_HEADS = tuple(b"$%d\r\n" % size for size in range(_HEADS))


class _FastPack:
    """redis-py's ``pack_command`` re-joins its buffer once per argument (quadratic in the argument count,
    ~80 us for a commit script's ~60 arguments); this packs str/bytes/int/float arguments in one join and
    leaves anything else to redis-py."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if (isinstance(first, str) and " " in first) or (isinstance(first, bytes | memoryview) and b" " in first):
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]  # 'SCRIPT LOAD' etc.
        parts: list[bytes] = []
        append = parts.append
        count = len(args)
        heads = _BULK_HEADS
        for arg in args:
            kind = type(arg)  # exact types first (a str/int subclass, e.g. an enum, takes the generic path)
            if kind is str:
                arg = arg.encode()
            elif kind is int:
                arg = b"%d" % arg
            elif kind is Packed:
                append(arg)
                count += arg.nargs - 1
                continue
            elif kind is float:
                arg = repr(arg).encode()
            elif kind is not bytes:
                if isinstance(arg, str):
                    arg = arg.encode()
                elif isinstance(arg, bytes):
                    arg = bytes(arg)
                elif isinstance(arg, int) and not isinstance(arg, bool):
                    arg = b"%d" % arg
                elif isinstance(arg, float):
                    arg = repr(arg).encode()
                else:
                    return super().pack_command(*args)  # type: ignore[misc, no-any-return]  # DataError etc.
            size = len(arg)
            append(heads[size] if size < _HEADS else b"$%d\r\n" % size)
            append(arg)
            append(b"\r\n")
        return [b"*%d\r\n" % count + b"".join(parts)]

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join(chunk for command in commands for chunk in self.pack_command(*command))]


class _FastConnection(_FastPack, Connection):
    pass


class _FastSSLConnection(_FastPack, SSLConnection):
    pass


class _FastUnixConnection(_FastPack, UnixDomainSocketConnection):
    pass


CONNECT_TIMEOUT = 5.0  # seconds for one TCP connect: an unroutable host must not hang the first command


class _RestartTolerantRetry(Retry):
    """Once the server has been reached, reconnects with backoff for ~30 s (rides out a restart); before
    that, an unreachable server is reported at once as a ConfigError naming it (URL password masked).

    redis-py deep-copies the retry into every connection; one shared instance keeps "reached" client-wide,
    so a connection opened after a restart still retries."""

    def __init__(self, url: str) -> None:
        super().__init__(ExponentialBackoff(cap=1.0, base=0.05), retries=40)
        self._url = url
        self._reached = False

    def __deepcopy__(self, memo: dict[int, Any]) -> _RestartTolerantRetry:
        return self

    async def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None,
                              with_failure_count: bool = False) -> Any:
        if self._reached:
            return await super().call_with_retry(do, fail, is_retryable, with_failure_count)
        try:
            result = await do()
        except (RedisConnectionError, RedisTimeoutError) as error:
            await fail(error, 1) if with_failure_count else await fail(error)
            raise ServerUnreachableError(
                f"cannot connect to Redis at {redact_text(self._url)}: {' '.join(str(error).split())}",
                hint="check that the server runs and is reachable from here, and the redis_url option "
                     "(FLOWCRAFT_REDIS_URL or [options] redis_url)") from None
        self._reached = True
        return result


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(client: RedisClient) -> bool:
    """Whether ``client`` talks to a Redis Cluster (scripts may touch one slot per call; see the README)."""
    return isinstance(client, RedisCluster)


def cluster_url(url: str, cluster: bool = False) -> tuple[str, bool]:
    """``url`` as redis-py reads it and whether it names a Redis Cluster: a ``redis+cluster://`` or
    ``rediss+cluster://`` URL, or ``cluster`` (the ``redis_cluster`` option) with ``redis://``/``rediss://``."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if plain is not None:
        return f"{plain}{sep}{rest}", True
    if cluster and scheme.lower() not in ("redis", "rediss"):
        raise ConfigError(f"redis_cluster needs a redis:// or rediss:// URL, not {redact_text(url)}",
                          hint="a Redis Cluster is reached over TCP: redis+cluster://host:port (any node)")
    return url, cluster


def make_any_client(url: str, cluster: bool = False) -> RedisClient:
    """``make_client``, or for a ``redis+cluster://host:port`` URL (``rediss+cluster://`` with TLS) or
    ``cluster=True`` (the ``redis_cluster`` option) a ``redis.asyncio.RedisCluster`` that starts from that
    node. For components that work on a Redis Cluster (the Redis stores, the rq queue)."""
    url, cluster = cluster_url(url, cluster)
    if cluster:
        path = url.partition("://")[2].partition("/")[2].partition("?")[0]
        if path not in ("", "0"):
            raise ConfigError(f"a Redis Cluster has only database 0, not {path!r} ({redact_text(url)})")
        try:
            cluster_client = RedisCluster.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
        except ValueError as error:
            raise ConfigError(f"invalid Redis Cluster URL {redact_text(url)}: {error}") from None
        _fast_cluster_packing(cluster_client)
        return cluster_client
    return make_client(url)


def _fast_cluster_packing(client: RedisCluster) -> None:
    """Let the cluster's node connections pack commands with ``_FastPack`` too: redis-py's RedisCluster takes no
    connection class, but its nodes (the startup ones, and those it discovers from ``connection_kwargs``) do."""
    manager = client.nodes_manager
    base = manager.connection_kwargs.get("connection_class", Connection)
    fast = {Connection: _FastConnection, SSLConnection: _FastSSLConnection}.get(base)
    if fast is None:
        return
    manager.connection_kwargs["connection_class"] = fast
    for node in manager.startup_nodes.values():
        node.connection_class = fast


def make_client(url: str) -> Redis:
    """A redis.asyncio client of one Redis server for ``url`` that rides out a restart (reconnects with
    backoff for ~30 s) and reports a server it never reached at once (``_RestartTolerantRetry``). A Redis
    Cluster URL is refused here (``make_any_client`` takes it)."""
    if cluster_url(url)[1]:
        raise ConfigError(f"{redact_text(url)} names a Redis Cluster, which this component does not support",
                          hint="use a redis:// URL of one server, or components that support a cluster "
                               "(flowcraft-redis stores, the rq preset)")
    retry = _RestartTolerantRetry(url)
    scheme = url.split("://", 1)[0].lower()
    connection_class = {"redis": _FastConnection, "rediss": _FastSSLConnection, "unix": _FastUnixConnection}.get(
        scheme, Connection)
    return Redis.from_url(
        url,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=0,
        socket_connect_timeout=CONNECT_TIMEOUT,
        connection_class=connection_class,
    )


def option_url(options: Any) -> str:
    return str(options.get("redis_url") or DEFAULT_URL)


def option_cluster(options: Any) -> bool:
    value = options.get("redis_cluster")
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def shared_any_client(options: Any, shared: dict[str, Any]) -> RedisClient:
    """One client per URL among the components built from one config (``shared`` from ``from_config``); a
    Redis Cluster client for a cluster URL or ``redis_cluster`` (``make_any_client``)."""
    url, cluster = cluster_url(option_url(options), option_cluster(options))
    key = f"redis:{'cluster:' if cluster else ''}{url}"
    client: RedisClient | None = shared.get(key)
    if client is None:
        client = shared[key] = make_any_client(url, cluster)
    return client


def shared_client(options: Any, shared: dict[str, Any]) -> Redis:
    """``shared_any_client`` for a component that needs one Redis server (a cluster URL is refused)."""
    client = shared_any_client(options, shared)
    if not isinstance(client, Redis):
        raise ConfigError(f"{redact_text(option_url(options))} names a Redis Cluster, which this component "
                          "does not support", hint="use a redis:// URL of one server")
    return client


#: queue groups of a Redis Cluster keyspace (``cluster_queue_groups``; see ``group_tags``)
DEFAULT_GROUPS = 12


def group_tags(groups: int) -> tuple[str, ...]:
    """The hash tags of a Redis Cluster keyspace's ``groups`` queue groups: group ``g``'s is ``fcq<g>.<n>`` with
    ``n`` the smallest integer whose CRC16 slot falls in ``[g*16384//groups, (g+1)*16384//groups)``, so the groups
    spread evenly over the contiguous slot ranges of the primaries (deterministic: independent of the slot map)."""
    if not 1 <= groups <= 1024:
        raise ConfigError(f"cluster_queue_groups must be between 1 and 1024, not {groups}")
    tags: list[str] = []
    for g in range(groups):
        low, high = g * 16384 // groups, (g + 1) * 16384 // groups
        n = 0
        while not low <= key_slot(f"fcq{g}.{n}".encode()) < high:
            n += 1
        tags.append(f"fcq{g}.{n}")
    return tuple(tags)


def run_group(run_id: str, groups: int) -> int:
    """The queue group of a run on a Redis Cluster keyspace of ``groups`` groups: ``crc32(run id) mod groups``."""
    return zlib.crc32(run_id.encode()) % groups


class Keys:
    """The key layout (documented in the README). Every key of one run carries one Redis Cluster hash tag, so a
    run's keys share one slot and its scripts stay atomic on a cluster: on one Redis (``groups`` 0) the run's id,
    ``{<run id>}``; on a cluster the tag of the run's queue group, ``{<group tag>}<run id>`` (``group_tags``,
    ``run_group``), the slot of that group's queue too. Run ids go into keys as-is, always last, so two different
    ids never produce the same key; nothing is ever parsed out of a key."""

    def __init__(self, prefix: str, groups: int = 0) -> None:
        self.prefix = prefix
        self.idx_created = f"{prefix}idx:created"
        self.groups = groups
        self.tags = group_tags(groups) if groups else ()

    def group(self, run_id: str) -> int:
        """The run's queue group (0 on one Redis)."""
        return run_group(run_id, self.groups) if self.groups else 0

    def group_tag(self, run_id: str) -> str:
        """On a cluster, ``{<group tag>}`` of the run's queue group (only with ``groups``)."""
        return f"{{{self.tags[run_group(run_id, self.groups)]}}}"

    def tagged(self, run_id: str) -> str:
        """What follows a run key's kind: ``{<run id>}``, or on a cluster ``{<group tag>}<run id>``."""
        if self.groups:
            return f"{self.group_tag(run_id)}{run_id}"
        return f"{{{run_id}}}"

    def ctx(self, run_id: str) -> str:
        return f"{self.prefix}ctx:{self.tagged(run_id)}"

    def status(self, run_id: str) -> str:
        return f"{self.prefix}status:{self.tagged(run_id)}"

    def idx_status(self, status: str) -> str:
        return f"{self.prefix}idx:status:{status}"

    def created_index(self, run_id: str) -> str:
        """The index of creation times the run is in: ``idx_created``, or on a cluster its group's
        (``P idx:created:{<group tag>}``, in the slot of the run's keys)."""
        if self.groups:
            return f"{self.idx_created}:{self.group_tag(run_id)}"
        return self.idx_created

    def status_index(self, status: str, run_id: str) -> str:
        """The index of runs with ``status`` the run is in when it has it: ``idx_status(status)``, or on a
        cluster its group's (``P idx:status:<status>:{<group tag>}``)."""
        if self.groups:
            return f"{self.idx_status(status)}:{self.group_tag(run_id)}"
        return self.idx_status(status)

    def created_indexes(self) -> list[str]:
        """Every index of creation times (one, or one per group on a cluster)."""
        return [f"{self.idx_created}:{{{tag}}}" for tag in self.tags] or [self.idx_created]

    def status_indexes(self, status: str) -> list[str]:
        """Every index of runs with ``status`` (one, or one per group on a cluster)."""
        return [f"{self.idx_status(status)}:{{{tag}}}" for tag in self.tags] or [self.idx_status(status)]

    def run(self, run_id: str) -> str:
        """The run's coordination hash: jobs, completions, leases, join arrivals and counters."""
        return f"{self.prefix}run:{self.tagged(run_id)}"

    def changes(self, run_id: str) -> str:
        """The pub/sub channel a status transition of the run is published on."""
        return f"{self.prefix}changed:{self.tagged(run_id)}"



#: a ``_Wire`` waits for its transport's buffer to drain past this many bytes
_WRITE_HIGH = 1 << 20


class _Wire:
    """The batcher's own connection to one Redis (a client made by ``make_client``, or a primary of a cluster
    client ``make_any_client`` made): each batch is written as one
    packed pipeline and its replies are parsed straight off the socket by one reader task (hiredis), each
    caller's future resolved as its reply comes, with redis-py's response callbacks applied as its
    ``execute_command`` does. Batches overlap on the connection (Redis answers in order); redis-py's own
    pipeline costs a coroutine chain, a timeout context and its bookkeeping per command and pool round per batch.

    The connection is redis-py's (from the client's pool: it connects, authenticates, selects the database and
    is closed with the client); a broken one fails the batches in flight with a ``ConnectionError``, which the
    client's retry policy retries on a reconnected one, as redis-py retries a pipeline."""

    def __init__(self, client: Redis | ClusterNode) -> None:
        #: a plain client (its pool gives the connection, its retry policy retries) or a Redis Cluster primary
        #: (``Batcher._execute_on_wires``: the connection is the node's, and a failed batch goes to redis-py's
        #: cluster pipeline instead of being retried here)
        self.client = client
        kwargs = client.connection_pool.connection_kwargs if isinstance(client, Redis) else client.connection_kwargs
        self.retry: Retry | None = kwargs.get("retry") if isinstance(client, Redis) else None
        #: the connections' socket timeout (a cluster client's default): the longest a batch waits for its replies
        self.timeout: float | None = kwargs.get("socket_timeout")
        self._callbacks: dict[Any, Any] = {}  # command name -> redis-py's response callback (None: none)
        self._conn: Connection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        #: batches written and not answered, oldest first: [future, callbacks, replies]
        self._waiting: deque[tuple[asyncio.Future[list[Any]], list[Any], list[Any]]] = deque()
        #: batches answered on this wire (the watchdog's sign of progress)
        self._answered = 0
        #: with a timeout: the timer that checks that the connection still answers (``_watchdog``)
        self._watch: asyncio.TimerHandle | None = None

    @staticmethod
    def usable(client: RedisClient) -> bool:
        """Whether ``client`` is a client that ``make_client`` or ``make_any_client`` made (RESP2, bytes): the
        connections whose replies this parses as redis-py would."""
        if not fast_packing(client):
            return False
        if isinstance(client, RedisCluster):
            kwargs = client.nodes_manager.connection_kwargs
        elif getattr(client, "single_connection_client", False):
            return False
        else:
            kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("decode_responses"):
            return False
        if kwargs.get("protocol") not in (None, 2, "2"):
            return False
        try:
            import hiredis  # noqa: F401  # flowcraft-redis depends on redis[hiredis]
        except ImportError:  # pragma: no cover
            return False
        return True

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if self.retry is None:
            return await self._once(commands)
        return list(await self.retry.call_with_retry(lambda: self._once(commands), self._failed))

    @staticmethod
    async def _failed(error: BaseException) -> None:
        """Nothing to undo before a retry: the reader broke the connection the batch was on (or it never
        connected), and the next attempt reconnects."""

    async def _once(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        writer = self._writer
        if writer is None:
            writer = await self._connect()
        callbacks = self._callbacks
        names: list[Any] = []
        for command in commands:
            name = command[0]
            try:
                names.append(callbacks[name])
            except KeyError:
                callbacks[name] = self.client.response_callbacks.get(name)
                names.append(callbacks[name])
        conn = self._conn
        assert conn is not None
        packed = conn.pack_commands(commands)[0]  # before the batch waits: a packing error must not shift replies
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((future, names, []))
        writer.write(packed)
        if writer.transport.get_write_buffer_size() > _WRITE_HIGH:
            try:
                await writer.drain()
            except OSError as error:  # what reached Redis is unknown: the connection is given up, as on a read error
                if self._writer is writer:
                    self._broken(RedisConnectionError(f"Error while writing to Redis: {error!r}"))
        if self.timeout is not None and self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(self.timeout, self._watchdog, self._answered)
        return await future

    def _watchdog(self, answered: int) -> None:
        """With a timeout (a cluster client's socket timeout): batches waiting and none answered since the last
        check, ``timeout`` ago, means the connection hangs: it is given up as on redis-py's read timeout, and the
        batches on it fail with a ``ConnectionError`` (so a batch waits at most about twice ``timeout`` for its
        first reply). One timer per wire and timeout, not a timeout context per batch."""
        self._watch = None
        if not self._waiting or self.timeout is None:
            return
        if self._answered == answered:
            if self._writer is not None:
                self._broken(RedisConnectionError(f"Timeout reading from Redis after {self.timeout} s"))
            return
        self._watch = asyncio.get_running_loop().call_later(self.timeout, self._watchdog, self._answered)

    async def _connect(self) -> asyncio.StreamWriter:
        """The connection (redis-py connects and handshakes it) and its reader task; one connect at a time."""
        while self._writer is None:
            if self._connecting is not None:
                await asyncio.shield(self._connecting)
                continue
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            try:
                conn = self._conn
                client = self.client
                if conn is None and isinstance(client, Redis):
                    pool = client.connection_pool
                    try:
                        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
                    except TypeError:  # pragma: no cover - redis-py 5.0-5.2 want a command name
                        conn = await pool.get_connection("_")  # type: ignore[no-untyped-call]
                    self._conn = conn
                else:
                    if conn is None:  # a cluster node's: closed with the node's connections (RedisCluster.aclose)
                        assert isinstance(client, ClusterNode)
                        conn = self._conn = client.acquire_connection()
                    await conn.connect()  # type: ignore[no-untyped-call]
                reader, writer = getattr(conn, "_reader", None), getattr(conn, "_writer", None)
                if not isinstance(reader, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
                    raise RedisConnectionError("the Redis connection has no stream")  # pragma: no cover
                self._writer = writer
                self._reader = loop.create_task(self._read(reader, writer))
            finally:
                connecting, self._connecting = self._connecting, None
                connecting.set_result(None)
        return self._writer

    async def _read(self, stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Parse the connection's replies in order into the waiting batches until it breaks or is replaced."""
        import hiredis

        parser = hiredis.Reader(protocolError=InvalidResponse, replyError=_parse_error)
        waiting = self._waiting
        error: BaseException
        try:
            while self._writer is writer:
                data = await stream.read(65536)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                parser.feed(data)
                while waiting:
                    reply = parser.gets()
                    if reply is False:
                        break
                    future, callbacks, replies = waiting[0]
                    callback = callbacks[len(replies)]
                    if callback is not None and not isinstance(reply, Exception):
                        try:
                            reply = callback(reply)
                        except Exception as exc:  # that call's error; the replies after it are still in step
                            reply = exc
                    replies.append(reply)
                    if len(replies) == len(callbacks):
                        waiting.popleft()
                        self._answered += 1
                        if not future.done():
                            future.set_result(replies)
            return
        except asyncio.CancelledError:  # the loop is closing
            if self._writer is writer:
                self._broken(RedisConnectionError("the connection's reader was cancelled"))
            raise
        except RedisConnectionError as exc:
            error = exc
        except Exception as exc:  # an unreadable reply or a broken socket: the connection is lost
            error = RedisConnectionError(f"Error while reading from Redis: {exc!r}")
        if self._writer is writer:
            self._broken(error)

    def _broken(self, error: BaseException) -> None:
        """The connection is lost: every batch written on it fails with ``error`` (the retry policy decides);
        the next batch reconnects."""
        writer, self._writer = self._writer, None
        if self._watch is not None:  # the batches it watched fail here; the next batch arms it again
            self._watch.cancel()
            self._watch = None
        if writer is not None:
            writer.close()
            conn = self._conn
            if conn is not None and getattr(conn, "_writer", None) is writer:
                conn._writer = conn._reader = None  # connect() makes new ones
        waiting, self._waiting = self._waiting, deque()
        for future, _, _ in waiting:
            if not future.done():
                future.set_exception(error if isinstance(error, RedisConnectionError)
                                     else RedisConnectionError(str(error)))


def _parse_error(message: str) -> Exception:
    """An error reply as redis-py makes it (``NoScriptError`` for NOSCRIPT, and so on)."""
    from redis._parsers.base import BaseParser

    return BaseParser.parse_error(message)  # type: ignore[no-any-return, no-untyped-call]


class Batcher:
    """Auto-pipelining: commands queued during one event-loop iteration are sent as one pipeline.

    At most ``max_in_flight`` pipelines are in flight; calls made meanwhile form the next one. Scripts are sent
    as EVALSHA and loaded on NOSCRIPT (e.g. after a server restart). On one Redis, with a client ``make_client``
    made, the pipelines go over the batcher's own connection (``_Wire``); otherwise through redis-py's."""

    def __init__(self, client: RedisClient, max_in_flight: int = 2) -> None:
        self.client = client
        self.max_in_flight = max_in_flight
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, str] = {}
        self._lean = _Wire.usable(client)
        self._node_wires: dict[str, _Wire] = {}  # on a cluster: per primary (``ClusterNode.name``)
        self._wire: _Wire | None = None
        #: round trips (pipelines sent) and commands, for measurements
        self.round_trips = 0
        self.commands = 0

    def script(self, source: str) -> str:
        """Register a script; returns its SHA1 to pass to ``call_script``."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._scripts[sha] = source
        return sha

    def call_script(self, sha: str, keys: tuple[str, ...] | list[str], *args: Any) -> asyncio.Future[Any]:
        """EVALSHA with ``keys`` as KEYS (every key the script touches: a cluster client routes by them) and
        ``args`` as ARGV. Like ``call``, submitted when called (not when awaited): the future of its reply."""
        return self._submit(("EVALSHA", sha, len(keys), *keys, *args))

    def call(self, *command: Any) -> asyncio.Future[Any]:
        """One command, submitted now to the next pipeline: the future of its reply."""
        return self._submit(command)

    async def call_many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Several commands in one pipeline, in order (not atomic: no script for what needs no atomicity)."""
        return list(await asyncio.gather(*(self._submit(command) for command in commands)))

    def _submit(self, command: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = self._loop
        if loop is None or not loop.is_running():  # (asking for the running loop costs a getpid on 3.11)
            loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._queue, self._in_flight, self._tasks = loop, [], 0, set()
            self._wire = _Wire(self.client) if self._lean and isinstance(self.client, Redis) else None
            self._node_wires = {}
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if self._in_flight < self.max_in_flight:
            # a sender starts on the next loop iteration, so the calls of every job that runs in this one
            # share its pipeline; up to ``max_in_flight`` pipelines overlap (Redis works while we pack)
            self._in_flight += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._in_flight -= 1

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._execute([command for command, _ in batch])
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                for source in self._scripts.values():
                    await self.client.script_load(source)  # on a cluster: on every primary
                again = await self._execute([batch[i][0] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except BaseException as exc:  # hand the failure to every waiting caller
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.round_trips += 1
        self.commands += len(commands)
        if self._wire is not None:
            return await self._wire.execute(commands)
        if isinstance(self.client, RedisCluster):
            if self._lean:
                return await self._execute_on_wires(self.client, commands)
            return await self._execute_on_cluster(self.client, commands)
        if len(commands) == 1:
            try:  # redis-py leaves Redis.execute_command unannotated
                return [await self.client.execute_command(*commands[0])]  # type: ignore[no-untyped-call]
            except NoScriptError as exc:
                return [exc]
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    async def _execute_on_wires(self, client: RedisCluster, commands: list[tuple[Any, ...]]) -> list[Any]:
        """On a cluster, each command on the wire (``_Wire``) of the primary of its first key's slot, the primaries'
        parts of the batch at once. What a wire cannot settle goes to ``_execute_on_cluster`` (redis-py's cluster
        pipeline follows redirections, refreshes the slot map and retries): a keyless command or a slot not mapped
        yet (the whole batch), a redirection or cluster-down reply (that command: it did not run), a broken
        connection (that node's part, which may have run, as redis-py's retry would send it again)."""
        slots = client.nodes_manager.slots_cache
        parts: dict[str, tuple[ClusterNode, list[int]]] = {}
        for index, command in enumerate(commands):
            key = _first_key(command)
            owners = slots.get(key_slot(key.encode() if isinstance(key, str) else key)) if key is not None else None
            if not owners:
                return await self._execute_on_cluster(client, commands)
            node = owners[0]
            parts.setdefault(node.name, (node, []))[1].append(index)
        wires = self._node_wires
        for name, (node, _) in parts.items():
            if name not in wires:
                wires[name] = _Wire(node)
        replies: list[Any]
        if len(parts) == 1:  # one primary's batch: awaited here, without gather's task
            name, (_, part) = next(iter(parts.items()))
            try:
                replies = [await wires[name].execute(commands)]
            except RedisConnectionError as error:
                replies = [error]
        else:
            replies = await asyncio.gather(*(wires[name].execute([commands[i] for i in part])
                                             for name, (_, part) in parts.items()), return_exceptions=True)
        results: list[Any] = [None] * len(commands)
        again: list[int] = []
        for (_, part), got in zip(parts.values(), replies, strict=True):
            if isinstance(got, BaseException):
                if not isinstance(got, RedisConnectionError):
                    raise got
                again += part
                continue
            for index, reply in zip(part, got, strict=True):
                if isinstance(reply, _REDIRECTED):
                    again.append(index)
                else:
                    results[index] = reply
        if again:
            for index, reply in zip(again, await self._execute_on_cluster(client, [commands[i] for i in again]),
                                    strict=True):
                results[index] = reply
        return results

    @staticmethod
    async def _execute_on_cluster(client: RedisCluster, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command sent to the node of its first key's slot (``target_nodes``), so redis-py does not compute
        and compare the slot of every key (all keys of one call share a slot here); a redirection is still
        followed (redis-py then routes the command itself). Keyless calls are routed by redis-py."""
        slots = client.nodes_manager.slots_cache  # slot -> its nodes, the primary first (empty before the first call)
        pipe = client.pipeline(transaction=False)
        for command in commands:
            key = _first_key(command)
            owners = slots.get(key_slot(key.encode() if isinstance(key, str) else key)) if key is not None else None
            if owners:
                pipe.execute_command(*command, target_nodes=owners[0])
            else:
                pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))


#: commands the batcher sends whose first argument is a key (on a cluster: where it is sent, ``Batcher._target``)
_KEYED = frozenset(("HGETALL", "HGET", "HMGET", "HSET", "HDEL", "DEL", "ZADD", "ZREM", "ZRANGE", "ZREMRANGEBYSCORE",
                    "SADD", "EXPIRE", "LLEN", "ZCARD", "LPUSH", "RPUSH"))


#: cluster replies that say the command did not run where it was sent (redis-py's cluster pipeline sends it again)
_REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)


def _first_key(command: tuple[Any, ...]) -> Any:
    """The first key of a command the batcher sends (None: keyless, or not known here)."""
    name = command[0]
    if name == "EVALSHA":
        return command[3] if command[2] else None
    return command[1] if name in _KEYED and len(command) > 1 else None


_batchers: weakref.WeakKeyDictionary[RedisClient, Batcher] = weakref.WeakKeyDictionary()


def batcher_for(client: RedisClient) -> Batcher:
    """The auto-pipeline of ``client`` (created on first use): every component on one client shares it, so the
    calls of all of them made in one event-loop iteration go out as one pipeline."""
    batcher = _batchers.get(client)
    if batcher is None:
        batcher = _batchers[client] = Batcher(client)
    return batcher


def option_float(options: Any, name: str, default: float) -> float:
    value = options.get(name)
    return default if value is None or value == "" else float(value)


def option_str(options: Any, name: str, default: str) -> str:
    value = options.get(name)
    return default if value is None or value == "" else str(value)

