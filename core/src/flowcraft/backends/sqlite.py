"""Embedded durable backend: the worker processes of one machine share one SQLite database file.

Options (``SqliteOptions``, ``SqliteQueueOptions``; one flat dict, shared by the four components):

* ``path``: the database file (default ``.flowcraft/flowcraft.db``, relative to the working directory and made
  absolute when the options are read; its directory is created);
* ``visibility_timeout``: seconds a dequeued job stays invisible before it is delivered again (default 30);
* ``busy_timeout``: seconds to wait for the write lock of another program on the file before failing (default 10;
  flowcraft processes wait for each other's turn, a transaction long, in the kernel);
* ``read_only``: open an existing database for reading only (``mode=ro``), never creating one; the read-only
  commands (``flowcraft status``, ``flowcraft runs``) set it, so a missing file is an error, not a new database.

The database runs in WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash of any
process; an OS crash or power loss may roll back the last few transactions, never corrupt the file. Each
process checkpoints the WAL itself (not in the ``COMMIT`` of whichever transaction crossed SQLite's 1,000-frame
mark), on a thread and connection of its own that its database thread asks at most every 50 ms, after handing
results back, and restarts it past 16 MiB.
If the file is deleted or replaced while a process uses it, every later call of that process raises a
``ConfigError`` (checked by device and inode before each transaction batch), so a worker stops instead of
writing runs to a file no new process sees.

Every process opens one connection per database, used by one dedicated thread, so the calls of a process
are serialized and the event loop never blocks on SQLite. Every SPI method is one call into that thread and
one transaction; every read-modify-write is a ``BEGIN IMMEDIATE`` transaction (it takes the database's
write lock up front), so concurrent processes are safe. Before it, the transaction takes the writer turn: an
exclusive ``flock`` on ``<path>-writer`` (a file next to the database), given back after its ``COMMIT``, so the
writers of this machine's processes wait for each other in the kernel, which wakes the next one as soon as the
turn is given back (a turn lasts one transaction; waiting for it has no time limit). SQLite's busy handler then
waits up to ``busy_timeout`` for writers that take no turn (another program on the file, a checkpoint's restart);
a call that still reports busy is rolled back and run again until then.

Group commit: the thread runs every call queued since it last woke (up to 64) in one transaction and hands
the results back, after the commit, with one wake-up of the event loop. Under load this saves most of the
locking, WAL writes and thread switches; if one call of a group fails, the group is rolled back and each
call runs in a transaction of its own, so a failure never affects another call. The calls that only read
(``SqliteDatabase.read``: a status poll, a run's record, its context) run beside that transaction, never in
it, so they neither take nor wait for the write lock.

A queue polls for jobs other processes enqueue (every 5 ms, backing off to 100 ms); while one waits, its idle
database thread also reads ``PRAGMA data_version`` every 1 ms (backing off to 8 ms while nothing changes) and
wakes it as soon as another process committed, so a worker sees new work within a few ms.

Coordination ``commit`` runs ``flowcraft.spi.apply_transition`` over the tables of one open
transaction and writes the completion's context updates in that same transaction (``applies_context``).
Built by the ``sqlite`` preset (the four components on one database), the backend also takes the other fast
paths (``Backend.capabilities``): the queue's claiming transaction reads each job's run record and takes its
job lease (``prefetches_status``), and a commit puts the jobs it fires on the queue (``dispatches``), drops
the finishing owner's lease (``releases_lease``, also when built alone), deletes the committed delivery's queue
row when jobs remain pending (``acks``) and inserts up to ``Transition.continue_up_to`` of the due-now jobs it
fires as rows already claimed by the committing worker, with their run record read and lease taken
(``continues``); the commit of a run's last job, given the run's end, moves its record to ``completed`` with its
``_result`` and deletes its delivery's row in the same transaction (``ends``). A node of a chain then costs a worker
one call into the database thread (the commit, part of a group commit) instead of three (claim, commit, ack); a
run's first job is claimed, and its end is its last job's commit (where it was that commit, a transition and an
ack).
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import itertools
import json
import os
import queue
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, cast

from flowcraft.errors import ConfigError
from flowcraft.options import QueueOptions, option, parse_options
from flowcraft.spi import (
    ACTIVE_STATUSES,
    Backend,
    Committed,
    Completion,
    Component,
    ContextStore,
    DeadLetter,
    Delivery,
    Job,
    JobState,
    LeaseTables,
    PendingJob,
    Queue,
    RunEnd,
    RunRecord,
    StatusStore,
    TablesCoordinationStore,
    Transition,
    apply_transition,
    ends_the_run,
    split_hand_over,
    take_lease,
)

try:
    import fcntl

    _HAS_FLOCK = True
except ImportError:  # Windows: no writer turns, SQLite's busy handler alone
    _HAS_FLOCK = False

T = TypeVar("T")

DEFAULT_PATH = ".flowcraft/flowcraft.db"
#: the schema's version (2: ``fc_join_counts``, added to a version-1 database when a process opens it to write)
SCHEMA_VERSION = 2
#: the oldest schema a read-only connection reads (what it reads did not change since)
_READ_SCHEMA_VERSION = 1
#: Dequeue polling for work another process enqueues: first pause, and the cap it doubles up to.
POLL_MIN = 0.005
POLL_MAX = 0.1
#: Busy reported past the busy handler: first pause before running the call again, and its cap.
_BUSY_MIN = 0.0001
_BUSY_MAX = 0.002
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_CHUNK = 500  # bound parameters per statement (old SQLite builds allow 999)
_BATCH = 64  # calls committed together at most
_RECORDS = 256  # parsed run records a queue keeps (SqliteQueue._parsed)
#: WAL checkpoints (``_Checkpointer``): at most this often per process, in seconds; past this many WAL frames
#: (4 KiB pages) also a RESTART checkpoint, waiting at most this long (ms) for readers and writers
_CHECKPOINT_EVERY = 0.05
#: while a queue of this process waits for work, how often its idle database thread looks for other processes'
#: commits: at first, and the cap it doubles up to while it sees none
_WATCH_MIN = 0.001
_WATCH_MAX = 0.008
_RESTART_FRAMES = 4096
_RESTART_WAIT_MS = 100

# fc_context and fc_completions are rowid tables with a (run_id, key) index, not WITHOUT ROWID tables keyed by it:
# their rows (a completion record is ~0.5 KB) are then appended at the table's end and only the small index entries
# land at random (run ids are random), instead of whole rows splitting random leaves: a chain node's commit writes
# ~6 WAL pages instead of ~8. Databases created before keep their WITHOUT ROWID tables; every statement works on both.
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS fc_queue (
    id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    available_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    leased_until REAL
);
CREATE INDEX IF NOT EXISTS fc_queue_available ON fc_queue (available_at);
CREATE TABLE IF NOT EXISTS fc_dead_letters (
    id INTEGER PRIMARY KEY,
    message_id INTEGER,
    job TEXT NOT NULL,
    reason TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fc_context (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    UNIQUE (run_id, key)
);
CREATE TABLE IF NOT EXISTS fc_status (
    run_id TEXT PRIMARY KEY,
    blueprint_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fc_status_created ON fc_status (created_at, run_id);
CREATE INDEX IF NOT EXISTS fc_status_by_status ON fc_status (status, created_at, run_id);
CREATE INDEX IF NOT EXISTS fc_status_by_blueprint ON fc_status (blueprint_id, created_at, run_id);
CREATE INDEX IF NOT EXISTS fc_status_updated ON fc_status (status, updated_at);
CREATE TABLE IF NOT EXISTS fc_jobs (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    job TEXT,
    UNIQUE (run_id, key)
);
CREATE TABLE IF NOT EXISTS fc_completions (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (run_id, key)
);
CREATE TABLE IF NOT EXISTS fc_arrivals (
    run_id TEXT NOT NULL,
    target TEXT NOT NULL,
    member TEXT NOT NULL,
    arrived INTEGER NOT NULL,
    contribution TEXT NOT NULL,
    UNIQUE (run_id, target, member)
);
CREATE TABLE IF NOT EXISTS fc_join_counts (
    run_id TEXT NOT NULL,
    target TEXT NOT NULL,
    recorded INTEGER NOT NULL,
    arrived INTEGER NOT NULL,
    PRIMARY KEY (run_id, target)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fc_leases (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fc_runs (
    run_id TEXT PRIMARY KEY,
    pending INTEGER NOT NULL DEFAULT 0,
    parked INTEGER NOT NULL DEFAULT 0,
    activity REAL NOT NULL DEFAULT 0
);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""


#: what json.dumps(value, ensure_ascii=False, separators=(",", ":")) builds on every call, built once (encode keeps
#: no state between calls, so every thread shares it)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


class _Encoded:
    """The JSON documents of one commit's objects, each encoded once: a fired job's document goes to ``fc_jobs`` and
    to ``fc_queue``, a completion's to ``fc_completions``, its context values to ``fc_context`` and a join arrival's
    contribution to ``fc_arrivals``. A commit encodes what it can before its transaction (``of``), so the write lock
    is not held while encoding. Keyed by object identity; each entry holds its object, so an id is never reused
    while the entry lives."""

    __slots__ = ("_completions", "_contexts", "_contributions", "_jobs")

    def __init__(self) -> None:
        self._contributions: dict[int, tuple[Any, str]] = {}
        self._jobs: dict[int, tuple[Job, str]] = {}
        self._completions: dict[int, tuple[Completion, str]] = {}
        self._contexts: dict[int, tuple[Completion, list[tuple[str, str]]]] = {}

    @classmethod
    def of(cls, transition: Transition, applies_context: bool) -> _Encoded:
        """A transition's completion (and its context values, with ``applies_context``), the jobs its plain
        arrivals fire and its join arrivals' contributions, encoded (in the caller's thread, outside any
        transaction)."""
        encoded = cls()
        if transition.completion is not None:
            encoded.completion(transition.completion)
            if applies_context:
                encoded.context(transition.completion)
        for arrival in transition.arrivals:
            if len(arrival.expected) > 1:  # a join's arrival records its contribution; its job gets its input
                encoded.contribution(arrival.contribution)  # when it fires
            elif arrival.arrived:
                encoded.job(arrival.job)
        return encoded

    def contribution(self, value: Any) -> str:
        entry = self._contributions.get(id(value))
        if entry is None:
            entry = self._contributions[id(value)] = (value, _dumps(value))
        return entry[1]

    def job(self, job: Job) -> str:
        entry = self._jobs.get(id(job))
        if entry is None:
            entry = self._jobs[id(job)] = (job, _dumps(job.to_dict()))
        return entry[1]

    def completion(self, completion: Completion) -> str:
        entry = self._completions.get(id(completion))
        if entry is None:
            entry = self._completions[id(completion)] = (completion, _dumps(completion.to_dict()))
        return entry[1]

    def context(self, completion: Completion) -> list[tuple[str, str]]:
        """``(key, document)`` of each of the completion's context updates."""
        entry = self._contexts.get(id(completion))
        if entry is None:
            rows = [(key, _dumps(value)) for key, value in completion.context_updates.items()]
            entry = self._contexts[id(completion)] = (completion, rows)
        return entry[1]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class _Connection(sqlite3.Connection):
    """A database thread's connection. ``turn``: the descriptor of the database's writer-turn file (``<path>-writer``)
    when it has one (a file database opened for writing, on a system with ``flock``), else None."""

    turn: int | None = None

    def close(self) -> None:
        super().close()
        turn, self.turn = self.turn, None
        if turn is not None:
            os.close(turn)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that holds the database's write lock from its start; inside a transaction
    already open (a batch of calls), it is part of that one.

    On a connection with a writer-turn file, the transaction first takes an exclusive ``flock`` on it and holds it
    until after its ``COMMIT`` or ``ROLLBACK``: the writers of this machine's processes then wait for each other in
    the kernel, which wakes the next one as the lock is given back, instead of in SQLite's busy handler, which
    sleeps 1, 2, 5, 10 ... ms whatever the other holds it for (the write lock stood idle while its waiter slept).
    SQLite's busy handler still covers writers that take no turn (another program on the file)."""
    if conn.in_transaction:
        yield conn
        return
    turn = conn.turn if isinstance(conn, _Connection) else None
    if turn is not None:
        fcntl.flock(turn, fcntl.LOCK_EX)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        if turn is not None:
            fcntl.flock(turn, fcntl.LOCK_UN)


