"""The contract suite on the in-memory backend (one process: the crash tests are its documented gap)."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft.testing import BackendContract


class TestMemoryBackend(BackendContract):
    capabilities = frozenset()  # in-process only: no worker processes, so no crash tests

    @pytest.fixture
    def backend_config(self) -> tuple[str, dict[str, Any]]:
        return "memory", {}
