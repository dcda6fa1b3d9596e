"""The contract suite on the embedded SQLite backend, crash tests with real worker processes included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowcraft.testing import BackendContract


class TestSqliteBackend(BackendContract):
    @pytest.fixture
    def backend_config(self, tmp_path: Path) -> tuple[str, dict[str, Any]]:
        return "sqlite", {"path": str(tmp_path / "flowcraft.db")}