@dataclass(frozen=True)
class SqliteOptions:
    """The options of the sqlite context, status and coordination stores (the queue adds its own)."""

    path: Path = option(  # noqa: RUF009  # option() is a dataclasses.field; __post_init__ makes it a Path
        DEFAULT_PATH, "the database file, shared by every worker process of this machine; its directory is created")
    busy_timeout: float = option(10.0, "seconds to wait for the write lock of another program on the file "
                                       "before failing (flowcraft processes take turns, each one transaction long)")
    read_only: bool = option(False, "open an existing database for reading only, never creating one "
                                    "(what flowcraft status and runs do)")

    def __post_init__(self) -> None:
        # one database per file, whatever the working directory of the process reading these options
        path = Path(self.path) if _in_memory(os.fspath(self.path)) else Path(os.path.abspath(self.path))
        object.__setattr__(self, "path", path)
        if self.busy_timeout < 0:
            raise ConfigError(f"option busy_timeout: must be zero or more seconds, got {self.busy_timeout!r}",
                              hint="e.g. 10")


@dataclass(frozen=True)
class SqliteQueueOptions(SqliteOptions, QueueOptions):
    """The options of the sqlite queue: the database's and ``visibility_timeout``."""

    def __post_init__(self) -> None:
        SqliteOptions.__post_init__(self)
        QueueOptions.__post_init__(self)


class _Changes:
    """Other processes' commits, for the queues of this process that wait for work: while ``waiting`` is above zero,
    the database thread, when it has no call to run, reads ``PRAGMA data_version`` (a read of the shared WAL index,
    no I/O) every ``_WATCH_MIN`` seconds, doubling up to ``_WATCH_MAX`` while nothing changes, and calls every
    listener once another connection committed since it last looked (its own commits do not count). A worker then
    sees a job another process enqueued within a few ms instead of at its next poll, which backs off to
    ``POLL_MAX``; the polls stay, as the fallback."""

    def __init__(self) -> None:
        self.waiting = 0
        self.listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def wait(self, delta: int) -> None:
        with self._lock:
            self.waiting += delta


