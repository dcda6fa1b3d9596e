"""One cassandra-driver session per backend, awaited from asyncio, prepared statements only.

Table and keyspace names cannot be bound parameters in CQL: they are validated identifiers (letters, digits
and ``_``; see ``ident``) placed by ``Cql`` into constant statement templates. Every value is a bound
parameter of a prepared statement.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from flowcraft.errors import ConfigError, ServerUnreachableError
from flowcraft_kafka.options import CassandraOptions

log = logging.getLogger("flowcraft.kafka.cassandra")

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")

#: rows of one ``execute_batch`` request at most, and their bound text (characters) at most: a small batch
#: stays under the batch size warning of Cassandra 2.2+ (5 KB), larger writes go in several requests
BATCH_ROWS = 16
BATCH_CHARS = 1000


def ident(name: str) -> str:
    """A keyspace or table name as a quoted CQL identifier; anything but letters, digits and ``_`` is refused."""
    if not _IDENT.match(name):
        raise ConfigError(f"{name!r} is not a Cassandra name", hint="letters, digits and _, starting with a letter")
    return f'"{name}"'


def hosts_of(options: CassandraOptions) -> list[tuple[str, int]]:
    """The contact points of ``cassandra_hosts`` (``host`` or ``host:port``)."""
    found: list[tuple[str, int]] = []
    for part in options.cassandra_hosts.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if sep and port.isdigit() and host and not host.endswith(":"):
            found.append((host.strip("[]"), int(port)))
        else:
            found.append((part, options.cassandra_port))
    if not found:
        raise ConfigError("option cassandra_hosts: no contact point", hint="e.g. 127.0.0.1 or 10.0.0.5:9042")
    return found


class CassandraClient:
    """A lazily connected ``cassandra.cluster.Session`` shared by the context and status stores."""

    def __init__(self, options: CassandraOptions) -> None:
        self.options = options
        self.hosts = hosts_of(options)
        self.keyspace = options.keyspace
        self._session: Any = None
        self._cluster: Any = None
        self._prepared: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._users = 0

    def __repr__(self) -> str:  # never the password
        return f"CassandraClient(hosts={self.hosts!r}, keyspace={self.keyspace!r})"

    def acquire(self) -> CassandraClient:
        self._users += 1
        return self

    # ------------------------------------------------------------------------------------------ connect
    def _connect(self) -> Any:
        from cassandra import ConsistencyLevel
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
        from cassandra.policies import RoundRobinPolicy

        with self._lock:
            if self._session is not None:
                return self._session
            o = self.options
            profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(),
                                       consistency_level=getattr(ConsistencyLevel, o.consistency.upper()),
                                       request_timeout=o.request_timeout)
            # no schema/token metadata: statements are routed round robin, and reading every keyspace's
            # schema on connect is slow and noisy on a server with many keyspaces
            kwargs: dict[str, Any] = {"execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
                                      "schema_metadata_enabled": False, "token_metadata_enabled": False,
                                      "contact_points": [h for h, _ in self.hosts], "port": self.hosts[0][1]}
            if len({p for _, p in self.hosts}) > 1:
                kwargs["contact_points"] = self.hosts
                kwargs.pop("port")
            if o.protocol_version:
                kwargs["protocol_version"] = o.protocol_version
            if o.cassandra_username:
                kwargs["auth_provider"] = PlainTextAuthProvider(o.cassandra_username, o.cassandra_password or "")
            cluster = Cluster(**kwargs)
            driver_log = logging.getLogger("cassandra.cluster")
            level = driver_log.level
            driver_log.setLevel(logging.CRITICAL)  # an unreachable server is our one line, not its tracebacks
            try:
                session = cluster.connect()
            except NoHostAvailable as exc:
                cluster.shutdown()
                where = ", ".join(f"{h}:{p}" for h, p in self.hosts)
                reasons = "; ".join(sorted({type(e).__name__ for e in exc.errors.values()})) or "no host"
                raise ServerUnreachableError(f"Cassandra at {where} cannot be reached ({reasons})",
                                             hint="check cassandra_hosts / cassandra_port and that it runs") from None
            finally:
                driver_log.setLevel(level)
            session.default_fetch_size = None  # one page: protocol v1 has no paging; queries bound their size
            self._cluster, self._session = cluster, session
            return session

    async def session(self) -> Any:
        if self._session is not None:
            return self._session
        return await asyncio.get_running_loop().run_in_executor(None, self._connect)

    # ------------------------------------------------------------------------------------------ statements
    async def prepare(self, cql: str) -> Any:
        statement = self._prepared.get(cql)
        if statement is None:
            session = await self.session()
            statement = await asyncio.get_running_loop().run_in_executor(None, session.prepare, cql)
            self._prepared[cql] = statement
        return statement

    async def execute(self, cql: str, values: Sequence[Any] = ()) -> list[Any]:
        """Run the prepared statement ``cql`` with bound ``values``; the rows (one page)."""
        statement = await self.prepare(cql)
        session = await self.session()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()

        def done(rows: Any) -> None:
            loop.call_soon_threadsafe(_settle, future, list(rows or ()), None)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_settle, future, None, exc)

        response = session.execute_async(statement, tuple(values))
        response.add_callbacks(done, failed)
        return await future

    async def execute_many(self, cql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await asyncio.gather(*(self.execute(cql, row) for row in rows))

    async def execute_batch(self, cql: str, rows: Sequence[Sequence[str]]) -> None:
        """Run ``cql`` once per row, rows of one partition grouped into unlogged batches (one request each:
        half the server's work of two requests, and atomic within the partition). The batch statement is
        ``cql`` repeated (prepared once per size, every value bound); a group holds at most ``BATCH_ROWS``
        rows and ``BATCH_CHARS`` characters of values, bigger rows go alone."""
        groups: list[list[Sequence[str]]] = []
        size = 0
        for row in rows:
            chars = sum(len(value) for value in row)
            if not groups or size + chars > BATCH_CHARS or len(groups[-1]) >= BATCH_ROWS:
                groups.append([])
                size = 0
            groups[-1].append(row)
            size += chars
        await asyncio.gather(*(self.execute(cql, group[0]) if len(group) == 1 else
                               self.execute(_batch(cql, len(group)), [v for row in group for v in row])
                               for group in groups))

    async def ddl(self, cql: str) -> bool:
        """Run a schema statement (not prepared: DDL has no values); False when the thing already exists."""
        from cassandra import AlreadyExists

        session = await self.session()
        try:
            await asyncio.get_running_loop().run_in_executor(None, session.execute, cql)
        except AlreadyExists:
            return False
        return True

    async def close(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users:
            return
        cluster, self._cluster, self._session = self._cluster, None, None
        self._prepared.clear()
        if cluster is not None:
            await asyncio.get_running_loop().run_in_executor(None, cluster.shutdown)


def _batch(cql: str, count: int) -> str:
    """The unlogged batch of ``count`` copies of the constant statement ``cql`` (its values are bound)."""
    return "BEGIN UNLOGGED BATCH " + "; ".join([cql] * count) + "; APPLY BATCH"


def _settle(future: asyncio.Future[list[Any]], rows: list[Any] | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(rows or [])


def shared_cassandra(options: CassandraOptions, shared: dict[str, Any]) -> CassandraClient:
    """One client per (hosts, keyspace, protocol, consistency, user) among a backend's components."""
    key = ("cassandra", options.cassandra_hosts, options.cassandra_port, options.keyspace, options.protocol_version,
           options.consistency.upper(), options.cassandra_username)
    client = shared.get(str(key))
    if client is None:
        client = shared[str(key)] = CassandraClient(options)
    return client.acquire() if isinstance(client, CassandraClient) else client


async def ensure_keyspace(client: CassandraClient, replication_factor: int) -> None:
    """``CREATE KEYSPACE`` with SimpleStrategy, tolerating "already exists" (no ``IF NOT EXISTS`` on 1.2).
    The replication factor is an int placed as a literal (DDL cannot be prepared)."""
    await client.ddl("CREATE KEYSPACE " + ident(client.keyspace) + " WITH replication = "
                     "{'class': 'SimpleStrategy', 'replication_factor': " + str(int(replication_factor)) + "}")


def table(keyspace: str, name: str) -> str:
    return f"{ident(keyspace)}.{ident(name)}"


def row_dict(row: Any) -> Mapping[str, Any]:
    return row._asdict() if hasattr(row, "_asdict") else dict(row)
