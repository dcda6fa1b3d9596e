"""The ``rq`` preset on a 3-shard Redis Cluster (``redis+cluster://``): the whole backend contract against one
cluster shared by the session (``redis_cluster_server``), the hand-over tests again with the lean layout, and where
the queue groups are. The crash tests run at one fault depth (a worker killed at its 5th job, past the fan-out),
not also at the first job as ``test_rq_contract.py`` does: what a cluster changes (keys tagged with their run's
queue group, a queue per group, receives over the groups) is the same at both, and each costs ~17 s."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.cluster import key_slot
from test_rq_contract import _STORE_ONLY

from flowcraft.plugins import registry
from flowcraft.spi import Backend, Job, RunRecord
from flowcraft.testing import BackendContract
from flowcraft.testing.contract import CrashContract
from flowcraft.testing.worker import FAULT_POINTS
from flowcraft_rq import RqQueue


class TestRqOnRedisCluster(BackendContract):
    @pytest.fixture
    def backend_config(self, redis_cluster_server: Any, redis_prefix: str) -> tuple[str, dict[str, Any]]:
        return "rq", {"redis_url": redis_cluster_server.url, "key_prefix": redis_prefix}

    @pytest.mark.parametrize("point", FAULT_POINTS)
    @pytest.mark.parametrize("at", [5])
    async def test_worker_killed_mid_job(self, backend: Backend, worker_options: tuple[str, dict[str, Any]],
                                         tmp_path: Path, point: str, at: int) -> None:
        await CrashContract.test_worker_killed_mid_job(self, backend, worker_options, tmp_path, point, at)


class TestRqLeanOnRedisCluster(BackendContract):
    """The hand-over tests with ``queue_layout = "lean"`` on the cluster (lean entries name their run, whose keys
    the dequeue and enqueue scripts build with the group's tag); the crash tests run on one Redis only."""

    @pytest.fixture(autouse=True)
    def _hand_over_tests_only(self, request: pytest.FixtureRequest) -> None:
        if request.node.name.startswith((*_STORE_ONLY, "test_worker_killed_mid_job")):
            pytest.skip("the same with and without the lean layout, or a crash test (run on one Redis)")

    @pytest.fixture
    def backend_config(self, redis_cluster_server: Any, redis_prefix: str) -> tuple[str, dict[str, Any]]:
        return "rq", {"redis_url": redis_cluster_server.url, "key_prefix": redis_prefix, "queue_layout": "lean"}


async def test_queue_groups_spread_evenly_over_the_primaries(redis_cluster_server: Any, redis_prefix: str) -> None:
    backend = registry().build("rq", {"redis_url": redis_cluster_server.url, "key_prefix": redis_prefix,
                                      "queue_name": f"q-{uuid.uuid4().hex[:10]}"})
    queue = backend.queue
    assert isinstance(queue, RqQueue) and isinstance(queue.redis, RedisCluster) and len(queue.groups) == 12
    await backend.setup()
    try:
        owners = Counter(queue.redis.get_node_from_key(group.queue_key).name for group in queue.groups)
        assert sorted(owners.values()) == [4, 4, 4]
        # a run's jobs go to its group's queue, in the slot of the run's keys
        run_ids = [f"run-{i}" for i in range(24)]
        await queue.enqueue([Job(run_id, "bp", "a") for run_id in run_ids])
        keys = backend.coordination.keys  # type: ignore[attr-defined]
        for run_id in run_ids:
            group = queue.groups[queue.group_of(run_id)]
            assert key_slot(group.queue_key.encode()) == key_slot(keys.run(run_id).encode())
        assert await queue.depth() == 24
        got = await queue.dequeue(24, 1.0)
        assert sorted(d.job.run_id for d in got) == sorted(run_ids)
        assert {d.receipt.group for d in got} == {queue.group_of(run_id) for run_id in run_ids}
        for delivery in got:
            await queue.ack(delivery)
        assert await queue.size() == 0
    finally:
        await backend.close()


async def test_status_indexes_per_group_list_and_stalled_merge_the_groups(redis_cluster_server: Any,
                                                                          redis_prefix: str) -> None:
    backend = registry().build("rq", {"redis_url": redis_cluster_server.url, "key_prefix": redis_prefix})
    status = backend.status
    await backend.setup()
    try:
        run_ids = [f"run-{i:02d}" for i in range(30)]
        start = time.time() - 100
        for n, run_id in enumerate(run_ids):  # distinct creation times, newest last
            assert await status.create(RunRecord(run_id, "bp", status="running", created_at=start + n))
        keys = status.keys  # type: ignore[attr-defined]
        assert len({keys.created_index(run_id) for run_id in run_ids}) > 1  # the runs are spread over groups
        first, cursor = await status.list(limit=13)
        rest, end = await status.list(limit=30, cursor=cursor)
        # newest first over every group, each once, the second page from the first's cursor
        assert [r.run_id for r in first + rest] == run_ids[::-1] and cursor is not None and end is None
        await status.transition("run-03", ["running"], "completed", {})
        stalled = await status.stalled(time.time() + 60, limit=10)
        assert [r.run_id for r in stalled] == [r for r in run_ids if r != "run-03"][:10]
        assert [r.run_id for r in (await status.list(status="completed"))[0]] == ["run-03"]
    finally:
        await backend.close()