class SqliteDatabase:
    """One database file as this process uses it: one connection, owned by one dedicated thread.

    ``call(fn)`` runs ``fn(connection)`` in that thread, so this process's calls are serialized. ``fn``
    makes its writes inside ``immediate(connection)`` (``write(fn)`` does that for it) and may be run again
    from its start, so it must not change anything but the database. The calls queued while the thread was
    busy run in one transaction (group commit); each call is atomic either way. ``read(fn)`` is a call that
    only reads: it never joins that transaction, so it neither takes nor waits for the write lock. Closing is
    idempotent; a call after ``close`` opens the database again.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH, *, busy_timeout: float = 10.0,
                 read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self._thread: _DatabaseThread | None = None
        self._guard = threading.Lock()
        self.changes = _Changes()

    @classmethod
    def shared(cls, options: SqliteOptions, shared: dict[str, Any]) -> SqliteDatabase:
        """The database of a backend's options, one per path among the components built together."""
        path = os.fspath(options.path)
        key = _shared_key(path)
        database = shared.get(key)
        if not isinstance(database, SqliteDatabase):
            database = shared[key] = cls(path, busy_timeout=options.busy_timeout, read_only=options.read_only)
        return database

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._queue(fn, True)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``call`` for a function that only reads: it runs outside any write transaction of the thread."""
        return await self._queue(fn, False)

    def _queue(self, fn: Callable[[sqlite3.Connection], T], writes: bool) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        while not self._current_thread().submit((fn, future, writes)):
            pass  # that thread was closed meanwhile: the next call of _current_thread starts another
        return future

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def transaction(conn: sqlite3.Connection) -> T:
            with immediate(conn):
                return fn(conn)

        return await self.call(transaction)

    async def setup(self) -> None:
        """Open the database and create the schema (also done on first use)."""
        await self.call(lambda conn: None)

    async def close(self) -> None:
        """Close the connection once the calls submitted before have run."""
        with self._guard:
            thread, self._thread = self._thread, None
        if thread is not None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            thread.close(future)
            await future

    def _current_thread(self) -> _DatabaseThread:
        with self._guard:
            thread = self._thread
            if thread is None or thread.closed:
                thread = self._thread = _DatabaseThread(self.path, self.busy_timeout, self.read_only, self.changes)
                weakref.finalize(self, thread.close, None)  # a database dropped without close()
            return thread


def _retry(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], busy_timeout: float) -> T:
    """Run ``fn`` again (after rolling back) while another process holds the write lock."""
    deadline: float | None = None
    pause = _BUSY_MIN
    while True:
        try:
            return fn(conn)
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not _is_busy(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + busy_timeout
            elif now >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, _BUSY_MAX)


def _in_memory(path: str) -> bool:
    return path == ":memory:" or path.startswith("file::memory:")


def _connect(path: str, busy_timeout: float, read_only: bool = False, *, turns: bool = True) -> sqlite3.Connection:
    """A connection for a database thread (``turns``: its write transactions take the writer turn, ``immediate``)."""
    memory = _in_memory(path)
    if read_only and not memory:
        return _connect_read_only(path)
    if not memory:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=0.0, isolation_level=None, check_same_thread=False,
                           cached_statements=256, factory=_Connection)
    try:
        if turns and not memory and not path.startswith("file:") and _HAS_FLOCK:
            try:
                conn.turn = os.open(f"{path}-writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:  # e.g. a directory this process cannot create files in: SQLite's busy handler alone
                pass
        # SQLite's busy handler waits for another process's write lock; _retry covers the few cases where
        # SQLite reports busy without calling it (e.g. while another process recovers the WAL index).
        conn.execute(f"PRAGMA busy_timeout = {max(0, int(busy_timeout * 1000))}")
        if not memory:
            _retry(conn, lambda c: c.execute("PRAGMA journal_mode = WAL").fetchone(), busy_timeout)
        conn.execute("PRAGMA synchronous = NORMAL")
        if not memory:
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # _Checkpointer does it, off the commit
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            _retry(conn, lambda c: c.executescript(_SCHEMA), busy_timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_read_only(path: str) -> sqlite3.Connection:
    """An existing database opened with ``mode=ro``: a missing file is an error, never a new database."""
    absolute = os.path.abspath(path)
    setup = "run a worker or `flowcraft setup` first (or give the database's path with -o path=...)"
    if not os.path.isfile(absolute):
        raise ConfigError(f"no flowcraft database at {absolute}", hint=setup)
    conn = sqlite3.connect(f"{Path(absolute).as_uri()}?mode=ro", uri=True, timeout=0.0, isolation_level=None,
                           check_same_thread=False, cached_statements=256)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except BaseException:
        conn.close()
        raise
    if version < _READ_SCHEMA_VERSION:  # not written by flowcraft yet: nothing to read
        conn.close()
        raise ConfigError(f"{absolute} is not a flowcraft database (schema version {version}, expected "
                          f"{_READ_SCHEMA_VERSION})", hint=setup)
    return conn


#: a call for the database thread: its function (None: close the thread), its future, whether it may write
_Call = tuple[Callable[[sqlite3.Connection], Any] | None, "asyncio.Future[Any] | None", bool]
_Run = list[tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]]


class _DatabaseThread:
    """The thread that owns a connection. It runs every call queued since it last woke, then hands the
    results back with one wake-up per event loop, which makes a call much cheaper under load."""

    def __init__(self, path: str, busy_timeout: float, read_only: bool = False, changes: _Changes | None = None
                 ) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._read_only = read_only
        self._file: tuple[int, int] | None = None  # (device, inode) of the database file when opened
        self._file_path = path if path == ":memory:" or path.startswith("file:") else os.path.abspath(path)
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._checkpoints = not read_only and not _in_memory(path)  # _connect turned the automatic ones off
        self._last_checkpoint = 0.0  # time.monotonic() of this thread's last checkpoint request
        self._checkpointer: _Checkpointer | None = None  # started by the first request
        # looked for while a queue waits (another process cannot write an in-memory or read-only database)
        self._changes = changes if changes is not None and self._checkpoints else None
        self.closed = False
        threading.Thread(target=self._main, name="flowcraft-sqlite", daemon=True).start()

    def submit(self, call: _Call) -> bool:
        """Queue ``call``; False if the thread is closing."""
        with self._lock:
            if self.closed:
                return False
            self._calls.put(call)
            return True

    def close(self, future: asyncio.Future[None] | None) -> None:
        """End the thread after the calls already queued; ``future`` is settled once the connection is closed."""
        with self._lock:
            if self.closed:
                if future is not None and not future.done():
                    future.set_result(None)
                return
            self.closed = True
            self._calls.put((None, future, True))

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        running = True
        version: int | None = None  # PRAGMA data_version when the thread last looked, while a queue waits
        watch = _WATCH_MIN
        while running:
            changes = self._changes
            if conn is None or changes is None or not changes.waiting:
                batch = [self._calls.get()]
            else:
                try:
                    batch = [self._calls.get(timeout=watch)]
                except queue.Empty:
                    seen, version = version, self._look(conn, changes, version)
                    watch = _WATCH_MIN if seen != version else min(watch * 2, _WATCH_MAX)
                    continue
                # read before the calls run: a claim among them sees what was committed before, and any commit
                # made after this read changes the version the next look compares
                version = self._look(conn, None, None)
            while len(batch) < _BATCH:
                try:
                    batch.append(self._calls.get_nowait())
                except queue.Empty:
                    break
            calls: _Run = []  # those that may write: one transaction
            reads: _Run = []  # the others: outside it
            outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
            for fn, future, writes in batch:
                if fn is None:  # close: always the last call this thread receives
                    running = False
                    if future is not None:
                        outcomes.append((future, True, None))
                elif future is not None and not future.cancelled():  # else its caller gave up before it ran
                    (calls if writes else reads).append((fn, future))
            if calls or reads:
                try:
                    if conn is None:
                        conn = _connect(self._path, self._busy_timeout, self._read_only)
                        self._file = _file_identity(self._file_path)
                    else:
                        self._check_same_file()
                except Exception as exc:
                    outcomes[:0] = [(future, False, exc) for _, future in reads + calls]
                else:
                    outcomes[:0] = self._each(conn, reads) + self._run(conn, calls)
            if not running:
                if self._checkpointer is not None:
                    self._checkpointer.close()  # waits for a checkpoint in progress
                if conn is not None:
                    conn.close()
            settled: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            for outcome in outcomes:
                settled.setdefault(outcome[0].get_loop(), []).append(outcome)
            for loop, results in settled.items():
                if not loop.is_closed():
                    try:
                        loop.call_soon_threadsafe(_settle, results)
                    except RuntimeError:  # the loop closed meanwhile; nobody waits for these results
                        pass
            if running and conn is not None and (calls or reads) and self._checkpoints:
                self._checkpoint()

    @staticmethod
    def _look(conn: sqlite3.Connection, changes: _Changes | None, last: int | None) -> int | None:
        """The database's ``data_version``; with ``changes``, tell its listeners when it differs from ``last``."""
        try:
            version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return last
        if changes is not None and last is not None and version != last:
            for listener in list(changes.listeners):
                listener()
        return version

    def _checkpoint(self) -> None:
        """Ask this process's checkpointer to copy the WAL into the database file, after a batch's results were
        handed back, at most every ``_CHECKPOINT_EVERY`` seconds. It runs on a thread and connection of its own,
        so this thread goes on with the calls queued meanwhile instead of waiting for the checkpoint's page
        copies and fsyncs (about 4 ms each under load, blocking this process's calls 5-16 % of the time)."""
        now = time.monotonic()
        if now - self._last_checkpoint < _CHECKPOINT_EVERY:
            return
        self._last_checkpoint = now
        if self._checkpointer is None:
            self._checkpointer = _Checkpointer(self._path, self._busy_timeout)
        self._checkpointer.request()

    def _check_same_file(self) -> None:
        """Refuse to go on when the database file was deleted or replaced under this process: its
        connection would keep writing to the old file, which no newly started process sees."""
        if self._file is None:
            return
        current = _file_identity(self._file_path)
        if current != self._file:
            what = "deleted" if current is None else "replaced by another file"
            raise ConfigError(f"the SQLite database {self._path} was {what} while this process used it",
                              hint="stop every worker and client using it, then start them again on the "
                                   "current file")

    def _each(self, conn: sqlite3.Connection, calls: _Run) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        """Run each call on its own (a call that writes in a transaction of its own, a read outside any)."""
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        for fn, future in calls:
            try:
                outcomes.append((future, True, _retry(conn, fn, self._busy_timeout)))
            except Exception as exc:
                outcomes.append((future, False, exc))
        return outcomes

    def _run(self, conn: sqlite3.Connection, calls: _Run) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        """Run the calls in one transaction (group commit: one lock, one WAL write); if one of them fails,
        that transaction is rolled back and each call runs in its own, so only that one fails."""
        if len(calls) > 1:
            def together(c: sqlite3.Connection) -> list[Any]:
                with immediate(c):
                    return [fn(c) for fn, _ in calls]

            try:
                results = _retry(conn, together, self._busy_timeout)
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):  # the lock stayed taken past busy_timeout: alone, each would wait as long
                    return [(future, False, exc) for _, future in calls]
            except Exception:  # each call runs alone below and reports its own error
                pass
            else:
                return [(future, True, result) for (_, future), result in zip(calls, results, strict=True)]
        return self._each(conn, calls)


