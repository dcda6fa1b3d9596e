"""The reconciler: resumes runs whose workers died, by re-enqueueing their pending jobs.

A run is stalled when it is active (running/awaiting), its status record and its coordination activity
are older than the threshold, and no pending job holds a live lease. Only *pending* jobs are re-enqueued
(jobs that were fired and not finished), never a guessed frontier: an untaken branch, a fallback or a
node a live worker is executing is never started by the reconciler.
"""

from __future__ import annotations

import time

from flowcraft.spi import Backend, ReconcileStats


class Reconciler:
    def __init__(self, backend: Backend, *, stalled_threshold_seconds: float = 300.0, batch_size: int = 100) -> None:
        self.backend = backend
        self.stalled_threshold_seconds = stalled_threshold_seconds
        self.batch_size = batch_size

    async def run(self) -> ReconcileStats:
        """One pass over stalled runs."""
        status, coordination = self.backend.status, self.backend.coordination
        cutoff = time.time() - self.stalled_threshold_seconds
        candidates = await status.stalled(cutoff, self.batch_size)
        stalled = reconciled = failed = requeued = 0
        for record in candidates:
            activity = await coordination.activity(record.run_id)
            if activity is not None and activity > cutoff:
                continue
            pending = await coordination.jobs(record.run_id, "pending")
            if any(job.leased for job in pending):
                continue
            if not pending:
                if record.status == "awaiting" or await coordination.jobs(record.run_id, "parked"):
                    continue  # waiting for a human is not stalled
                stalled += 1
                error = {"message": "run stalled with no pending jobs (its start was interrupted); start it again",
                         "node_id": None, "timestamp": time.time()}
                if await status.transition(record.run_id, ["running"], "failed",
                                           {"errors": [*record.errors, error]}):
                    failed += 1
                continue
            stalled += 1
            await self.backend.queue.enqueue([job.job for job in pending])
            requeued += len(pending)
            reconciled += 1
        return ReconcileStats(len(candidates), stalled, reconciled, failed, requeued)
