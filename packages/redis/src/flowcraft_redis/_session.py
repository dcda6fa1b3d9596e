"""One Redis client + key prefix shared by the components of a backend, and the auto-pipeline.

``RedisSession`` is what ``RedisContext``, ``RedisStatusStore``, ``RedisCoordinationStore`` (and a queue such as
``flowcraft_rq.RqQueue``) share when they run on the same client and key prefix. It carries:

* the key layout (``Keys``);
* the ``Batcher``: calls issued by concurrent jobs in one event-loop iteration go out as one pipeline, so the
  per-command cost of redis-py is paid once per batch rather than once per call;
* hand-over slots between components that live on the same Redis: records and leases read by a queue's
  dequeue script in the same round trip (served once to ``StatusStore.get`` / ``CoordinationStore.begin``),
  jobs a commit already pushed to the queue (skipped by ``Queue.enqueue``) and leases a commit already dropped
  (skipped by ``CoordinationStore.release``). Every slot is an optimisation only: a miss falls back to the
  ordinary call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from flowcraft.spi import Begin, Job

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "flowcraft:"
DEFAULT_TTL = 7 * 24 * 3600

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Compact JSON (what every value in Redis is)."""
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


def fast_packing(client: Redis) -> bool:
    """Whether ``client`` packs commands with ``_FastPack`` (and so understands ``Packed`` arguments)."""
    connection_class = client.connection_pool.connection_class
    return isinstance(connection_class, type) and issubclass(connection_class, _FastPack)


class _FastPack:
    """redis-py's ``pack_command`` re-joins its buffer once per argument (quadratic in the argument count,
    ~80 us for a commit script's ~60 arguments); this packs str/bytes/int/float arguments in one join and
    leaves anything else to redis-py."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if (isinstance(first, str) and " " in first) or (isinstance(first, bytes | memoryview) and b" " in first):
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]  # 'SCRIPT LOAD' etc.
        parts = [b""]
        append = parts.append
        count = 0
        for arg in args:
            if isinstance(arg, Packed):
                append(arg)
                count += arg.nargs
                continue
            count += 1
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, bytes):
                pass
            elif isinstance(arg, int) and not isinstance(arg, bool):
                arg = b"%d" % arg
            elif isinstance(arg, float):
                arg = repr(arg).encode()
            else:
                return super().pack_command(*args)  # type: ignore[misc, no-any-return]  # DataError etc.
            append(b"$%d\r\n" % len(arg))
            append(arg)
            append(b"\r\n")
        parts[0] = b"*%d\r\n" % count
        return [b"".join(parts)]

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join(chunk for command in commands for chunk in self.pack_command(*command))]


class _FastConnection(_FastPack, Connection):
    pass


class _FastSSLConnection(_FastPack, SSLConnection):
    pass


class _FastUnixConnection(_FastPack, UnixDomainSocketConnection):
    pass


def make_client(url: str) -> Redis:
    """A redis.asyncio client for ``url`` that rides out a restart (reconnects with backoff for ~30 s)."""
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=40)
    scheme = url.split("://", 1)[0].lower()
    connection_class = {"redis": _FastConnection, "rediss": _FastSSLConnection, "unix": _FastUnixConnection}.get(
        scheme, Connection)
    return Redis.from_url(
        url,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=0,
        connection_class=connection_class,
    )


def shared_client(options: Any, shared: dict[str, Any]) -> Redis:
    """One client per URL among the components built from one config (``shared`` from ``from_config``)."""
    url = str(options.get("redis_url") or DEFAULT_URL)
    key = ("redis", url)
    client = shared.get(key)  # type: ignore[call-overload]
    if client is None:
        client = shared[key] = make_client(url)  # type: ignore[index]
    return client  # type: ignore[no-any-return]


class Keys:
    """The key layout (documented in the README). Run ids go into keys as-is, always last, or after their
    byte length, so two different ids never produce the same key; nothing is ever parsed out of a key."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.idx_created = f"{prefix}idx:created"

    def ctx(self, run_id: str) -> str:
        return f"{self.prefix}ctx:{run_id}"

    def status(self, run_id: str) -> str:
        return f"{self.prefix}status:{run_id}"

    def idx_status(self, status: str) -> str:
        return f"{self.prefix}idx:status:{status}"

    def jobs(self, run_id: str) -> str:
        return f"{self.prefix}jobs:{run_id}"

    def done(self, run_id: str) -> str:
        return f"{self.prefix}done:{run_id}"

    def lease(self, run_id: str) -> str:
        return f"{self.prefix}lease:{run_id}"

    def meta(self, run_id: str) -> str:
        return f"{self.prefix}meta:{run_id}"

    def arrs(self, run_id: str) -> str:
        return f"{self.prefix}arrs:{run_id}"


