"""The shared backend contract (``flowcraft.testing.BackendContract``) on the ``rq`` preset against a real
redis-server: rq queue + Redis context, status and coordination."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft.testing import BackendContract


class TestRqBackend(BackendContract):
    # CapabilitiesContract.test_acks_* waits 3 s (receive(backend, 2, timeout=3.0)) for deliveries after the
    # one it expects: with the suite's 2 s visibility that job's own redelivery falls in that window; above 3 s
    # the test sees only what it checks for (until the contract's window fits its visibility timeout)
    visibility_timeout = 3.5

    @pytest.fixture
    def backend_config(self, redis_url: str, redis_prefix: str) -> tuple[str, dict[str, Any]]:
        # a unique key prefix also gives a unique default queue name ("<prefix>queue")
        return "rq", {"redis_url": redis_url, "key_prefix": redis_prefix}
