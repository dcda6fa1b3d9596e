"""The reconciler over Redis status/coordination: ``flowcraft.reconciler.Reconciler`` with the seeds' stats."""

from __future__ import annotations

from dataclasses import dataclass

from flowcraft.adapters import SeedReconciler, SeedStats
from flowcraft.spi import Backend


@dataclass(frozen=True, slots=True)
class RedisReconcileStats(SeedStats):
    """What one pass did, with the BullMQ seed's field names (``scanned_keys``: run records examined)."""

    scanned_keys: int = 0
    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0
    requeued_jobs: int = 0


class RedisReconciler(SeedReconciler[RedisReconcileStats]):
    """Finds stalled runs through the status store's ``idx:status:running``/``awaiting`` sorted sets (no
    KEYS, no SCAN) and re-enqueues their pending jobs (see ``flowcraft.reconciler``)."""

    stats_type = RedisReconcileStats
    scanned_field = "scanned_keys"

    def __init__(self, backend: Backend, *, stalled_threshold_seconds: float = 300.0, scan_count: int = 100) -> None:
        super().__init__(backend, stalled_threshold_seconds, scan_count)


def create_redis_reconciler(*, backend: Backend, stalled_threshold_seconds: float = 300.0,
                            scan_count: int = 100) -> RedisReconciler:
    """A reconciler for any backend whose status store can list stalled runs (e.g. ``RedisStatusStore``)."""
    return RedisReconciler(backend, stalled_threshold_seconds=stalled_threshold_seconds, scan_count=scan_count)
