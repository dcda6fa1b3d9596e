"""The reconciler: resumes runs whose workers died.

A run is *stalled* when it is active (running/awaiting), its status record and its coordination activity
are older than the threshold, and none of its pending jobs holds a live lease. For each stalled run:

* it has pending jobs (fired and not finished): they are re-enqueued — pending jobs, never a guessed
  frontier, so an untaken branch, a fallback or a node a live worker is executing is never started;
* it is running with no pending job, but has coordination state: all its work is done (or parked at a
  wait) and the worker that finished the last job died before publishing the status. A *finish job* is
  enqueued: a worker publishes the status from the completion records — completed with the terminal
  outputs, or awaiting when a wait is parked — through the same compare-and-set as always, so it is
  published exactly once;
* it has no coordination state at all: its start was interrupted between creating the run record and
  scheduling its first jobs. Nothing ran; the run is failed with a message saying to start it again —
  unless it is a subflow's child run, which its parent's pending subflow job starts again.

Awaiting runs with no pending job are waiting for a human: not stalled. Candidates are read page by page
(oldest first, by ``(updated_at, run_id)``) until none are left, so runs that are skipped — awaiting, or
with a live lease — never hide a stalled one behind them.

Stats (``ReconcileStats``): ``scanned`` runs read as candidates, ``stalled_runs`` found stalled,
``reconciled_runs`` resumed (jobs re-enqueued or a finish job sent), ``failed_runs`` that could not be
resumed (interrupted starts), ``requeued_jobs`` jobs re-enqueued.
"""

from __future__ import annotations

import logging
import time

from flowcraft.spi import Backend, Job, ReconcileStats, RunRecord

log = logging.getLogger("flowcraft.reconciler")

FINISH_NODE = ""  # the node id of a finish job: never a blueprint node's (node ids are not empty)


def finish_job(record: RunRecord) -> Job:
    """A job that makes a worker publish the run's final status from its completion records."""
    return Job(record.run_id, record.blueprint_id, FINISH_NODE, version=record.version, payload={"finish": True})


def is_finish_job(job: Job) -> bool:
    return job.node_id == FINISH_NODE and bool((job.payload or {}).get("finish"))


class Reconciler:
    def __init__(self, backend: Backend, *, stalled_threshold_seconds: float = 300.0, batch_size: int = 100) -> None:
        self.backend = backend
        self.stalled_threshold_seconds = stalled_threshold_seconds
        self.batch_size = batch_size

    async def run(self) -> ReconcileStats:
        """One pass over every stalled run."""
        cutoff = time.time() - self.stalled_threshold_seconds
        stats = ReconcileStats()
        after: tuple[float, str] | None = None
        while True:
            page = await self.backend.status.stalled(cutoff, self.batch_size, after=after)
            stats.scanned += len(page)
            for record in page:
                await self._reconcile(record, cutoff, stats)
            if len(page) < self.batch_size:
                return stats
            after = (page[-1].updated_at, page[-1].run_id)

    async def _reconcile(self, record: RunRecord, cutoff: float, stats: ReconcileStats) -> None:
        coordination = self.backend.coordination
        activity = await coordination.activity(record.run_id)
        if activity is not None and activity > cutoff:
            return
        pending = await coordination.jobs(record.run_id, "pending")
        if any(job.leased for job in pending):
            return
        if pending:
            stats.stalled_runs += 1
            await self.backend.queue.enqueue([job.job for job in pending])
            stats.requeued_jobs += len(pending)
            for held in pending:
                log.info("reconciler: run %s stalled; re-enqueued job %s (node %s)", record.run_id, held.job.key,
                         held.job.node_id, extra={"run_id": record.run_id, "node_id": held.job.node_id,
                                                  "visit": held.job.visit, "event": "reconciler:requeue"})
            stats.reconciled_runs += 1
            return
        if record.status == "awaiting":
            return  # waiting for a human is not stalled
        if activity is None and record.parent:
            return  # a child whose start died: its parent's pending subflow job starts it again
        stats.stalled_runs += 1
        if activity is not None:
            await self.backend.queue.enqueue([finish_job(record)])
            stats.reconciled_runs += 1
            log.info("reconciler: run %s stalled with all its work done; sent a finish job", record.run_id,
                     extra={"run_id": record.run_id, "event": "reconciler:finish"})
            return
        error = {"message": "run stalled before its first job was scheduled (its start was interrupted); "
                            "start it again", "node_id": None, "timestamp": time.time()}
        if await self.backend.status.transition(record.run_id, ["running"], "failed",
                                                {"errors": [*record.errors, error]}):
            stats.failed_runs += 1
            log.info("reconciler: run %s failed: its start was interrupted", record.run_id,
                     extra={"run_id": record.run_id, "event": "reconciler:fail"})
