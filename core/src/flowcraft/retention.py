"""Retention: delete finished runs older than an age (``flowcraft purge``, ``Client.purge``, and the ``retention``
config setting applied by ``flowcraft reconcile``).

A run is purged when its status is one of those asked for (finished ones only: completed, failed, cancelled)
and its status record was last updated before the cutoff. Each run is deleted through the backend's own
deletes, in an order that is safe to interrupt: its coordination data (``CoordinationStore.delete_run``), its
context (``ContextStore.delete_run``: outputs, timeline), then its status record (``StatusStore.delete``)
last, so a purge that stopped half-way finds the run again next time. Stores with a TTL (Redis) also expire a
finished run's keys on their own; the purge removes what they keep. A run is re-read before it is deleted:
one that was retried or resumed meanwhile (active again, or updated after the cutoff) is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flowcraft.config import RETENTION_STATUSES
from flowcraft.errors import ConfigError
from flowcraft.spi import Backend, RunRecord

log = logging.getLogger("flowcraft.retention")


@dataclass(slots=True, kw_only=True)
class PurgeStats:
    """What a purge did: runs ``scanned`` (finished runs read), ``purged`` run ids (or, for a dry run, those it
    would purge)."""

    scanned: int = 0
    purged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"scanned": self.scanned, "purged": len(self.purged), "run_ids": list(self.purged)}


def check_statuses(statuses: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(statuses))
    for status in chosen:
        if status not in RETENTION_STATUSES:
            raise ConfigError(f"runs with status {status!r} cannot be purged",
                              hint=f"use {', '.join(RETENTION_STATUSES)}: only finished runs are purged")
    return chosen


async def purge(backend: Backend, ages: Mapping[str, float], *, dry_run: bool = False,
                now: float | None = None) -> PurgeStats:
    """Delete finished runs by status: ``ages`` maps a status to the age (seconds since the run's last
    update) beyond which its runs are deleted. ``dry_run``: only list them."""
    check_statuses(ages)
    if not backend.status.deletes:
        await backend.status.delete("")  # raises the store's UnsupportedError before anything is deleted
    now = time.time() if now is None else now
    stats = PurgeStats()
    for status, age in ages.items():
        cutoff = now - age
        expired: list[RunRecord] = []
        cursor: str | None = None
        while True:  # read every page first: deleting while paging could move a cursor
            page, cursor = await backend.status.list(status=status, limit=500, cursor=cursor)
            stats.scanned += len(page)
            expired += [record for record in page if record.status == status and record.updated_at < cutoff]
            if cursor is None:
                break
        for record in expired:
            if dry_run:
                stats.purged.append(record.run_id)
            elif await delete_run(backend, record.run_id, status, cutoff):
                stats.purged.append(record.run_id)
    if stats.purged and not dry_run:
        log.info("retention: purged %d finished run(s)", len(stats.purged), extra={"event": "retention:purge"})
    return stats


async def delete_run(backend: Backend, run_id: str, status: str, cutoff: float) -> bool:
    """Delete one finished run if it is still ``status`` and older than ``cutoff``; False if it changed."""
    current = await backend.status.get(run_id)
    if current is None or current.status != status or current.updated_at >= cutoff:
        return False
    await backend.coordination.delete_run(run_id)
    await backend.context.delete_run(run_id)
    return await backend.status.delete(run_id)
