"""Worker presence: which workers are alive and which blueprints they load, kept in the backend's own stores.

Nothing here needs a method a backend does not already have: both lists live in the **context store** under
two reserved pseudo run ids, one key per entry, so concurrent writers never lose each other's entries and no
run (no status record) ever has these ids:

* ``WORKERS_RUN`` (``_flowcraft.workers``): ``worker id -> WorkerInfo`` (host, pid, backend, concurrency, jobs
  in flight, the blueprints it loads, last heartbeat). A worker rewrites its entry every heartbeat interval
  (``presence_interval``: ``lease_seconds / 3``, between 0.5 and 10 s) and deletes it when it stops; an entry
  whose heartbeat is older than ``WorkerInfo.EXPIRY_INTERVALS`` intervals is a dead worker and is ignored
  (a worker starting deletes entries dead for more than ``FORGET_AFTER``).
* ``BLUEPRINTS_RUN`` (``_flowcraft.blueprints``): ``"<id>@<content hash>" -> {"id", "version", "hash",
  "blueprint": <blueprint JSON>, "published_at"}``, written by each worker for each blueprint it loads when it
  starts and again every ``REPUBLISH_SECONDS`` (stores with a TTL keep it). A blueprint counts as published
  while a live worker lists its (id, version, hash) in its entry.

The heartbeat is one context write and one read (the protocol check below) per worker per interval, never per
job: nothing on a job's path changes.

A client starts a run of a published blueprint without importing the app (``Client.start``), and refuses a
blueprint no live worker loads instead of letting its job be dead-lettered later.

**Coordination protocols.** Each entry carries its worker's ``CoordinationStore.protocol``, the version of what its
coordination store writes. Workers of different protocols must not take jobs from one store at the same time (a
worker of the version before a change, e.g. one that does not update a counted join, would let a run complete
without a join's branch), so a worker reads the live entries when it starts (after writing its own, so two starting
together see each other) and again at every heartbeat (one read per interval), and takes no jobs while
``protocol_blockers`` names any: of two workers that both declare a protocol the one started later waits, and a
worker whose entry has no protocol (from before protocol versions: it cannot check) makes every versioned worker
wait. A waiting worker's entry has the state ``waiting``; it logs one warning per interval naming the workers it
waits for, and goes on once they retired or their entries expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flowcraft.app import App
from flowcraft.errors import ConfigError, FlowcraftError
from flowcraft.model import Blueprint
from flowcraft.spi import Backend, ContextStore, WorkerInfo

log = logging.getLogger("flowcraft.presence")

WORKERS_RUN = "_flowcraft.workers"
BLUEPRINTS_RUN = "_flowcraft.blueprints"
FORGET_AFTER = 3600.0  # seconds after its expiry a dead worker's entry is deleted (by a worker starting)
REPUBLISH_SECONDS = 3600.0  # how often a worker writes its blueprints again (a store's TTL may drop them)
#: the state of a worker that takes no jobs while live workers of another coordination protocol are there
WAITING = "waiting"


def presence_interval(lease_seconds: float) -> float:
    """Seconds between a worker's presence heartbeats: ``lease_seconds / 3`` bounded to [0.5, 10]."""
    return min(10.0, max(0.5, lease_seconds / 3))


def blueprint_ref(blueprint_id: str, version: str | None, content_hash: str | None) -> dict[str, Any]:
    return {"id": blueprint_id, "version": version, "hash": content_hash}


def _entry_key(blueprint_id: str, content_hash: str) -> str:
    return f"{blueprint_id}@{content_hash}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedBlueprint:
    """A blueprint a live worker loads: its id, version, content hash, definition and the live workers loading it."""

    id: str
    version: str | None
    hash: str
    blueprint: Blueprint
    published_at: float
    workers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "hash": self.hash, "published_at": self.published_at,
                "workers": list(self.workers), "blueprint": self.blueprint.to_json_dict()}


