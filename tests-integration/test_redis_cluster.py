"""The ``rq`` preset on a 3-shard Redis Cluster (``redis+cluster://``): the whole backend contract, crash tests
included, against one cluster shared by the session (``redis_cluster_server``)."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft.testing import BackendContract


class TestRqOnRedisCluster(BackendContract):
    @pytest.fixture
    def backend_config(self, redis_cluster_server: Any, redis_prefix: str) -> tuple[str, dict[str, Any]]:
        return "rq", {"redis_url": redis_cluster_server.url, "key_prefix": redis_prefix}
