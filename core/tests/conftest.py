"""Fixtures shared by the core tests."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from flowcraft.plugins import registry
from flowcraft.spi import Backend


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[Backend]:
    """A sqlite backend on a fresh database in the test's directory, set up, closed after the test."""
    backend = registry().build("sqlite", {"path": str(tmp_path / "flowcraft.db")})
    await backend.setup()
    yield backend
    await backend.close()


@pytest.fixture
def make_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """``make_project(module, source, sqlite_config=False)``: the test's directory becomes the working
    directory with an importable app module ``module``, no FLOWCRAFT_* configuration from the environment
    and, with ``sqlite_config``, a flowcraft.toml selecting sqlite (``runs.db``) and ``module:app``."""
    modules: list[str] = []

    def make(module: str, source: str, *, sqlite_config: bool = False) -> Path:
        for name in list(os.environ):
            if name.startswith("FLOWCRAFT_") and not name.startswith(("FLOWCRAFT_TEST_", "FLOWCRAFT_DISABLE")):
                monkeypatch.delenv(name)
        (tmp_path / f"{module}.py").write_text(source, encoding="utf-8")
        if sqlite_config:
            (tmp_path / "flowcraft.toml").write_text(f'backend = "sqlite"\napp = "{module}:app"\n'
                                                     '[options]\npath = "runs.db"\n', encoding="utf-8")
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        modules.append(module)
        return tmp_path

    yield make
    for module in modules:
        sys.modules.pop(module, None)