class _Checkpointer:
    """The thread that checkpoints one database file for a database thread, on a connection of its own: a PASSIVE
    checkpoint per request (several requests made while one runs make one more); once the WAL holds
    ``_RESTART_FRAMES`` frames, also a RESTART one that waits briefly (``_RESTART_WAIT_MS``) for readers, so that
    the next writer starts the WAL over.

    SQLite's automatic checkpoint (off on these connections) runs in the ``COMMIT`` of the transaction that takes
    the WAL past 1,000 frames, with two fsyncs; under steady load from several processes the WAL rarely gets back
    to its start (a reader is nearly always on it), so it ran in nearly every ``COMMIT``, holding the write lock.
    A checkpoint that cannot run now (another process's, a reader) is tried again on a later request; one that
    cannot open the database leaves it to the next request."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._main, name="flowcraft-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """End the thread once a checkpoint in progress is done, and close its connection."""
        self._closing = True
        self._wake.set()
        self._thread.join()

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                try:
                    if conn is None:
                        conn = _connect(self._path, self._busy_timeout, turns=False)
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if row is not None and row[1] >= _RESTART_FRAMES:
                        conn.execute(f"PRAGMA busy_timeout = {_RESTART_WAIT_MS}")
                        try:
                            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                        finally:
                            conn.execute(f"PRAGMA busy_timeout = {max(0, int(self._busy_timeout * 1000))}")
                except sqlite3.Error:
                    pass  # busy, or the file is gone: the next request tries again
        finally:
            if conn is not None:
                conn.close()


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a database file; None for an in-memory database or a file that is gone."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _shared_key(path: str) -> str:
    if path == ":memory:" or path.startswith("file:"):
        return f"sqlite:{path}"
    return f"sqlite:{os.path.abspath(path)}"


class _SqliteComponent(Component):
    """What the four components share: the database, built once per backend through ``shared``."""

    Options: ClassVar[type[SqliteOptions]] = SqliteOptions

    def __init__(self, database: SqliteDatabase | None = None) -> None:
        self.db = database if database is not None else SqliteDatabase()

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        return cls(SqliteDatabase.shared(parse_options(SqliteOptions, options), shared))

    async def setup(self) -> None:
        await self.db.setup()

    async def close(self) -> None:
        await self.db.close()


# ------------------------------------------------------------------------------------------------ queue
class SqliteQueue(_SqliteComponent, Queue):
    """A table of messages; a lease is ``(lease_token, leased_until)``.

    A leased message's ``available_at`` is its lease expiry, so "deliverable" is one index range
    (``available_at <= now``) for fresh, delayed, released and expired messages alike.
    """

    name = "sqlite"
    Options = SqliteQueueOptions

    def __init__(self, database: SqliteDatabase | None = None, visibility_timeout: float = 30.0, *,
                 prefetches_status: bool = False) -> None:
        super().__init__(database)
        self.visibility_timeout = visibility_timeout
        self._waiters: set[asyncio.Future[None]] = set()
        self._prefetches_status = prefetches_status
        self._token_prefix = uuid.uuid4().hex[:16]
        self._tokens = itertools.count()
        # run id -> (its record's document, that document parsed) as a prefetch last read it, used by the
        # database thread only: a delivery whose run's document is unchanged gets the same (read-only) record
        self._records: dict[str, tuple[str, RunRecord]] = {}
        self.db.changes.listeners.append(self._notify)  # another process committed while a receive waits

    @property
    def prefetches_status(self) -> bool:
        """Set by the ``sqlite`` preset, whose status and coordination stores use this queue's database:
        ``receive`` reads each delivery's run record and takes its lease in the claiming transaction."""
        return self._prefetches_status

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = parse_options(SqliteQueueOptions, options)
        return cls(SqliteDatabase.shared(parsed, shared), parsed.visibility_timeout)

    async def enqueue(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        if not jobs:
            return
        documents = [_dumps(job.to_dict()) for job in jobs]

        def insert(conn: sqlite3.Connection) -> None:
            at = time.time() + max(0.0, delay)
            conn.executemany("INSERT INTO fc_queue (job, available_at) VALUES (?, ?)", [(d, at) for d in documents])

        await self.db.write(insert)
        self._notify()

    async def dequeue(self, max_jobs: int, wait: float) -> list[Delivery]:
        return await self._receive(max_jobs, wait, None)

    async def receive(self, max_jobs: int, wait: float, owner: str, lease_seconds: float) -> list[Delivery]:
        return await self._receive(max_jobs, wait, (owner, lease_seconds) if self._prefetches_status else None)

    async def _receive(self, max_jobs: int, wait: float, prefetch: tuple[str, float] | None) -> list[Delivery]:
        if max_jobs <= 0:
            return []
        loop = asyncio.get_running_loop()
        end = time.monotonic() + wait
        pause = POLL_MIN
        changes = self.db.changes
        changes.wait(+1)  # while this waits, the database thread wakes it on another process's commit
        try:
            while True:
                wakeup: asyncio.Future[None] = loop.create_future()
                self._waiters.add(wakeup)  # before looking, so an enqueue of this process while we look wakes us
                try:
                    found, next_due = await self.db.call(lambda conn: self._claim(conn, max_jobs, prefetch))
                    if found:
                        return found
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        return []
                    sleep = min(pause, remaining)
                    if next_due is not None:
                        sleep = min(sleep, max(0.001, next_due - time.time()))
                    done, _ = await asyncio.wait({wakeup}, timeout=sleep)
                    pause = POLL_MIN if done else min(pause * 2, POLL_MAX)
                finally:
                    self._waiters.discard(wakeup)
        finally:
            changes.wait(-1)

    def _claim(self, conn: sqlite3.Connection, max_jobs: int, prefetch: tuple[str, float] | None = None
               ) -> tuple[list[Delivery], float | None]:
        """Lease up to ``max_jobs`` deliverable messages; else when the next one becomes deliverable. With
        ``prefetch`` (owner, lease seconds), also read each job's run record and take its job lease, in the
        same transaction (``Delivery.record``/``begin``).

        Looking first needs no write lock, so idle consumers do not contend with busy ones."""
        now = time.time()
        next_due = conn.execute("SELECT MIN(available_at) FROM fc_queue").fetchone()[0]
        if next_due is None or next_due > now:
            return [], next_due
        token = self._token()
        leased_until = now + self.visibility_timeout
        out: list[Delivery] = []
        with immediate(conn):
            rows = conn.execute(
                "SELECT id, job, deliveries FROM fc_queue WHERE available_at <= ? ORDER BY available_at, id LIMIT ?",
                (now, max_jobs),
            ).fetchall()
            leased: list[tuple[str, float, float, int]] = []
            for message_id, document, deliveries in rows:
                try:
                    job = Job.from_dict(json.loads(document))
                except (ValueError, KeyError, TypeError) as exc:
                    conn.execute(
                        "INSERT INTO fc_dead_letters (message_id, job, reason, deliveries, dead_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (message_id, document, f"unreadable job document: {exc}", deliveries, now),
                    )
                    conn.execute("DELETE FROM fc_queue WHERE id = ?", (message_id,))
                    continue
                leased.append((token, leased_until, leased_until, message_id))
                out.append(Delivery(job, (message_id, token), deliveries=deliveries + 1))
            conn.executemany(
                "UPDATE fc_queue SET deliveries = deliveries + 1, lease_token = ?, leased_until = ?, "
                "available_at = ? WHERE id = ?",
                leased,
            )
            if prefetch is not None and out:
                tables = SqliteTables(conn, now)
                self._prefetch(tables, out, *prefetch)
                tables.flush()
        return out, None

    def _hand_over(self, tables: SqliteTables, jobs: Sequence[Job], owner: str, lease_seconds: float
                   ) -> list[Delivery]:
        """Insert ``jobs`` as messages already claimed by ``owner``, as ``_claim`` with ``prefetch`` leaves them
        (first delivery, invisible for the visibility timeout, run record read, job lease taken), inside the
        caller's transaction over ``tables``; the caller flushes ``tables``."""
        token = self._token()
        leased_until = tables.now + self.visibility_timeout
        out: list[Delivery] = []
        for job in jobs:
            message_id = tables.sql.execute(
                "INSERT INTO fc_queue (job, available_at, deliveries, lease_token, leased_until) "
                "VALUES (?, ?, 1, ?, ?)",
                (tables.encoded.job(job), leased_until, token, leased_until),
            ).lastrowid
            out.append(Delivery(job, (message_id, token), deliveries=1))
        self._prefetch(tables, out, owner, lease_seconds)
        return out

    def _token(self) -> str:
        """A lease token no other claim uses: this queue's random prefix and a counter."""
        return f"{self._token_prefix}{next(self._tokens):x}"

    def _prefetch(self, tables: SqliteTables, deliveries: list[Delivery], owner: str, lease_seconds: float) -> None:
        """Fill each delivery's run record and take its job lease for ``owner`` (``CoordinationStore.begin``), over
        the tables of the transaction that claims or hands them over (the caller flushes them); a delivery whose
        run has no record is left for the engine to read, and a settled run's job gets its record but no lease (the
        engine acks it; a lease would hold off a retry of the run until it expired). The engine only reads
        ``Delivery.record``, so the deliveries of a run whose record document did not change since the last
        prefetch share one parsed record (as the memory preset's snapshot), instead of parsing it again for each."""
        documents: dict[str, RunRecord | None] = {}
        for delivery in deliveries:
            job = delivery.job
            if job.run_id in documents:
                record = documents[job.run_id]
            else:
                row = tables.sql.execute("SELECT record FROM fc_status WHERE run_id = ?", (job.run_id,)).fetchone()
                record = documents[job.run_id] = None if row is None else self._parsed(job.run_id, row[0])
            if record is None:
                continue
            delivery.record = record
            if record.status in ACTIVE_STATUSES:  # a settled run's job is only acked: no lease for it to hold
                delivery.begin = take_lease(tables, job, owner, lease_seconds)

    def _parsed(self, run_id: str, document: str) -> RunRecord:
        cached = self._records.pop(run_id, None)
        if cached is not None and cached[0] == document:
            record = cached[1]
        else:
            record = RunRecord.from_dict(json.loads(document))
        self._records[run_id] = (document, record)  # most recent last
        if len(self._records) > _RECORDS:
            del self._records[next(iter(self._records))]
        return record

    async def ack(self, delivery: Delivery) -> None:
        message_id, token = delivery.receipt
        await self.db.write(
            lambda conn: conn.execute("DELETE FROM fc_queue WHERE id = ? AND lease_token = ?", (message_id, token))
        )

    async def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        message_id, token = delivery.receipt

        def give_back(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE fc_queue SET available_at = ?, lease_token = NULL, leased_until = NULL "
                "WHERE id = ? AND lease_token = ?",
                (time.time() + max(0.0, delay), message_id, token),
            )

        await self.db.write(give_back)
        self._notify()

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        message_id, token = delivery.receipt

        def push(conn: sqlite3.Connection) -> None:
            until = time.time() + seconds
            conn.execute(
                "UPDATE fc_queue SET leased_until = ?, available_at = ? WHERE id = ? AND lease_token = ?",
                (until, until, message_id, token),
            )

        await self.db.write(push)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message (if this delivery still holds it) to the dead letter table."""
        message_id, token = delivery.receipt

        def move(conn: sqlite3.Connection) -> None:
            moved = conn.execute(
                "INSERT INTO fc_dead_letters (message_id, job, reason, deliveries, dead_at) "
                "SELECT id, job, ?, deliveries, ? FROM fc_queue WHERE id = ? AND lease_token = ?",
                (reason, time.time(), message_id, token),
            ).rowcount
            if moved:
                conn.execute("DELETE FROM fc_queue WHERE id = ?", (message_id,))

        await self.db.write(move)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self.db.read(lambda conn: conn.execute(
            "SELECT id, message_id, job, reason, deliveries, dead_at FROM fc_dead_letters ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall())
        out = []
        for row_id, message_id, document, reason, deliveries, dead_at in rows:
            raw: dict[str, Any] = {"id": message_id, "deliveries": deliveries, "dead_at": dead_at}
            try:
                job: Job | None = Job.from_dict(json.loads(document))
            except (ValueError, KeyError, TypeError):
                job, raw["job"] = None, document
            out.append(DeadLetter(job, reason=reason, raw=raw, id=str(row_id), dead_at=dead_at))
        return out

    async def delete_dead_letters(self, ids: Sequence[str]) -> int:
        numbers = [int(i) for i in ids if str(i).isdigit()]
        if not numbers:
            return 0

        def delete(conn: sqlite3.Connection) -> int:
            removed = 0
            for start in range(0, len(numbers), _CHUNK):
                chunk = numbers[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                removed += conn.execute(f"DELETE FROM fc_dead_letters WHERE id IN ({marks})", chunk).rowcount
            return removed

        removed: int = await self.db.write(delete)
        return removed

    async def size(self) -> int:
        """Messages not yet acknowledged (ready, delayed or in flight)."""
        count: int = (await self.db.read(lambda conn: conn.execute("SELECT COUNT(*) FROM fc_queue").fetchone()))[0]
        return count

    async def depth(self) -> int:
        """Jobs waiting to be delivered: ready, delayed or with an expired lease (not those in flight)."""
        now = time.time()
        count: int = (await self.db.read(lambda conn: conn.execute(
            "SELECT COUNT(*) FROM fc_queue WHERE lease_token IS NULL OR leased_until <= ?", (now,)).fetchone()))[0]
        return count

    def _notify(self) -> None:
        """Wake this process's waiting consumers (other processes poll)."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for waiter in list(self._waiters):
            if waiter.done():
                continue
            loop = waiter.get_loop()
            if loop is current:
                waiter.set_result(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# ---------------------------------------------------------------------------------------------- context
def _compare_and_set(conn: sqlite3.Connection | sqlite3.Cursor, run_id: str, allowed: frozenset[str] | tuple[str, ...],
                     to_status: str, changes: Mapping[str, Any], context_rows: Sequence[tuple[str, str]]) -> str | None:
    """``StatusStore.transition`` inside the caller's write transaction: if the run's status is in ``allowed``, set
    ``to_status``, ``changes`` and ``updated_at`` and write ``context_rows`` (key, document) to its context; return the
    record's new document (None: no such run, or another status)."""
    row = conn.execute("SELECT record FROM fc_status WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    record = RunRecord.from_dict(json.loads(row[0]))
    if record.status not in allowed:
        return None
    for key, value in changes.items():
        setattr(record, key, value)
    record.status = to_status  # type: ignore[assignment]  # validated by the engine
    record.updated_at = time.time()
    document = _dumps(record.to_dict())
    conn.execute(
        "UPDATE fc_status SET blueprint_id = ?, status = ?, created_at = ?, updated_at = ?, record = ? "
        "WHERE run_id = ?",
        (record.blueprint_id, record.status, record.created_at, record.updated_at, document, run_id),
    )
    if context_rows:
        _write_context(conn, run_id, context_rows, ())
    return document


def _write_context(conn: sqlite3.Connection | sqlite3.Cursor, run_id: str, updates: Sequence[tuple[str, str]],
                   deletes: Sequence[str]) -> None:
    """Upsert the ``(key, document)`` updates and delete the ``deletes`` keys of a run's context."""
    if updates:
        conn.executemany(
            "INSERT INTO fc_context (run_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
            [(run_id, key, document) for key, document in updates],
        )
    if deletes:
        conn.executemany("DELETE FROM fc_context WHERE run_id = ? AND key = ?", [(run_id, key) for key in deletes])


class SqliteContextStore(_SqliteComponent, ContextStore):
    """One row per (run, key), so concurrent writers of different keys never lose each other's updates."""

    name = "sqlite"

    async def get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}

        def read(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows: list[tuple[str, str]] = []
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows += conn.execute(
                    f"SELECT key, value FROM fc_context WHERE run_id = ? AND key IN ({marks})",
                    (run_id, *chunk),
                ).fetchall()
            return rows

        return {key: json.loads(value) for key, value in await self.db.read(read)}

    async def get_all(self, run_id: str) -> dict[str, Any]:
        rows: list[tuple[str, str]] = await self.db.read(
            lambda conn: conn.execute("SELECT key, value FROM fc_context WHERE run_id = ?", (run_id,)).fetchall()
        )
        return {key: json.loads(value) for key, value in rows}

    async def apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        if not updates and not deletes:
            return
        rows, removed = [(key, _dumps(value)) for key, value in updates.items()], list(deletes)
        await self.db.write(lambda conn: _write_context(conn, run_id, rows, removed))

    async def delete_run(self, run_id: str) -> None:
        await self.db.write(lambda conn: conn.execute("DELETE FROM fc_context WHERE run_id = ?", (run_id,)))


# ----------------------------------------------------------------------------------------------- status
class SqliteStatusStore(_SqliteComponent, StatusStore):
    """Run records; ``transition`` is a compare-and-set inside one write transaction. Built with
    ``writes_context`` (the sqlite preset: its context store uses the same database), ``transition_with_context``
    writes context values in that transaction."""

    name = "sqlite"
    #: ``wait_for_change`` returns at once on a change made through this store and within ``change_poll``
    #: seconds on a change made by another process, so clients need not poll.
    notifies = True
    change_poll: float = 0.05

    def __init__(self, database: SqliteDatabase | None = None, *, writes_context: bool = False) -> None:
        super().__init__(database)
        self._writes_context = writes_context
        self._changed: dict[str, set[asyncio.Future[None]]] = {}
        # per run: (status, updated_at) as the last get read it, or _CHANGED after a change made here
        self._seen: dict[str, Any] = {}
        # per event loop, what its waits poll for other processes' changes: run id -> [(stamp seen, its future)];
        # one task per loop polls them all (_poll)
        self._polled: dict[asyncio.AbstractEventLoop, dict[str, list[tuple[Any, asyncio.Future[None]]]]] = {}
        self._pollers: set[asyncio.Task[None]] = set()

    async def create(self, record: RunRecord) -> bool:
        row = _record_row(record)
        inserted = await self.db.write(lambda conn: _insert_record(conn, row))
        if inserted:  # its times as stored, its waiters woken
            record.created_at, record.updated_at = row[3], row[4]
            self._notify(record.run_id)
        return inserted

    async def get(self, run_id: str) -> RunRecord | None:
        row = await self.db.read(
            lambda conn: conn.execute("SELECT record FROM fc_status WHERE run_id = ?", (run_id,)).fetchone()
        )
        if row is None:
            return None
        record = RunRecord.from_dict(json.loads(row[0]))
        self._remember(run_id, (record.status, record.updated_at))
        return record

    async def delete(self, run_id: str) -> bool:
        removed: bool = await self.db.write(
            lambda conn: conn.execute("DELETE FROM fc_status WHERE run_id = ?", (run_id,)).rowcount == 1)
        if removed:
            self._notify(run_id)
        return removed

    @property
    def writes_context(self) -> bool:
        return self._writes_context

    async def transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        return await self._transition(run_id, from_statuses, to_status, changes, ())

    async def _transition_writing_context(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any],
        context: Mapping[str, Any],
    ) -> RunRecord | None:
        return await self._transition(run_id, from_statuses, to_status, changes,
                                      [(key, _dumps(value)) for key, value in context.items()])

    async def _transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any],
        context_rows: Sequence[tuple[str, str]],
    ) -> RunRecord | None:
        """The compare-and-set, writing ``context_rows`` (key, document) in its transaction when it wins."""
        allowed = frozenset(from_statuses)
        changes = dict(changes)
        document = await self.db.write(
            lambda conn: _compare_and_set(conn, run_id, allowed, to_status, changes, context_rows))
        return None if document is None else self.changed(run_id, document)

    def changed(self, run_id: str, document: str) -> RunRecord:
        """A transition of the run (its record's new ``document``, from ``_compare_and_set``) was committed: its
        waiters woken; the record."""
        self._notify(run_id)
        return RunRecord.from_dict(json.loads(document))  # parsed outside the write lock; shares nothing with changes

    async def list(
        self, status: str | None = None, blueprint_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[RunRecord], str | None]:
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if blueprint_id is not None:
            clauses.append("blueprint_id = ?")
            params.append(blueprint_id)
        if cursor:
            created_at, last_id = _parse_cursor(cursor)
            clauses.append("(created_at, run_id) < (?, ?)")
            params += [created_at, last_id]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT record FROM fc_status{where} ORDER BY created_at DESC, run_id DESC LIMIT ?"
        params.append(max(0, limit) + 1)
        rows = await self.db.read(lambda conn: conn.execute(sql, params).fetchall())
        records = [RunRecord.from_dict(json.loads(row[0])) for row in rows[: max(0, limit)]]
        next_cursor = None
        if len(rows) > limit and records:
            next_cursor = _dumps([records[-1].created_at, records[-1].run_id])
        return records, next_cursor

    async def stalled(
        self, older_than: float, limit: int = 100, *, after: tuple[float, str] | None = None
    ) -> builtins.list[RunRecord]:
        since, since_id = after if after is not None else (float("-inf"), "")
        rows = await self.db.read(lambda conn: conn.execute(
            "SELECT record FROM fc_status WHERE status IN ('running', 'awaiting') AND updated_at < ? "
            "AND (updated_at > ? OR (updated_at = ? AND run_id > ?)) ORDER BY updated_at, run_id LIMIT ?",
            (older_than, since, since, since_id, limit),
        ).fetchall())
        return [RunRecord.from_dict(json.loads(row[0])) for row in rows]

    async def wait_for_change(self, run_id: str, timeout: float) -> None:
        """Wake at once on a change made through this store, else notice other processes' changes by
        polling the record's ``(status, updated_at)`` every ``change_poll`` seconds, compared with what the
        last ``get`` of this run read (so a change between that ``get`` and this call is not missed). The waits
        of one event loop share their polls: one read of all their runs' stamps per ``change_poll``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        changed: asyncio.Future[None] = loop.create_future()
        self._changed.setdefault(run_id, set()).add(changed)
        try:
            seen = self._seen.pop(run_id, _UNSEEN)
            if seen is _CHANGED:
                return  # changed through this store since
            if seen is _UNSEEN:
                seen = await self._stamp(run_id)
            elif seen != await self._stamp(run_id):
                return
            remaining = end - loop.time()
            if remaining <= 0:
                return
            polled = self._polled.get(loop)
            if polled is None:
                polled = self._polled[loop] = {}
                poller = loop.create_task(self._poll(loop, polled))
                self._pollers.add(poller)
                poller.add_done_callback(self._pollers.discard)
            entry = (seen, changed)
            polled.setdefault(run_id, []).append(entry)
            try:
                await asyncio.wait({changed}, timeout=remaining)
            finally:
                entries = polled.get(run_id)
                if entries is not None:
                    entries.remove(entry)
                    if not entries:
                        del polled[run_id]
        finally:
            waiters = self._changed.get(run_id)
            if waiters is not None:
                waiters.discard(changed)
                if not waiters:
                    del self._changed[run_id]

    async def _poll(self, loop: asyncio.AbstractEventLoop,
                    polled: dict[str, builtins.list[tuple[Any, asyncio.Future[None]]]]) -> None:
        """Every ``change_poll`` seconds, read the stamps of every run this loop's waits poll and wake those whose
        stamp changed; end once no wait is left (or when the read fails: every wait wakes and reads again)."""
        try:
            while True:
                await asyncio.sleep(self.change_poll)
                if not polled:
                    return
                run_ids = list(polled)
                try:
                    stamps = await self.db.read(functools.partial(_stamps, run_ids=run_ids))
                except Exception:
                    stamps = None
                for run_id in run_ids:
                    for seen, changed in polled.get(run_id, ()):
                        if (stamps is None or stamps.get(run_id) != seen) and not changed.done():
                            changed.set_result(None)
                if stamps is None:
                    return
        finally:
            if self._polled.get(loop) is polled:
                del self._polled[loop]

    async def _stamp(self, run_id: str) -> tuple[str, float] | None:
        row = await self.db.read(lambda conn: conn.execute(
            "SELECT status, updated_at FROM fc_status WHERE run_id = ?", (run_id,)
        ).fetchone())
        return None if row is None else (str(row[0]), float(row[1]))

    def _remember(self, run_id: str, stamp: Any) -> None:
        if self._seen.pop(run_id, None) is _CHANGED and stamp is not _CHANGED:
            stamp = _CHANGED  # a change made here stays news until a wait_for_change consumed it
        self._seen[run_id] = stamp
        while len(self._seen) > 1024:  # bounded: forget the oldest
            del self._seen[next(iter(self._seen))]

    def _notify(self, run_id: str) -> None:
        self._remember(run_id, _CHANGED)
        for waiter in self._changed.pop(run_id, set()):
            if not waiter.done():
                loop = waiter.get_loop()
                if loop is asyncio.get_running_loop():
                    waiter.set_result(None)
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(_wake, waiter)


def _queue_rows(tables: SqliteTables, encoded: _Encoded, jobs: Sequence[Job]) -> None:
    """Insert ``jobs`` into the queue table, inside the caller's transaction: each deliverable from its due time
    (now at the earliest)."""
    if jobs:
        tables.sql.executemany("INSERT INTO fc_queue (job, available_at) VALUES (?, ?)",
                               [(encoded.job(job), max(tables.now, job.due_at or 0.0)) for job in jobs])


def _record_row(record: RunRecord) -> tuple[Any, ...]:
    """The ``fc_status`` row of a new run's record (``_insert_record``): created and updated now, unless the record
    says when it was created."""
    now = time.time()
    created_at = record.created_at or now
    document = RunRecord.from_dict({**record.to_dict(), "created_at": created_at, "updated_at": now})
    return record.run_id, record.blueprint_id, record.status, created_at, now, _dumps(document.to_dict())


def _insert_record(conn: sqlite3.Connection, row: tuple[Any, ...]) -> bool:
    """Insert a new run's record unless one with its run id exists; whether it was inserted."""
    return conn.execute(
        "INSERT OR IGNORE INTO fc_status (run_id, blueprint_id, status, created_at, updated_at, record) "
        "VALUES (?, ?, ?, ?, ?, ?)", row).rowcount == 1