class Presence:
    """Reads and writes the two presence lists of a backend's context store (see the module docstring)."""

    def __init__(self, context: ContextStore, clock: Callable[[], float] = time.time) -> None:
        self.context = context
        self.clock = clock

    # ------------------------------------------------------------------ worker side
    async def publish(self, app: App) -> None:
        """Write every blueprint of ``app`` (idempotent: the same id and hash give the same entry)."""
        now = self.clock()
        entries: dict[str, Any] = {}
        for blueprint_id, blueprint in sorted(app.blueprints.items()):
            content_hash = app.content_hash(blueprint_id) or blueprint.content_hash
            entries[_entry_key(blueprint_id, content_hash)] = {
                "id": blueprint_id, "version": app.version(blueprint_id), "hash": content_hash,
                "blueprint": blueprint.to_json_dict(), "published_at": now}
        if entries:
            await self.context.apply(BLUEPRINTS_RUN, entries)

    async def heartbeat(self, info: WorkerInfo) -> None:
        await self.context.apply(WORKERS_RUN, {info.worker_id: info.to_dict()})

    async def retire(self, worker_id: str) -> None:
        await self.context.apply(WORKERS_RUN, {}, [worker_id])

    async def forget_dead(self) -> int:
        """Delete entries of workers dead for more than ``FORGET_AFTER`` and blueprints no remaining entry
        loads that were published that long ago; returns how many worker entries went."""
        now = self.clock()
        entries = await self._worker_entries()
        gone = [info.worker_id for info in entries if info.expires_at + FORGET_AFTER < now]
        if gone:
            await self.context.apply(WORKERS_RUN, {}, gone)
        kept = {(ref.get("id"), ref.get("hash")) for info in entries if info.worker_id not in gone
                for ref in info.blueprints}
        stale = [key for key, data in (await self.context.get_all(BLUEPRINTS_RUN)).items()
                 if isinstance(data, Mapping) and (data.get("id"), data.get("hash")) not in kept
                 and float(data.get("published_at", 0.0)) + FORGET_AFTER < now]
        if stale:
            await self.context.apply(BLUEPRINTS_RUN, {}, stale)
        return len(gone)

    # ------------------------------------------------------------------ readers
    async def workers(self, *, include_dead: bool = False) -> list[WorkerInfo]:
        """Live workers (with ``include_dead``, also those whose heartbeat expired), newest first."""
        now = self.clock()
        found = [info for info in await self._worker_entries() if include_dead or info.live(now)]
        return sorted(found, key=lambda info: (-info.started_at, info.worker_id))

    async def blueprints(self) -> list[PublishedBlueprint]:
        """Every blueprint version a live worker loads, by id, then newest publication first."""
        loaders = _loaders(await self.workers())
        stored = await self.context.get_all(BLUEPRINTS_RUN) if loaders else {}
        found: list[PublishedBlueprint] = []
        for data in stored.values():
            published = _published(data, loaders)
            if published is not None:
                found.append(published)
        return sorted(found, key=lambda entry: (entry.id, -entry.published_at))

    async def find(self, blueprint_id: str) -> PublishedBlueprint:
        """The version of ``blueprint_id`` to start: among those live workers load, the one loaded by the
        worker started last (a rolling deploy's new version wins). Raises a one-line error when no live
        worker loads it."""
        live = await self.workers()  # newest first
        loaders = _loaders(live)
        for info in live:
            for ref in info.blueprints:
                if ref.get("id") != blueprint_id or not ref.get("hash"):
                    continue
                key = _entry_key(blueprint_id, str(ref["hash"]))
                data = (await self.context.get_many(BLUEPRINTS_RUN, [key])).get(key)
                published = _published(data, loaders)
                if published is not None:
                    return published
        raise not_published(blueprint_id, live)

    async def loaded_by_live_worker(self, blueprint_id: str, version: str | None) -> bool | None:
        """Whether a live worker loads this version of the blueprint; None when no worker is live at all."""
        live = await self.workers()
        if not live:
            return None
        return any(ref.get("id") == blueprint_id and ref.get("version") == version
                   for info in live for ref in info.blueprints)

    async def _worker_entries(self) -> list[WorkerInfo]:
        entries: list[WorkerInfo] = []
        for data in (await self.context.get_all(WORKERS_RUN)).values():
            with contextlib.suppress(KeyError, TypeError, ValueError):  # a foreign or damaged entry is skipped
                entries.append(WorkerInfo.from_dict(data))
        return entries


def _loaders(workers: Iterable[WorkerInfo]) -> dict[tuple[str, str], list[str]]:
    loaders: dict[tuple[str, str], list[str]] = {}
    for info in workers:
        for ref in info.blueprints:
            loaders.setdefault((str(ref.get("id")), str(ref.get("hash"))), []).append(info.worker_id)
    return loaders


