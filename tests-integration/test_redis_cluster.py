"""The ``rq`` preset on a 3-shard Redis Cluster (``redis+cluster://``): the whole backend contract against one
cluster shared by the session (``redis_cluster_server``), the hand-over tests again with the lean layout, and where
the queue groups are. The crash tests run at one fault depth (a worker killed at its 5th job, past the fan-out),
not also at the first job as ``test_rq_contract.py`` does: what a cluster changes (keys tagged with their run's
queue group, a queue per group, receives over the groups) is the same at both, and each costs ~17 s."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.cluster import key_slot
from test_rq_contract import _STORE_ONLY

from flowcraft.plugins import registry
from flowcraft.spi import Backend, Job
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
