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


#: contract tests of single store calls, which the lean layout does not change (it changes only how the jobs a
#: commit fires are queued or handed over, and how such deliveries are taken, acked, extended, given back or
#: recovered): not run twice
_STORE_ONLY = ("test_status_", "test_context_", "test_queue_", "test_reconciler_", "test_published_",
               "test_schedule_", "test_lease_", "test_expired_lease_", "test_completion_", "test_activity_",
               "test_park_and_unpark", "test_all_join_fires_", "test_any_join_fires_", "test_recovery_replay_",
               "test_notifies_", "test_applies_context_", "test_prefetches_status_")


class TestRqBackendLeanHandover(BackendContract):
    """The same contract with ``queue_layout = "lean"``: jobs commits fire (due now) have no rq job hash."""

    @pytest.fixture(autouse=True)
    def _hand_over_tests_only(self, request: pytest.FixtureRequest) -> None:
        if request.node.name.startswith(_STORE_ONLY):
            pytest.skip("a single store call: the same with and without the lean layout (run by TestRqBackend)")

    @pytest.fixture
    def backend_config(self, redis_url: str, redis_prefix: str) -> tuple[str, dict[str, Any]]:
        return "rq", {"redis_url": redis_url, "key_prefix": redis_prefix, "queue_layout": "lean"}