def _published(data: Any, loaders: Mapping[tuple[str, str], list[str]]) -> PublishedBlueprint | None:
    if not isinstance(data, Mapping):
        return None
    workers = loaders.get((str(data.get("id")), str(data.get("hash"))))
    if not workers:
        return None
    try:
        blueprint = Blueprint.from_dict(data["blueprint"])
    except (KeyError, FlowcraftError) as error:
        log.warning("published blueprint %r cannot be loaded: %s", data.get("id"), error)
        return None
    version = data.get("version")
    return PublishedBlueprint(id=str(data["id"]), version=None if version is None else str(version),
                              hash=str(data["hash"]), blueprint=blueprint,
                              published_at=float(data.get("published_at", 0.0)), workers=tuple(workers))


def not_published(blueprint_id: str, live: list[WorkerInfo]) -> ConfigError:
    """The one-line error for a start of a blueprint no live worker loads."""
    if not live:
        return ConfigError(f"no live worker has published blueprint {blueprint_id!r} (no worker is running on this "
                           "backend)", hint="start one that loads it: `flowcraft worker --app package.module:app`; "
                                            "`flowcraft workers` lists live workers")
    known = sorted({str(ref.get("id")) for info in live for ref in info.blueprints})
    return ConfigError(f"no live worker has published blueprint {blueprint_id!r}",
                       hint=f"live workers load: {', '.join(known) or 'none'}; start a worker whose app has it "
                            "(`flowcraft workers` lists them)")


def protocol_blockers(worker: WorkerInfo, live: Iterable[WorkerInfo]) -> list[WorkerInfo]:
    """The live workers because of which ``worker`` must take no jobs, so that of any two workers of different
    coordination protocols exactly one goes on: between two that declare a protocol, the one started earlier
    (``started_at``, ties by ``worker_id``); a worker that declares none (from before protocol versions, it cannot
    check) goes on and every versioned worker waits for it. A ``worker`` without a protocol is never blocked."""
    if worker.protocol is None:
        return []
    order = (worker.started_at, worker.worker_id)
    return [other for other in live
            if other.worker_id != worker.worker_id and other.protocol != worker.protocol
            and (other.protocol is None or (other.started_at, other.worker_id) < order)]


def waiting_line(worker: WorkerInfo, blockers: Iterable[WorkerInfo]) -> str:
    """The warning a worker that must wait for ``blockers`` logs each heartbeat interval."""
    named = ", ".join(f"{other.worker_id} on {other.host} pid {other.pid} (protocol "
                      f"{'none: a version before protocol checks' if other.protocol is None else other.protocol})"
                      for other in blockers)
    return (f"worker {worker.worker_id} (coordination protocol {worker.protocol}) is waiting, taking no jobs: live "
            f"workers of another coordination protocol use this store: {named}; mixing coordination protocols could "
            "complete a run without a join's branch; stop those workers; this one starts taking jobs when they are "
            "gone")