def _stamps(conn: sqlite3.Connection, run_ids: Sequence[str]) -> dict[str, tuple[str, float]]:
    """``(status, updated_at)`` of each of the runs that has a record."""
    stamps: dict[str, tuple[str, float]] = {}
    for start in range(0, len(run_ids), _CHUNK):
        chunk = run_ids[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        for run_id, status, updated_at in conn.execute(
                f"SELECT run_id, status, updated_at FROM fc_status WHERE run_id IN ({marks})", chunk):
            stamps[run_id] = (str(status), float(updated_at))
    return stamps


_UNSEEN: Any = object()
_CHANGED: Any = object()


def _parse_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, run_id = json.loads(cursor)
        return float(created_at), str(run_id)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid runs cursor {cursor!r}: pass the cursor a previous page returned") from exc


# ----------------------------------------------------------------------------------------- coordination
class SqliteTables:
    """``CoordinationTables`` over one open transaction of a connection.

    The run counters (``pending``, ``parked``) and the activity time are accumulated and written once by
    ``flush``, which the caller runs before committing.
    """

    def __init__(self, conn: sqlite3.Connection, now: float | None = None, encoded: _Encoded | None = None) -> None:
        self.conn = conn
        self.sql = conn.cursor()  # every statement of the section on one cursor (conn.execute makes one each)
        self.now = time.time() if now is None else now
        self.encoded = _Encoded() if encoded is None else encoded
        self._deltas: dict[str, list[int]] = {}
        self._touched: set[str] = set()
        # job states this section read or wrote (nothing else writes them while it runs): a transition's
        # "is it still pending" check and the state change after it read the row once
        self._states: dict[tuple[str, str], JobState] = {}

    def job_state(self, run_id: str, key: str) -> JobState | None:
        known = self._states.get((run_id, key))
        if known is not None:
            return known
        row = self.sql.execute("SELECT state FROM fc_jobs WHERE run_id = ? AND key = ?", (run_id, key)).fetchone()
        if row is None:
            return None
        self._states[(run_id, key)] = row[0]
        return cast(JobState, row[0])

    def insert_job(self, run_id: str, key: str, state: JobState, job: Job | None) -> bool:
        document = None if job is None else self.encoded.job(job)
        inserted = self.sql.execute(
            "INSERT OR IGNORE INTO fc_jobs (run_id, key, state, job) VALUES (?, ?, ?, ?)",
            (run_id, key, state, document),
        ).rowcount == 1
        if inserted:
            self._states[(run_id, key)] = state
            self._count(run_id, state, +1)
        return inserted

    def set_job_state(self, run_id: str, key: str, state: JobState, job: Job | None = None) -> None:
        old = self.job_state(run_id, key)
        if old is None:
            raise KeyError(key)
        if job is None:
            self.sql.execute("UPDATE fc_jobs SET state = ? WHERE run_id = ? AND key = ?", (state, run_id, key))
        else:
            self.sql.execute("UPDATE fc_jobs SET state = ?, job = ? WHERE run_id = ? AND key = ?",
                             (state, self.encoded.job(job), run_id, key))
        self._states[(run_id, key)] = state
        self._count(run_id, old, -1)
        self._count(run_id, state, +1)

    def job(self, run_id: str, key: str) -> Job | None:
        row = self.sql.execute("SELECT job FROM fc_jobs WHERE run_id = ? AND key = ?", (run_id, key)).fetchone()
        return None if row is None or row[0] is None else Job.from_dict(json.loads(row[0]))

    def completion(self, run_id: str, key: str) -> Completion | None:
        row = self.sql.execute(
            "SELECT record FROM fc_completions WHERE run_id = ? AND key = ?", (run_id, key)
        ).fetchone()
        return None if row is None else Completion.from_dict(json.loads(row[0]))

    def put_completion(self, run_id: str, key: str, completion: Completion) -> None:
        self.sql.execute(
            "INSERT OR REPLACE INTO fc_completions (run_id, key, record) VALUES (?, ?, ?)",
            (run_id, key, self.encoded.completion(completion)),
        )

    def add_arrival(self, run_id: str, target: str, member: str, arrived: bool, contribution: Any) -> tuple[int, int]:
        """The member recorded in ``fc_arrivals`` and counted in ``fc_join_counts`` (a join's counts read and written
        by key, not counted over its members on every arrival: a join of n members costs O(n), not O(n²)). A join
        without counts (its first member; or members an older version recorded without them) is counted once from
        its members."""
        inserted = self.sql.execute(
            "INSERT OR IGNORE INTO fc_arrivals (run_id, target, member, arrived, contribution) VALUES (?, ?, ?, ?, ?)",
            (run_id, target, member, int(arrived), self.encoded.contribution(contribution)),
        ).rowcount == 1
        if inserted:
            row = self.sql.execute(
                "UPDATE fc_join_counts SET recorded = recorded + 1, arrived = arrived + ? "
                "WHERE run_id = ? AND target = ? RETURNING recorded, arrived",
                (int(arrived), run_id, target)).fetchone()
        else:
            row = self.sql.execute("SELECT recorded, arrived FROM fc_join_counts WHERE run_id = ? AND target = ?",
                                   (run_id, target)).fetchone()
        if row is None:
            row = self.sql.execute(
                "SELECT COUNT(*), TOTAL(arrived) FROM fc_arrivals WHERE run_id = ? AND target = ?", (run_id, target)
            ).fetchone()
            self.sql.execute("INSERT INTO fc_join_counts (run_id, target, recorded, arrived) VALUES (?, ?, ?, ?)",
                             (run_id, target, int(row[0]), int(row[1])))
        return int(row[0]), int(row[1])

    def arrivals(self, run_id: str, target: str) -> dict[str, tuple[bool, Any]]:
        rows = self.sql.execute(
            "SELECT member, arrived, contribution FROM fc_arrivals WHERE run_id = ? AND target = ? ORDER BY rowid",
            (run_id, target),
        ).fetchall()
        return {member: (bool(arrived), json.loads(contribution)) for member, arrived, contribution in rows}

    def counts(self, run_id: str) -> tuple[int, int]:
        row = self.sql.execute("SELECT pending, parked FROM fc_runs WHERE run_id = ?", (run_id,)).fetchone()
        pending, parked = (0, 0) if row is None else (int(row[0]), int(row[1]))
        delta = self._deltas.get(run_id, [0, 0])
        return pending + delta[0], parked + delta[1]

    def touch(self, run_id: str) -> None:
        self._touched.add(run_id)

    def apply_context(self, run_id: str, completion: Completion) -> None:
        _write_context(self.sql, run_id, self.encoded.context(completion), completion.context_deletes)

    def lease(self, run_id: str, key: str) -> tuple[str, float] | None:
        row = self.sql.execute(
            "SELECT owner, expires_at FROM fc_leases WHERE run_id = ? AND key = ?", (run_id, key)).fetchone()
        return None if row is None else (row[0], float(row[1]))

    def put_lease(self, run_id: str, key: str, owner: str, expires_at: float) -> None:
        self.sql.execute("INSERT OR REPLACE INTO fc_leases (run_id, key, owner, expires_at) VALUES (?, ?, ?, ?)",
                         (run_id, key, owner, expires_at))

    def drop_lease(self, run_id: str, key: str) -> None:
        self.sql.execute("DELETE FROM fc_leases WHERE run_id = ? AND key = ?", (run_id, key))

    def jobs_in_state(self, run_id: str, state: JobState) -> list[tuple[Job, float | None]]:
        rows = self.sql.execute(
            "SELECT j.job, l.expires_at FROM fc_jobs AS j "
            "LEFT JOIN fc_leases AS l ON l.run_id = j.run_id AND l.key = j.key "
            "WHERE j.run_id = ? AND j.state = ? AND j.job IS NOT NULL ORDER BY j.rowid",
            (run_id, state),
        ).fetchall()
        return [(Job.from_dict(json.loads(document)), expires) for document, expires in rows]

    def last_activity(self, run_id: str) -> float | None:
        row = self.sql.execute("SELECT activity FROM fc_runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else float(row[0])

    def forget_run(self, run_id: str) -> None:
        for table in ("fc_jobs", "fc_completions", "fc_arrivals", "fc_join_counts", "fc_leases", "fc_runs"):
            self.sql.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))  # fixed names
        self._deltas.pop(run_id, None)
        self._touched.discard(run_id)
        self._states.clear()

    def _count(self, run_id: str, state: JobState, delta: int) -> None:
        if state == "pending":
            self._deltas.setdefault(run_id, [0, 0])[0] += delta
        elif state == "parked":
            self._deltas.setdefault(run_id, [0, 0])[1] += delta

    def flush(self) -> None:
        """Write the counters and activity times accumulated by this transaction."""
        for run_id in self._deltas.keys() | self._touched:
            pending, parked = self._deltas.pop(run_id, [0, 0])
            touched = run_id in self._touched
            self.sql.execute(
                "INSERT INTO fc_runs (run_id, pending, parked, activity) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET pending = pending + excluded.pending, "
                "parked = parked + excluded.parked, activity = CASE WHEN ? THEN excluded.activity ELSE activity END",
                (run_id, pending, parked, self.now if touched else 0.0, int(touched)),
            )
        self._touched.clear()


