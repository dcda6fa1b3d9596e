"""The shared backend contract (``flowcraft.testing.BackendContract``) on the ``rq`` preset against a real
redis-server: rq queue + Redis context, status and coordination."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft.testing import BackendContract


class TestRqBackend(BackendContract):
    @pytest.fixture
    def backend_config(self, redis_url: str, redis_prefix: str) -> tuple[str, dict[str, Any]]:
        # a unique key prefix also gives a unique default queue name ("<prefix>queue")
        return "rq", {"redis_url": redis_url, "key_prefix": redis_prefix}