def cancel_requested() -> bool:
    """Whether the current task was asked to cancel, even if a callee swallowed the ``CancelledError`` (on Python
    3.11 ``asyncio.wait_for`` does when the cancel comes as its awaitable finishes; a store plugin may use it): a
    loop that runs until its task is cancelled checks this too, or a stopping worker would wait on it for ever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class WorkerPresence:
    """A worker's side of presence: publish its blueprints, heartbeat its ``WorkerInfo`` (also to the queue's
    own worker registry, ``Queue.register_worker``), check that no live worker of another coordination protocol
    blocks it (``must_wait``, ``blockers``) and retire it when it stops. Given to
    ``flowcraft.engine.worker.Worker(presence=...)``; ``flowcraft worker`` always uses one.
    A failed heartbeat is logged and retried next interval: presence never stops a worker. ``clock``: epoch
    seconds, for the entries' times and their expiry (a test's clock)."""

    def __init__(self, backend: Backend, app: App, *, worker_id: str, concurrency: int, interval: float = 10.0,
                 backend_name: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.app = app
        self.presence = Presence(backend.context, clock)
        self.interval = interval
        self.clock = clock
        now = clock()
        refs = tuple(blueprint_ref(bid, app.version(bid), app.content_hash(bid)) for bid in sorted(app.blueprints))
        self.info = WorkerInfo(worker_id=worker_id, host=socket.gethostname(), pid=os.getpid(),
                               backend=backend_name or backend.name, concurrency=concurrency, state="starting",
                               started_at=now, heartbeat_at=now, interval=interval, blueprints=refs,
                               protocol=backend.coordination.protocol)
        self._published_at = 0.0
        self.started = False  # an entry was written: ``retire`` removes it
        #: the live workers of another coordination protocol this one waits for, as the last check found them
        self.blockers: tuple[WorkerInfo, ...] = ()
        #: whether this worker must take no jobs now (``blockers``); read by the worker loop, never a store call
        self.must_wait = False
        self._may_go_on = asyncio.Event()
        self._may_go_on.set()

    async def start(self) -> None:
        """Publish the blueprints, write the first entry (state ``starting``; its ``started_at`` is now, which
        orders it among workers of other protocols) and check the other live workers (``check``; the entry says
        ``waiting`` when it must wait); errors propagate, so a worker that cannot reach its context store does not
        say it is ready."""
        with contextlib.suppress(Exception):  # housekeeping only
            await self.presence.forget_dead()
        await self.presence.publish(self.app)
        self._published_at = self.clock()
        self.started = True
        now = self.clock()
        self.info = self.info.evolve(started_at=now, heartbeat_at=now)
        await self.presence.heartbeat(self.info)
        if await self.check():
            self.info = self.info.evolve(state=WAITING, heartbeat_at=self.clock())
            await self.presence.heartbeat(self.info)

    async def check(self) -> bool:
        """Read the live workers (one context read) and decide whether this one must wait for workers of another
        coordination protocol (``protocol_blockers``); while it must, log ``waiting_line`` (a warning). Returns
        ``must_wait``."""
        blockers = tuple(protocol_blockers(self.info, await self.presence.workers()))
        waited, self.blockers, self.must_wait = self.must_wait, blockers, bool(blockers)
        if blockers:
            self._may_go_on.clear()
            log.warning("%s", waiting_line(self.info, blockers))
        else:
            self._may_go_on.set()
            if waited:
                log.info("worker %s: no live worker of another coordination protocol is left; taking jobs",
                         self.info.worker_id)
        return self.must_wait

    async def may_go_on(self) -> None:
        """Return once no live worker of another coordination protocol blocks this one (at once if none does)."""
        await self._may_go_on.wait()

    async def beat(self, *, state: str, in_flight: int, handled: int, failed: int) -> None:
        """Write the entry now (and register it with the queue's own tooling)."""
        self.info = self.info.evolve(state=state, in_flight=in_flight, handled=handled, failed=failed,
                                     heartbeat_at=self.clock())
        if self.clock() - self._published_at >= REPUBLISH_SECONDS:
            await self.presence.publish(self.app)
            self._published_at = self.clock()
        await self.presence.heartbeat(self.info)
        await self.backend.queue.register_worker(self.info)

    async def retire(self) -> None:
        """Delete the entry (the worker stopped); the queue's registry entry too."""
        self.info = self.info.evolve(state="stopped", heartbeat_at=self.clock())
        for step in (self.presence.retire(self.info.worker_id), self.backend.queue.unregister_worker(self.info)):
            try:
                await step
            except Exception as error:  # a dead entry expires anyway
                log.warning("could not remove worker %s from the presence list: %s", self.info.worker_id, error)

    async def run(self, snapshot: Callable[[], tuple[str, int, int, int]]) -> None:
        """Every ``interval`` until cancelled: ``check`` (a failed read keeps the last decision), then heartbeat
        with ``snapshot()`` = (state, in flight, handled, failed), taken after the check so the entry says
        ``waiting`` as soon as the worker does."""
        while not cancel_requested():
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception as error:
                log.warning("worker %s could not read the live workers to check their coordination protocols "
                            "(tried again in %gs): %s", self.info.worker_id, self.interval, error)
            state, in_flight, handled, failed = snapshot()
            try:
                await self.beat(state=state, in_flight=in_flight, handled=handled, failed=failed)
            except Exception as error:
                log.warning("worker %s presence heartbeat failed (tried again in %gs): %s",
                            self.info.worker_id, self.interval, error)
