"""``flowcraft.spi.DocumentCoordinationStore``: every coordination method derived from ``load`` and a
compare-and-set ``store``. The whole contract suite runs on it through the generated template
(test_new_backend.py); here, writers that race: each section that lost re-runs over the newer document."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from flowcraft.spi import Arrival, Completion, DocumentCoordinationStore, Job, Transition


class RacyDocuments(DocumentCoordinationStore):
    """Documents in memory; ``load`` and ``store`` yield to the event loop, so concurrent sections interleave."""

    name = "racy"

    def __init__(self) -> None:
        super().__init__()
        self.documents: dict[str, tuple[int, str | None]] = {}
        self.lost = 0

    async def load(self, run_id: str) -> tuple[dict[str, Any] | None, Any]:
        await asyncio.sleep(0)
        version, text = self.documents.get(run_id, (0, None))
        return (None if text is None else json.loads(text)), version

    async def store(self, run_id: str, document: dict[str, Any] | None, version: Any) -> bool:
        await asyncio.sleep(0)
        current = self.documents.get(run_id, (0, None))[0]
        if current != version:
            self.lost += 1
            return False
        self.documents[run_id] = (current + 1, None if document is None else json.dumps(document))
        return True


async def test_racing_arrivals_at_a_join_fire_it_exactly_once_with_every_contribution() -> None:
    store = RacyDocuments()
    members = [f"m{i}" for i in range(12)]
    jobs = [Job("run", "bp", member) for member in members]
    join = Job("run", "bp", "join")
    await store.schedule("run", jobs)

    async def finish(job: Job) -> tuple[Job, ...]:
        committed = await store.commit(Transition(
            "run", job.key, completion=Completion(job.node_id, output=job.node_id, token=job.node_id),
            arrivals=(Arrival(join, job.node_id, arrived=True, contribution=job.node_id, expected=tuple(members)),),
            finish=True, owner="w"))
        return committed.fired

    fired = [job for batch in await asyncio.gather(*(finish(job) for job in jobs)) for job in batch]
    assert store.lost > 0  # the sections did race
    assert [job.node_id for job in fired] == ["join"]
    assert fired[0].input == {member: member for member in members}
    assert [pending.job.node_id for pending in await store.jobs("run")] == ["join"]


async def test_delete_run_forgets_the_run_and_a_stale_writer_cannot_bring_it_back() -> None:
    store = RacyDocuments()
    job = Job("run", "bp", "a")
    await store.schedule("run", [job])
    assert await store.activity("run") is not None
    stale, version = await store.load("run")
    await store.delete_run("run")
    assert await store.activity("run") is None and await store.jobs("run") == []
    assert not await store.store("run", stale, version)
