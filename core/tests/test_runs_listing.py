"""``Client.runs`` filtered by creation time (``flowcraft runs --since/--older-than``): pages of the status
store's newest-first listing, a cursor that never skips a match, on sqlite."""

from __future__ import annotations

import time

from flowcraft.client import Client
from flowcraft.spi import Backend, RunRecord


async def test_runs_by_age_page_without_skipping(sqlite: Backend) -> None:
    now = time.time()
    ages = {f"r{i}": i * 100.0 for i in range(12)}  # r0 newest ... r11 oldest
    for run_id, age in ages.items():
        assert await sqlite.status.create(RunRecord(run_id, "bp" if run_id != "r5" else "other",
                                                    status="failed" if run_id in ("r3", "r8") else "completed",
                                                    created_at=now - age, updated_at=now - age))
    client = Client(sqlite)

    async def everything(created_after: float | None = None, created_before: float | None = None) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = await client.runs(limit=3, cursor=cursor, created_after=created_after,
                                             created_before=created_before)
            seen += [r.run_id for r in page]
            if cursor is None:
                return seen

    assert await everything(created_after=now - 450) == ["r0", "r1", "r2", "r3", "r4"]
    assert await everything(created_before=now - 750) == ["r8", "r9", "r10", "r11"]
    assert await everything(created_after=now - 650, created_before=now - 150) == ["r2", "r3", "r4", "r5", "r6"]
    failed, _ = await client.runs("failed", limit=5, created_before=now - 50)
    assert [r.run_id for r in failed] == ["r3", "r8"]
    other, _ = await client.runs(blueprint_id="other", created_after=now - 1000)
    assert [r.run_id for r in other] == ["r5"]