class Batcher:
    """Auto-pipelining: commands queued during one event-loop iteration are sent as one pipeline.

    At most one pipeline is in flight; calls made meanwhile form the next one. Scripts are sent as EVALSHA
    and loaded on NOSCRIPT (e.g. after a server restart)."""

    def __init__(self, client: Redis, max_in_flight: int = 2) -> None:
        self.client = client
        self.max_in_flight = max_in_flight
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, str] = {}
        #: round trips (pipelines sent) and commands, for measurements
        self.round_trips = 0
        self.commands = 0

    def script(self, source: str) -> str:
        """Register a script; returns its SHA1 to pass to ``call_script``."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._scripts[sha] = source
        return sha

    async def call_script(self, sha: str, *args: Any) -> Any:
        return await self.call("EVALSHA", sha, 0, *args)

    async def call(self, *command: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._queue, self._in_flight, self._tasks = loop, [], 0, set()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if self._in_flight < self.max_in_flight:
            # a sender starts on the next loop iteration, so the calls of every job that runs in this one
            # share its pipeline; up to ``max_in_flight`` pipelines overlap (Redis works while we pack)
            self._in_flight += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

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
                    await self.client.script_load(source)
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
        if len(commands) == 1:
            try:
                return [await self.client.execute_command(*commands[0])]  # type: ignore[no-untyped-call]
            except NoScriptError as exc:
                return [exc]
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))


@dataclass(slots=True)
class _Prefetched:
    record: dict[bytes, bytes]
    uses: int
    expires: float


@dataclass(slots=True)
class RedisSession:
    """What the components on one client + key prefix share (see the module docstring)."""

    client: Redis
    prefix: str
    batcher: Batcher
    keys: Keys
    #: the client packs ``Packed`` arguments (made by ``make_client``)
    fast: bool = False
    context_attached: bool = False
    status_attached: bool = False
    coordination_attached: bool = False
    #: set by a queue on the same Redis that lets ``commit`` push fired jobs in the same script
    dispatcher: Dispatcher | None = None
    #: learned from ``CoordinationStore.begin``: the engine's owner id and lease length
    owner: str | None = None
    lease_seconds: float = 30.0
    _status: dict[str, _Prefetched] = field(default_factory=dict)
    _begins: dict[int, tuple[Job, str, Begin, float]] = field(default_factory=dict)
    _dispatched: dict[int, Job] = field(default_factory=dict)
    _released: set[tuple[str, str, str]] = field(default_factory=set)

    # -- status records read by a dequeue --------------------------------------------------------
    def offer_status(self, run_id: str, record: dict[bytes, bytes], ttl: float = 0.5) -> None:
        entry = self._status.get(run_id)
        now = time.monotonic()
        if entry is not None and entry.expires > now:
            entry.record, entry.uses = record, entry.uses + 1
        else:
            self._status[run_id] = _Prefetched(record, 1, now + ttl)
        if len(self._status) > 10_000:
            self._prune_status(now)

    def take_status(self, run_id: str) -> dict[bytes, bytes] | None:
        entry = self._status.get(run_id)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._status[run_id]
            return None
        entry.uses -= 1
        if entry.uses <= 0:
            del self._status[run_id]
        return entry.record

    def forget_status(self, run_id: str) -> None:
        self._status.pop(run_id, None)

    def _prune_status(self, now: float) -> None:
        for run_id in [r for r, e in self._status.items() if e.expires <= now]:
            del self._status[run_id]

    # -- leases taken by a dequeue ---------------------------------------------------------------
    def offer_begin(self, job: Job, owner: str, begin: Begin, expires: float) -> None:
        self._begins[id(job)] = (job, owner, begin, expires)

    def take_begin(self, job: Job, owner: str) -> tuple[Begin | None, str | None]:
        """The prefetched ``Begin`` for ``job`` if it is this owner's and fresh; else ``(None, holder)`` where
        ``holder`` is the owner of a prefetched lease the caller must drop before taking its own."""
        entry = self._begins.get(id(job))
        if entry is None or entry[0] is not job:
            return None, None
        del self._begins[id(job)]
        holder = entry[1] if entry[2].lease else None
        if entry[1] != owner:
            return None, holder
        if entry[3] <= time.time() + 1.0:
            return None, None  # about to run out: the same owner takes it afresh
        return entry[2], None

    def unclaimed_lease(self, job: Job) -> str | None:
        """The owner of a lease a dequeue took for ``job`` that ``begin`` never claimed (it must be dropped)."""
        entry = self._begins.pop(id(job), None)
        if entry is None or entry[0] is not job or not entry[2].lease:
            return None
        return entry[1]

    # -- jobs a commit already enqueued ----------------------------------------------------------
    def mark_dispatched(self, jobs: Sequence[Job]) -> None:
        if len(self._dispatched) > 50_000:
            self._dispatched.clear()  # the engine enqueues what it is given at once; never reached normally
        for job in jobs:
            self._dispatched[id(job)] = job

    def was_dispatched(self, job: Job) -> bool:
        stored = self._dispatched.get(id(job))
        if stored is job:
            del self._dispatched[id(job)]
            return True
        return False

    # -- leases a commit already dropped ---------------------------------------------------------
    def mark_released(self, run_id: str, job_key: str, owner: str) -> None:
        if len(self._released) > 50_000:
            self._released.clear()
        self._released.add((run_id, job_key, owner))

    def was_released(self, run_id: str, job_key: str, owner: str) -> bool:
        try:
            self._released.remove((run_id, job_key, owner))
        except KeyError:
            return False
        return True


class Dispatcher:
    """What a queue on the same Redis gives ``commit`` so the script pushes fired jobs itself.

    ``args(count, now)`` returns the ARGV tail the commit script's dispatch section reads (see
    ``flowcraft_redis.scripts.COMMIT``): the queue and registry keys, the job-hash key prefix, the origin,
    the job TTL, the wrapper around a job document, the constant job-hash fields, the time (ISO text)
    and ``count`` fresh job ids."""

    def args(self, count: int, now: float) -> list[Any]:  # pragma: no cover - interface
        raise NotImplementedError


_sessions: weakref.WeakKeyDictionary[Redis, dict[str, RedisSession]] = weakref.WeakKeyDictionary()


def session_for(client: Redis, prefix: str) -> RedisSession:
    """The session of ``client`` + ``prefix`` (created on first use)."""
    by_prefix = _sessions.get(client)
    if by_prefix is None:
        by_prefix = _sessions[client] = {}
    session = by_prefix.get(prefix)
    if session is None:
        session = by_prefix[prefix] = RedisSession(client, prefix, Batcher(client), Keys(prefix),
                                                   fast=fast_packing(client))
    return session


def option_float(options: Any, name: str, default: float) -> float:
    value = options.get(name)
    return default if value is None or value == "" else float(value)


def option_str(options: Any, name: str, default: str) -> str:
    value = options.get(name)
    return default if value is None or value == "" else str(value)


Callback = Callable[[], None]
