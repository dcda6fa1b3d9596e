"""The ``rq`` preset on a 3-shard Redis Cluster (``redis+cluster://``): the whole backend contract against one
cluster shared by the session (``redis_cluster_server``). The crash tests run at one fault depth (a worker
killed at its 5th job, past the fan-out), not also at the first job as ``test_rq_contract.py`` does: what a
cluster changes (keys per slot, no dispatch, prefetch after the dequeue) is the same at both, and each costs ~17 s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowcraft.spi import Backend
from flowcraft.testing import BackendContract
from flowcraft.testing.contract import CrashContract
from flowcraft.testing.worker import FAULT_POINTS


class TestRqOnRedisCluster(BackendContract):
    @pytest.fixture
    def backend_config(self, redis_cluster_server: Any, redis_prefix: str) -> tuple[str, dict[str, Any]]:
        return "rq", {"redis_url": redis_cluster_server.url, "key_prefix": redis_prefix}

    @pytest.mark.parametrize("point", FAULT_POINTS)
    @pytest.mark.parametrize("at", [5])
    async def test_worker_killed_mid_job(self, backend: Backend, worker_options: tuple[str, dict[str, Any]],
                                         tmp_path: Path, point: str, at: int) -> None:
        await CrashContract.test_worker_killed_mid_job(self, backend, worker_options, tmp_path, point, at)