class SqliteCoordinationStore(_SqliteComponent, TablesCoordinationStore):
    """Jobs, completion records, join arrivals, leases and run counters: ``atomically`` is one immediate
    transaction over ``SqliteTables``; release, jobs, activity and delete_run are single statements.

    With ``applies_context`` (the sqlite preset passes it: its context store uses the same database)
    ``commit`` also writes the completion's context updates to the context table in its transaction;
    built on its own (a backend pairing it with a context store of another kind) it does not, and the
    engine applies contexts itself.
    """

    name = "sqlite"

    def __init__(self, database: SqliteDatabase | None = None, *, applies_context: bool = False,
                 queue: SqliteQueue | None = None, status: SqliteStatusStore | None = None) -> None:
        _SqliteComponent.__init__(self, database)
        TablesCoordinationStore.__init__(self, applies_context=applies_context)
        self._queue = queue
        self._status = status if queue is not None else None  # the store whose runs a commit ends (``ends``)

    @property
    def dispatches(self) -> bool:
        """Given the backend's queue (the ``sqlite`` preset passes it: same database), ``commit`` inserts the jobs
        it fires into the queue table in its own transaction, so the engine does not enqueue them."""
        return self._queue is not None

    @property
    def releases_lease(self) -> bool:
        return True

    @property
    def protocol(self) -> str:
        """"2": every join keeps a count in ``fc_join_counts`` (schema 2), which a worker of protocol "1" does not
        update (a member it records is not counted)."""
        return "2"

    @property
    def acks(self) -> bool:
        """With ``dispatches``: a finishing commit that leaves jobs pending deletes its delivery's queue row (if
        that delivery still holds it) in the commit's transaction, so the engine does not call ``ack``."""
        return self._queue is not None

    @property
    def continues(self) -> bool:
        """With ``dispatches``: the commit inserts up to ``continue_up_to`` of the due-now jobs it fires as queue
        rows already claimed by ``Transition.owner`` (as ``receive`` leaves them: invisible for the queue's
        visibility timeout), reads their run record and takes their lease in its transaction, and returns them
        as ``Committed.continued``; if that worker dies, a row comes back once its visibility lapses."""
        return self._queue is not None

    @property
    def ends(self) -> bool:
        """Given the backend's queue and its status store, writing the context (same database: the ``sqlite`` preset
        passes both), a commit given ``Transition.end`` that leaves nothing pending or parked
        moves the run's record to ``completed`` and writes its ``_result`` in the commit's transaction, and deletes
        the delivery's queue row (``acks``): the run's end is not a transaction of its own, nor is its ack."""
        return self._status is not None and self._status.writes_context

    async def commit(self, transition: Transition) -> Committed:
        """``apply_transition`` in one transaction, which also drops the owner's lease when it finishes the job
        (``releases_lease``) and, with ``dispatches``, puts the fired jobs on the queue, hands some to the owner
        (``continues``), acks the committed delivery (``acks``) and ends the run (``ends``)."""
        applies_context, queue = self.applies_context, self._queue
        encoded = _Encoded.of(transition, applies_context)  # before the transaction takes the write lock
        end, ender = transition.end, self._status
        if end is not None and ender is not None and ender.writes_context and transition.finish:
            ending: tuple[dict[str, Any], list[tuple[str, str]]] | None = (
                dict(end.fields), [(end.RESULT_KEY, _dumps(end.result))])
        else:
            ending = None
        ended: list[str] = []  # the ended record's document, as the transaction that committed wrote it

        def run(conn: sqlite3.Connection) -> Committed:
            ended.clear()  # (a transaction rolled back and run again, alone or in another batch, ended nothing)
            with immediate(conn):
                tables = SqliteTables(conn, encoded=encoded)
                committed = apply_transition(tables, transition, applies_context=applies_context)
                finished = transition.finish and committed.conflict is None
                if finished and transition.owner is not None:
                    tables.sql.execute("DELETE FROM fc_leases WHERE run_id = ? AND key = ? AND owner = ?",
                                       (transition.run_id, transition.job_key, transition.owner))
                if queue is None:
                    tables.flush()
                    return committed
                if ending is not None and ends_the_run(transition, committed):
                    # the end as ``transition_with_context`` makes it, from an active status only: once
                    document = _compare_and_set(tables.sql, transition.run_id, RunEnd.FROM_STATUSES, RunEnd.TO_STATUS,
                                                ending[0], ending[1])
                    if document is not None:
                        ended.append(document)
                if finished and transition.receipt is not None and (committed.pending > 0 or ended):
                    message_id, token = transition.receipt
                    tables.sql.execute("DELETE FROM fc_queue WHERE id = ? AND lease_token = ?", (message_id, token))
                handed, queued = split_hand_over(transition, committed.fired, tables.now)
                continued = queue._hand_over(tables, handed, cast(str, transition.owner),
                                             transition.lease_seconds) if handed else []
                tables.flush()
                _queue_rows(tables, encoded, queued)
                if not continued:
                    return committed
                return Committed(fired=committed.fired, continued=tuple(continued), skipped=committed.skipped,
                                 pending=committed.pending, parked=committed.parked)

        committed = await self.db.call(run)
        if queue is not None and len(committed.fired) > len(committed.continued):
            queue._notify()
        if ended and ender is not None:
            committed = committed.with_end(ender.changed(transition.run_id, ended[0]))
        return committed

    async def atomically(self, run_id: str, fn: Callable[[LeaseTables], T]) -> T:
        def run(conn: sqlite3.Connection) -> T:
            with immediate(conn):
                tables = SqliteTables(conn)
                result = fn(tables)
                tables.flush()
                return result

        return await self.db.call(run)

    async def release(self, run_id: str, job_key: str, owner: str) -> None:
        await self.db.write(lambda conn: conn.execute(
            "DELETE FROM fc_leases WHERE run_id = ? AND key = ? AND owner = ?", (run_id, job_key, owner)
        ))

    # reads and the delete outside an immediate transaction: they take no write lock
    async def jobs(self, run_id: str, state: JobState = "pending") -> list[PendingJob]:
        rows = await self.db.read(lambda conn: SqliteTables(conn).jobs_in_state(run_id, state))
        now = time.time()
        return [PendingJob(job, leased=expires is not None and expires > now) for job, expires in rows]

    async def activity(self, run_id: str) -> float | None:
        return await self.db.read(lambda conn: SqliteTables(conn).last_activity(run_id))

    async def delete_run(self, run_id: str) -> None:
        await self.db.write(lambda conn: SqliteTables(conn).forget_run(run_id))


