"""Client: start runs on a backend, wait for them, inspect, resume and cancel them."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from flowcraft.app import App
from flowcraft.config import RETENTION_STATUSES
from flowcraft.engine.control import RunControl, RunResult
from flowcraft.engine.core import Engine
from flowcraft.engine.retry import RetryRecord, retry_records
from flowcraft.engine.timeline import DEAD_LETTER_PREFIX, NodeVisit
from flowcraft.errors import ConfigError, WaitTimeoutError
from flowcraft.model import Blueprint
from flowcraft.presence import Presence, PublishedBlueprint, not_published
from flowcraft.reconciler import Reconciler
from flowcraft.retention import PurgeStats, check_statuses, purge
from flowcraft.spi import FINAL_STATUSES, Backend, DeadLetter, ReconcileStats, RunRecord, WorkerInfo

SETTLED_STATUSES = FINAL_STATUSES | {"awaiting"}
#: seconds a client trusts what it read of the live workers' blueprints before reading it again
PRESENCE_CACHE_SECONDS = 5.0


class Client:
    """The user's handle on a backend.

    ``start`` takes a blueprint of the client's ``App``, or, without one, a blueprint a live worker published
    (``flowcraft.presence``): workers started by ``flowcraft worker`` publish the blueprints they load, so a
    client with only the backend configured can start, watch and resume runs. A start is refused with a
    one-line ``ConfigError`` when workers are live but none loads that blueprint version (its job would be
    dead-lettered), or, for a blueprint the client's app lacks, when no live worker published it. What the
    client read of the live workers is trusted for ``PRESENCE_CACHE_SECONDS`` (read again before refusing), so
    starts add no store round trip in a steady state.
    """

    def __init__(self, backend: Backend, app: App | None = None) -> None:
        self.backend = backend
        self.app = app or App()
        self.engine = Engine(self.app, backend)
        self.presence = Presence(backend.context)
        self._published: dict[str, tuple[PublishedBlueprint, float]] = {}  # id -> (entry, read at)
        self._published_runs = RunControl(App(), backend, self.engine.events)
        self._checked: dict[tuple[str, str | None], float] = {}  # (id, version) a live worker loads -> read at

    async def start(self, blueprint_id: str, input: Any = None, *, run_id: str | None = None,
                    context: Mapping[str, Any] | None = None) -> str:
        if self.app.blueprint(blueprint_id) is not None:
            await self._check_loaded(blueprint_id, self.app.version(blueprint_id))
            return await self.engine.runs.start(blueprint_id, input, run_id=run_id, context=context)
        runs = await self._published_control(blueprint_id)
        return await runs.start(blueprint_id, input, run_id=run_id, context=context)

    async def blueprint(self, blueprint_id: str) -> Blueprint | None:
        """The definition the client starts ``blueprint_id`` with: its app's, else the one live workers
        published (None when neither has it)."""
        found = self.app.blueprint(blueprint_id)
        if found is not None:
            return found
        try:
            await self._published_control(blueprint_id)
        except ConfigError:
            return None
        return self._published[blueprint_id][0].blueprint

    async def blueprints(self) -> list[PublishedBlueprint]:
        """The blueprints live workers published (each version once, with the workers loading it)."""
        return await self.presence.blueprints()

    async def workers(self, *, include_dead: bool = False) -> list[WorkerInfo]:
        """Live workers from their heartbeats in the store, newest first (``include_dead``: also those whose
        heartbeat expired and that did not remove their entry, e.g. killed)."""
        return await self.presence.workers(include_dead=include_dead)

    async def _check_loaded(self, blueprint_id: str, version: str | None) -> None:
        key = (blueprint_id, version)
        if time.monotonic() - self._checked.get(key, -PRESENCE_CACHE_SECONDS) < PRESENCE_CACHE_SECONDS:
            return
        loaded = await self.presence.loaded_by_live_worker(blueprint_id, version)
        if loaded is False:
            live = await self.presence.workers()
            versions = sorted({str(ref.get("version")) for info in live for ref in info.blueprints
                               if ref.get("id") == blueprint_id})
            if versions:
                raise ConfigError(f"no live worker loads version {version!r} of blueprint {blueprint_id!r} "
                                  f"(they load {', '.join(versions)})",
                                  hint="deploy the same app to the workers and the client, or start a worker "
                                       "with this version (`flowcraft workers` lists them)")
            raise not_published(blueprint_id, live)
        self._checked[key] = time.monotonic()  # loaded, or no worker live yet: the job waits in the queue

    async def _published_control(self, blueprint_id: str) -> RunControl:
        cached = self._published.get(blueprint_id)
        if cached is None or time.monotonic() - cached[1] >= PRESENCE_CACHE_SECONDS:
            found = await self.presence.find(blueprint_id)
            if found.blueprint.content_hash != found.hash:
                raise ConfigError(f"blueprint {blueprint_id!r} as published by worker {found.workers[0]} does not "
                                  f"load identically here (content hash {found.blueprint.content_hash} instead of "
                                  f"{found.hash})", hint="use the same flowcraft-core version on the client and "
                                                         "the workers, or give the client the app (--app)")
            changed = cached is None or cached[0].hash != found.hash
            self._published[blueprint_id] = (found, time.monotonic())
            if changed:
                app = App(blueprints=[entry.blueprint for entry, _ in self._published.values()])
                self._published_runs = RunControl(app, self.backend, self.engine.events)
        return self._published_runs

    async def wait(self, run_id: str, timeout: float | None = None) -> RunResult:
        """Wait until the run is completed, failed, cancelled or awaiting. Stores that can notify wake
        this at once; others are polled with a bounded backoff (10 ms doubling to 500 ms).

        To wait for many runs, await their waits together, ``await asyncio.gather(*(client.wait(r) for r in
        run_ids))``: each is woken by its own run's change, so runs that finish out of order are seen as they
        finish, with no polling, rather than each after the ones submitted before it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        notifies = self.backend.capabilities.notifies
        delay = 1.0 if notifies else 0.01
        if notifies:
            await self.backend.status.watch(run_id)  # a change after the read below ends the wait at once
        while True:
            record = await self.backend.status.get(run_id)
            if record is not None and record.status in SETTLED_STATUSES:
                return await self.engine.runs.result_of(record)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(f"run {run_id!r} did not settle within {timeout}s",
                                       hint="raise the timeout, check `flowcraft status`, or start a worker")
            await self.backend.status.wait_for_change(run_id, delay if remaining is None else min(delay, remaining))
            delay = min(delay * 2, 0.5)

    async def run(self, blueprint_id: str, input: Any = None, *, timeout: float | None = None,
                  run_id: str | None = None) -> RunResult:
        return await self.wait(await self.start(blueprint_id, input, run_id=run_id), timeout)

    async def status(self, run_id: str) -> RunResult:
        return await self.engine.runs.result(run_id)

    async def timeline(self, run_id: str) -> list[NodeVisit]:
        """The run's timeline: per node and visit its state, attempts (worker, times, error), in start order."""
        return (await self.engine.runs.result(run_id)).timeline

    async def runs(self, status: str | None = None, blueprint_id: str | None = None, limit: int = 50,
                   cursor: str | None = None, *, created_after: float | None = None,
                   created_before: float | None = None) -> tuple[list[RunRecord], str | None]:
        """Up to ``limit`` runs, newest first, filtered by status, blueprint and creation time (epoch seconds),
        and the cursor of the next page (None at the end). The time filters page through the status store's
        listing: it stops at the first run created before ``created_after``; runs created after
        ``created_before`` are read and passed over."""
        if created_after is None and created_before is None:
            return await self.backend.status.list(status, blueprint_id, limit, cursor)
        found: list[RunRecord] = []
        while len(found) < limit:
            # a page no longer than what is still wanted: every record of it is taken or passed over, so the
            # returned cursor never skips a match
            page, cursor = await self.backend.status.list(status, blueprint_id, limit - len(found), cursor)
            found += [r for r in page if (created_after is None or r.created_at >= created_after)
                      and (created_before is None or r.created_at <= created_before)]
            if cursor is None or (created_after is not None and page and page[-1].created_at < created_after):
                return found, None
        return found, cursor

    async def resume(self, run_id: str, action: str | None = None, output: Any = None,
                     node_id: str | None = None) -> None:
        record = await self.backend.status.get(run_id)
        if record is not None and self.app.blueprint(record.blueprint_id) is None:
            runs = await self._published_control(record.blueprint_id)  # started from a published blueprint
            await runs.resume(run_id, action, output, node_id)
            return
        await self.engine.runs.resume(run_id, action, output, node_id)

    async def cancel(self, run_id: str) -> bool:
        return await self.engine.runs.cancel(run_id)

    async def retry(self, run_id: str, from_node: str | None = None) -> int:
        """Resume a failed run after a fix: rerun ``from_node`` and everything downstream of it, or without it
        the node(s) that failed the run; what finished upstream is kept and feeds the rerun nodes the inputs
        they had. A new generation of visits: the timeline keeps the failed attempt and the rerun. Returns
        the generation (1 for the first retry); refused (``InvalidStateError``) unless the run is failed."""
        return await (await self._control_for(run_id)).retry(run_id, from_node)

    async def retries(self, run_id: str) -> list[RetryRecord]:
        """The run's retries, oldest first: generation, node rerun from, the errors each one replaced."""
        return retry_records(await self.backend.context.get_all(run_id))

    # ------------------------------------------------------------------ dead letters
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters (oldest first where the queue keeps an order), without removing them."""
        return await self.backend.queue.dead_letters(limit)

    async def replay_dead_letters(self, ids: Sequence[str] | None = None) -> list[DeadLetter]:
        """Put dead-lettered jobs back on the queue (``ids``: ``DeadLetter.id``; None: all) and remove their
        dead letters; the runs they belong to stop showing them. Returns those replayed. A queue that cannot
        remove its dead letters raises ``UnsupportedError`` (``Queue.manages_dead_letters``)."""
        replayed = await self.backend.queue.replay_dead_letters(ids)
        for letter in replayed:
            if letter.job is not None:
                await self.backend.context.apply(letter.job.run_id, {}, [DEAD_LETTER_PREFIX + letter.job.key])
        return replayed

    async def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """Remove dead letters without replaying them (``ids``; None: all); returns how many."""
        return await self.backend.queue.purge_dead_letters(ids)

    async def _control_for(self, run_id: str) -> RunControl:
        """The run control of the run's blueprint: the app's, else the one live workers published."""
        record = await self.backend.status.get(run_id)
        if record is not None and self.app.blueprint(record.blueprint_id) is None:
            return await self._published_control(record.blueprint_id)
        return self.engine.runs

    async def reconcile(self, stalled_threshold_seconds: float = 300.0, *,
                        retention: Mapping[str, float] | None = None) -> ReconcileStats:
        """One reconciler pass; with ``retention`` (status -> seconds, the config's ``retention``) it also
        purges the finished runs older than that (``purge``)."""
        stats = await Reconciler(self.backend, stalled_threshold_seconds=stalled_threshold_seconds).run()
        if retention:
            stats.purged_runs = len((await purge(self.backend, retention)).purged)
        return stats

    async def purge(self, older_than: float, statuses: Sequence[str] = RETENTION_STATUSES, *,
                    dry_run: bool = False) -> PurgeStats:
        """Delete finished runs (``statuses``: completed, failed and/or cancelled) last updated more than
        ``older_than`` seconds ago: coordination data, context and status record (``flowcraft.retention``).
        ``dry_run``: list them only. Raises ``UnsupportedError`` when the status store cannot delete."""
        return await purge(self.backend, dict.fromkeys(check_statuses(statuses), older_than), dry_run=dry_run)

    async def close(self) -> None:
        await self.backend.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
