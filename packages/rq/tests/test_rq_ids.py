"""rq job ids: ``new_ids`` makes what ``new_id`` makes, several from one read of random bytes."""

from __future__ import annotations

import re

import pytest

from flowcraft_rq.queue import new_id, new_ids


@pytest.mark.parametrize("count", [1, 2, 7, 64])
@pytest.mark.parametrize("head", ["", "{fcq3.17}"])
def test_new_ids_are_distinct_random_hex_after_the_head(count: int, head: str) -> None:
    ids = new_ids(count, head)
    assert len(ids) == count and len(set(ids)) == count
    assert all(re.fullmatch(re.escape(head) + "[0-9a-f]{32}", job_id) for job_id in ids)
    assert re.fullmatch("[0-9a-f]{32}", new_id())
    assert not set(ids) & set(new_ids(count, head))