def build_backend(options: Mapping[str, Any]) -> Backend:
    """The ``sqlite`` preset: four components on one database, the coordination store writing contexts in
    its commit transaction (``Capabilities.applies_context``) and the status store a run's result with its final
    status (``Capabilities.writes_context``). Options are already validated."""
    parsed = parse_options(SqliteQueueOptions, options)
    database = SqliteDatabase(os.fspath(parsed.path), busy_timeout=parsed.busy_timeout, read_only=parsed.read_only)
    queue = SqliteQueue(database, parsed.visibility_timeout, prefetches_status=True)
    # no one-transaction start (``starts``): with it, a run's job became claimable in the start's one commit, before
    # the starting process's own waiting worker had been told, and another process's worker, woken by the commit
    # (``_Changes``), took it first; ``flowcraft run --inline`` beside live workers that do not load the blueprint
    # then saw its job bounced to the dead letters (5 bounces of 2 s), with no gain measurable in nodes/s or CPU per
    # node on a loaded 2-core machine (chain10, 1-2 workers). A run starts in three steps; its end is its last
    # commit (``ends``: the coordination store is given the status store for that)
    status = SqliteStatusStore(database, writes_context=True)
    return Backend(queue, SqliteContextStore(database), status,
                   SqliteCoordinationStore(database, applies_context=True, queue=queue, status=status))
